//! Signing keys: generated on first start, stored encrypted in the database,
//! shared by every replica, rotated with overlap.
//!
//! A key's life: *next* (published in the JWKS, not yet signing) →
//! *signing* (the newest key whose activation time has passed) → *retiring*
//! (superseded, still published while a token it signed can be live) →
//! *expired* (dropped from memory and the JWKS; its row stays).

use std::{
    sync::{Arc, RwLock},
    time::Duration,
};

use jsonwebtoken::{DecodingKey, EncodingKey};

use crate::{
    clock::UnixTime,
    domain::secrets::random_id,
    store::{Store, StoreError, StoredKey},
};

pub mod jwt;
pub mod kek;
pub mod material;

pub use kek::Kek;
pub use material::SigningAlg;

/// Why the key ring could not do its work.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A private key did not decrypt.
    #[error(transparent)]
    Kek(#[from] kek::KekError),
    /// Stored key material is unusable.
    #[error(transparent)]
    Material(#[from] material::KeyMaterialError),
    /// No key can sign yet.
    #[error("no signing key is active")]
    NoActiveKey,
    /// Signing failed.
    #[error("signing failed: {0}")]
    Sign(#[source] jsonwebtoken::errors::Error),
}

/// A key loaded into memory, ready to sign and verify.
pub struct LoadedKey {
    /// `kid`.
    pub kid: String,
    /// The one algorithm this key is used with (pinned when verifying).
    pub alg: SigningAlg,
    activates_at: UnixTime,
    encoding: EncodingKey,
    decoding: DecodingKey,
    public_jwk: serde_json::Value,
}

impl std::fmt::Debug for LoadedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

impl LoadedKey {
    /// The key that checks signatures made by this one.
    pub fn decoding(&self) -> &DecodingKey {
        &self.decoding
    }
}

/// Where a stored key is in its life at some moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    /// Published; starts signing at its activation time.
    Next,
    /// Signing new tokens.
    Signing,
    /// Superseded; published until the given time.
    Retiring(UnixTime),
    /// No token it signed can still be live.
    Expired,
}

/// The state of each of `keys` (sorted by activation) at `now`, where
/// `retention` is how long after a key stops signing its tokens can be live.
pub fn key_states(keys: &[StoredKey], now: UnixTime, retention: Duration) -> Vec<KeyState> {
    let signer = keys.iter().rposition(|k| k.activates_at <= now);
    keys.iter()
        .enumerate()
        .map(|(i, key)| match signer {
            _ if key.activates_at > now => KeyState::Next,
            Some(s) if s == i => KeyState::Signing,
            _ => {
                // Superseded when the next key activated; live tokens it signed
                // can exist for `retention` after that.
                let until = keys[i + 1].activates_at.plus(retention);
                if until > now {
                    KeyState::Retiring(until)
                } else {
                    KeyState::Expired
                }
            }
        })
        .collect()
}

/// The in-memory key ring every replica keeps.
pub struct KeyRing {
    kek: Kek,
    /// How long after a key stops signing its tokens can be live: the longest
    /// access token lifetime plus verification leeway.
    retention: Duration,
    /// Published keys (next, signing, retiring), oldest activation first.
    keys: RwLock<Arc<Vec<Arc<LoadedKey>>>>,
}

impl KeyRing {
    /// Loads the stored keys, first generating one (active at once) when none
    /// can sign: the first start of a new installation.
    pub async fn load(
        store: &dyn Store,
        kek: Kek,
        alg: SigningAlg,
        retention: Duration,
        now: UnixTime,
    ) -> Result<Self, KeyError> {
        let ring = Self {
            kek,
            retention,
            keys: RwLock::new(Arc::new(Vec::new())),
        };
        ring.reload(store, now).await?;
        if ring.signer(now).is_none() {
            let (kid, _) = add_key(store, &ring.kek, alg, now, now).await?;
            tracing::info!(%kid, %alg, "generated the first signing key");
            ring.reload(store, now).await?;
        }
        Ok(ring)
    }

    /// Re-reads the stored keys: picks up rotations made elsewhere and drops
    /// expired keys. Keys already in memory are not decrypted again.
    pub async fn reload(&self, store: &dyn Store, now: UnixTime) -> Result<(), KeyError> {
        let stored = store.signing_keys().await?;
        let states = key_states(&stored, now, self.retention);
        let current = self.snapshot();
        let mut loaded = Vec::new();
        for (key, state) in stored.iter().zip(states) {
            if state == KeyState::Expired {
                continue;
            }
            match current.iter().find(|k| k.kid == key.kid) {
                Some(existing) => loaded.push(Arc::clone(existing)),
                None => loaded.push(Arc::new(self.open(key)?)),
            }
        }
        *self
            .keys
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(loaded);
        Ok(())
    }

    fn open(&self, key: &StoredKey) -> Result<LoadedKey, KeyError> {
        let alg: SigningAlg = key.alg.parse().map_err(material::KeyMaterialError)?;
        let pkcs8 = self.kek.open(&key.encrypted_private_key, &key.kid)?;
        let public_jwk: serde_json::Value = serde_json::from_str(&key.public_jwk)
            .map_err(|e| material::KeyMaterialError(e.to_string()))?;
        Ok(LoadedKey {
            kid: key.kid.clone(),
            alg,
            activates_at: key.activates_at,
            encoding: material::encoding_key(alg, &pkcs8)?,
            decoding: material::decoding_key(&key.public_jwk)?,
            public_jwk,
        })
    }

    fn snapshot(&self) -> Arc<Vec<Arc<LoadedKey>>> {
        Arc::clone(
            &self
                .keys
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// The key-encryption key the ring's keys are sealed under.
    pub fn kek(&self) -> &Kek {
        &self.kek
    }

    /// The key that signs at `now`.
    fn signer(&self, now: UnixTime) -> Option<Arc<LoadedKey>> {
        self.snapshot()
            .iter()
            .rev()
            .find(|k| k.activates_at <= now)
            .cloned()
    }

    /// The published key named `kid`, if any: the only way a token's header
    /// selects a verification key.
    pub fn find(&self, kid: &str) -> Option<Arc<LoadedKey>> {
        self.snapshot().iter().find(|k| k.kid == kid).cloned()
    }

    /// True when a key can sign at `now`.
    pub fn is_ready(&self, now: UnixTime) -> bool {
        self.signer(now).is_some()
    }

    /// The RFC 7517 JWK Set of every published key (public halves only).
    pub fn jwks_json(&self) -> String {
        let snapshot = self.snapshot();
        let keys: Vec<&serde_json::Value> = snapshot.iter().map(|k| &k.public_jwk).collect();
        serde_json::json!({ "keys": keys }).to_string()
    }
}

/// Generates, seals and stores a new key that signs from `activates_at`, or
/// from one second after the latest activation if that is later: keys are
/// ordered by activation time, so a tie (a rotation in the same second as the
/// previous one) would leave which key signs to chance. Returns the key id
/// and its activation time.
pub async fn add_key(
    store: &dyn Store,
    kek: &Kek,
    alg: SigningAlg,
    now: UnixTime,
    activates_at: UnixTime,
) -> Result<(String, UnixTime), KeyError> {
    let latest = store
        .signing_keys()
        .await?
        .iter()
        .map(|k| k.activates_at)
        .max();
    let activates_at = latest.map_or(activates_at, |l| {
        activates_at.max(l.plus(Duration::from_secs(1)))
    });
    let kid = random_id();
    let generated = material::generate(alg, &kid)?;
    store
        .insert_signing_key(&StoredKey {
            kid: kid.clone(),
            alg: alg.as_str().to_owned(),
            public_jwk: generated.public_jwk,
            encrypted_private_key: kek.seal(&generated.pkcs8, &kid),
            created_at: now,
            activates_at,
        })
        .await?;
    Ok((kid, activates_at))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(kid: &str, activates_at: i64) -> StoredKey {
        StoredKey {
            kid: kid.into(),
            alg: "ES256".into(),
            public_jwk: String::new(),
            encrypted_private_key: Vec::new(),
            created_at: UnixTime::from_secs(0),
            activates_at: UnixTime::from_secs(activates_at),
        }
    }

    #[test]
    fn a_rotated_key_is_published_before_it_signs_and_the_old_one_until_its_tokens_expire() {
        let keys = [key("old", 0), key("new", 100)];
        let retention = Duration::from_secs(60);
        let at = |t| key_states(&keys, UnixTime::from_secs(t), retention);
        assert_eq!(at(50), [KeyState::Signing, KeyState::Next]);
        assert_eq!(
            at(100),
            [
                KeyState::Retiring(UnixTime::from_secs(160)),
                KeyState::Signing
            ]
        );
        assert_eq!(
            at(159),
            [
                KeyState::Retiring(UnixTime::from_secs(160)),
                KeyState::Signing
            ]
        );
        assert_eq!(at(160), [KeyState::Expired, KeyState::Signing]);
    }
}
