//! Signing keys: generated on first start, stored encrypted in the database,
//! shared by every replica, rotated with overlap.
//!
//! A key's life: *next* (published in the JWKS, not yet signing) →
//! *signing* (the newest key whose activation time has passed) → *retiring*
//! (superseded, still published while a token it signed can be live) →
//! *expired* (dropped from memory and the JWKS; its row stays).
//!
//! What a valid token is, is `tessera_token`'s business; this module only
//! decides which keys exist and which one signs.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use parking_lot::RwLock;
use tessera_token::{AccessClaims, Algorithm, Rejected, SigningKey, VerifyRules, VerifyingKey};

use crate::{
    model::{UnixTime, random_id},
    store::{Store, StoreError, StoredKey},
};

mod kek;
mod material;
mod verified;

pub use kek::{Kek, KekError};

/// Why the key ring could not do its work.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A private key did not decrypt.
    #[error(transparent)]
    Kek(#[from] KekError),
    /// Stored or generated key material is unusable.
    #[error("invalid key material: {0}")]
    Material(String),
    /// No key can sign yet.
    #[error("no signing key is active")]
    NoActiveKey,
    /// Signing failed.
    #[error(transparent)]
    Sign(tessera_token::KeyError),
}

impl KeyError {
    /// True when the database could not be reached.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Store(e) if e.is_unavailable())
    }
}

/// A key loaded into memory, ready to sign and verify.
#[derive(Debug)]
struct LoadedKey {
    /// Set when a reload drops the key: tokens it verified are then judged
    /// afresh. Read by every cache hit without touching the ring's lock.
    withdrawn: AtomicBool,
    activates_at: UnixTime,
    signing: SigningKey,
    verifying: VerifyingKey,
    public_jwk: serde_json::Value,
}

impl LoadedKey {
    fn kid(&self) -> &str {
        self.signing.kid()
    }

    fn is_published(&self) -> bool {
        !self.withdrawn.load(Ordering::Acquire)
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
#[derive(Debug)]
pub(crate) struct KeyRing {
    kek: Kek,
    /// How long after a key stops signing its tokens can be live: the longest
    /// access token lifetime plus verification leeway.
    retention: Duration,
    /// Published keys (next, signing, retiring), oldest activation first.
    /// Readers clone the `Arc` and never hold the lock while working.
    keys: RwLock<Arc<Vec<Arc<LoadedKey>>>>,
    /// Tokens whose signature one of `keys` verified.
    verified: verified::VerifiedTokens,
    /// The key this replica last signed with, to log when that changes.
    last_signer: parking_lot::Mutex<Option<Arc<LoadedKey>>>,
}

impl KeyRing {
    /// Loads the stored keys, first generating one (active at once) when none
    /// can sign: the first start of a new installation.
    pub(crate) async fn load(
        store: &dyn Store,
        kek: Kek,
        alg: Algorithm,
        retention: Duration,
        now: UnixTime,
    ) -> Result<Self, KeyError> {
        let ring = Self {
            kek,
            retention,
            keys: RwLock::new(Arc::new(Vec::new())),
            verified: verified::VerifiedTokens::default(),
            last_signer: parking_lot::Mutex::new(None),
        };
        ring.reload(store, now).await?;
        if ring.signer(now).is_none() {
            let (kid, _) = add_key(store, &ring.kek, alg, now, now).await?;
            tracing::info!(%kid, %alg, "generated the first signing key");
            ring.reload(store, now).await?;
        } else if let Some(deployed) = deployment_algorithm(store).await?
            && deployed != alg
        {
            tracing::warn!(
                keys = %deployed,
                configured = %alg,
                "TESSERA_SIGNING_ALG differs from the deployment's keys, and only chooses the \
                 first key of a new installation: run `tessera keys rotate --alg {alg}` to switch"
            );
        }
        Ok(ring)
    }

    /// Re-reads the stored keys: picks up rotations made elsewhere and drops
    /// expired keys. Keys already in memory are not decrypted again.
    pub(crate) async fn reload(&self, store: &dyn Store, now: UnixTime) -> Result<(), KeyError> {
        let stored = store.signing_keys().await?;
        let states = key_states(&stored, now, self.retention);
        let current = self.snapshot();
        let mut loaded = Vec::new();
        for (key, state) in stored.iter().zip(states) {
            if state == KeyState::Expired {
                continue;
            }
            match current.iter().find(|k| k.kid() == key.kid) {
                Some(existing) => loaded.push(Arc::clone(existing)),
                None => loaded.push(Arc::new(self.open(key)?)),
            }
        }
        let loaded = Arc::new(loaded);
        *self.keys.write() = Arc::clone(&loaded);
        for gone in current
            .iter()
            .filter(|k| !loaded.iter().any(|l| Arc::ptr_eq(k, l)))
        {
            gone.withdrawn.store(true, Ordering::Release);
        }
        // Tokens past their expiry, or whose key is gone, go now rather
        // than when the cache is full (one still within the verification
        // leeway that comes again is verified afresh).
        self.verified
            .retain(|v| v.claims.exp >= now.as_secs() && v.key.is_published());
        Ok(())
    }

    fn open(&self, key: &StoredKey) -> Result<LoadedKey, KeyError> {
        let material =
            |e: &dyn std::fmt::Display| KeyError::Material(format!("key {}: {e}", key.kid));
        let alg: Algorithm = key.alg.parse().map_err(|e| material(&e))?;
        let pkcs8 = self.kek.open(&key.encrypted_private_key, &key.kid)?;
        Ok(LoadedKey {
            withdrawn: AtomicBool::new(false),
            activates_at: key.activates_at,
            signing: SigningKey::from_pkcs8(&key.kid, alg, &pkcs8).map_err(|e| material(&e))?,
            verifying: VerifyingKey::from_jwk_json(&key.public_jwk).map_err(|e| material(&e))?,
            public_jwk: serde_json::from_str(&key.public_jwk).map_err(|e| material(&e))?,
        })
    }

    fn snapshot(&self) -> Arc<Vec<Arc<LoadedKey>>> {
        Arc::clone(&self.keys.read())
    }

    /// The key-encryption key the ring's keys are sealed under.
    pub(crate) fn kek(&self) -> &Kek {
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

    /// True when a key can sign at `now`.
    pub(crate) fn is_ready(&self, now: UnixTime) -> bool {
        self.signer(now).is_some()
    }

    /// Signs `claims` with the key active at `now`.
    pub(crate) fn sign(&self, claims: &AccessClaims, now: UnixTime) -> Result<String, KeyError> {
        let key = self.signer(now).ok_or(KeyError::NoActiveKey)?;
        {
            let mut last = self.last_signer.lock();
            if !last.as_ref().is_some_and(|l| Arc::ptr_eq(l, &key)) {
                tracing::info!(kid = %key.kid(), alg = %key.signing.algorithm(), "now signing with key {}", key.kid());
                tracing::info!(target: "tessera::audit", event = "key_activated", kid = %key.kid());
                *last = Some(Arc::clone(&key));
            }
        }
        key.signing.sign(claims).map_err(KeyError::Sign)
    }

    /// Verifies an access token's form, signature and claims at `now`: the
    /// token's `kid` selects a published key, and nothing else can.
    /// Revocation is not checked here.
    ///
    /// A token verified before is not verified again while the key that
    /// signed it is published; its claims are checked against `rules` at
    /// `now` on every call.
    pub(crate) fn verify(
        &self,
        token: &str,
        rules: &VerifyRules,
        now: UnixTime,
    ) -> Result<Arc<AccessClaims>, Rejected> {
        if token.len() > tessera_token::MAX_TOKEN_BYTES {
            return Err(Rejected::TooLarge);
        }
        if let Some(hit) = self.verified.get(token) {
            if hit.key.is_published() {
                rules.check(&hit.claims, now.as_secs()).inspect_err(|e| {
                    if *e == Rejected::Expired {
                        self.verified.remove(token);
                    }
                })?;
                return Ok(hit.claims);
            }
            // Its key was dropped: the token is judged afresh (and fails).
            self.verified.remove(token);
        }
        let keys = self.snapshot();
        let parsed = tessera_token::parse(token)?;
        let key = keys
            .iter()
            .find(|k| k.kid() == parsed.kid())
            .ok_or(Rejected::UnknownKey)?;
        let claims = Arc::new(parsed.verify(&key.verifying, rules, now.as_secs())?);
        self.verified.insert(
            token,
            verified::Verified {
                key: Arc::clone(key),
                claims: Arc::clone(&claims),
            },
        );
        Ok(claims)
    }

    /// The RFC 7517 JWK Set of every published key (public halves only).
    pub(crate) fn jwks_json(&self) -> String {
        let snapshot = self.snapshot();
        let keys: Vec<&serde_json::Value> = snapshot.iter().map(|k| &k.public_jwk).collect();
        serde_json::json!({ "keys": keys }).to_string()
    }
}

/// The deployment's signing algorithm: that of the newest key, if any.
/// Rotations keep it unless told otherwise, whatever the rotating process's
/// own `TESSERA_SIGNING_ALG`.
pub async fn deployment_algorithm(store: &dyn Store) -> Result<Option<Algorithm>, KeyError> {
    let keys = store.signing_keys().await?;
    keys.last()
        .map(|k| {
            k.alg
                .parse()
                .map_err(|e: tessera_token::UnknownAlgorithm| KeyError::Material(e.to_string()))
        })
        .transpose()
}

/// Generates, seals and stores a new key that signs from `activates_at`
/// (one second later per key already activating in that same second: keys
/// are ordered by activation time, so a tie would leave which key signs to
/// chance). Returns the key id and its activation time.
pub async fn add_key(
    store: &dyn Store,
    kek: &Kek,
    alg: Algorithm,
    now: UnixTime,
    activates_at: UnixTime,
) -> Result<(String, UnixTime), KeyError> {
    let taken: Vec<UnixTime> = store
        .signing_keys()
        .await?
        .iter()
        .map(|k| k.activates_at)
        .collect();
    let mut activates_at = activates_at;
    while taken.contains(&activates_at) {
        activates_at = activates_at.plus(Duration::from_secs(1));
    }
    let kid = random_id();
    let generated = material::generate(alg, &kid).map_err(KeyError::Material)?;
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

    /// A ring on a fresh SQLite store, loaded at `t0` with one ES256 key.
    async fn ring_at(t0: UnixTime) -> (tempfile::TempDir, Arc<dyn Store>, KeyRing) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
        let store = crate::store::connect(&url, 1, true).await.unwrap();
        let kek = Kek::from_base64(&Kek::generate_base64()).unwrap();
        let ring = KeyRing::load(store.as_ref(), kek, Algorithm::Es256, RETENTION, t0)
            .await
            .unwrap();
        (dir, store, ring)
    }

    const RETENTION: Duration = Duration::from_secs(600);

    fn claims(jti: &str, t0: UnixTime, lifetime: i64) -> AccessClaims {
        AccessClaims {
            iss: "tessera".into(),
            sub: "u".into(),
            aud: tessera_token::Audience::One("api".into()),
            exp: t0.as_secs() + lifetime,
            iat: t0.as_secs(),
            nbf: t0.as_secs(),
            jti: jti.into(),
            client_id: "c".into(),
            scope: "read".into(),
            sid: "s".into(),
            cnf: None,
            roles: Vec::new(),
        }
    }

    fn rules() -> VerifyRules {
        VerifyRules {
            issuer: "tessera".into(),
            audience: None,
            leeway: Duration::from_secs(5),
            max_lifetime: Duration::from_secs(600),
        }
    }

    #[tokio::test]
    async fn a_remembered_token_is_checked_for_time_and_audience_on_every_use_and_only_while_its_key_is_published()
     {
        let t0 = UnixTime::from_secs(1_000_000);
        let (_dir, store, ring) = ring_at(t0).await;
        let claims = claims("j", t0, 300);
        let token = ring.sign(&claims, t0).unwrap();
        let rules = rules();
        assert_eq!(*ring.verify(&token, &rules, t0).unwrap(), claims);
        assert_eq!(ring.verified.len(), 1);
        assert_eq!(*ring.verify(&token, &rules, t0).unwrap(), claims);

        // Audience and time are the rules', every time.
        let elsewhere = VerifyRules {
            audience: Some("other".into()),
            ..rules.clone()
        };
        assert_eq!(
            ring.verify(&token, &elsewhere, t0).unwrap_err(),
            Rejected::WrongAudience
        );
        let later = t0.plus(Duration::from_secs(305));
        assert_eq!(
            ring.verify(&token, &rules, later).unwrap_err(),
            Rejected::Expired
        );
        assert_eq!(ring.verified.len(), 0, "an expired token is forgotten");

        // A token differing in one byte is not the remembered one.
        ring.verify(&token, &rules, t0).unwrap();
        let mut forged = token.clone().into_bytes();
        let last = forged.len() - 1;
        forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
        let forged = String::from_utf8(forged).unwrap();
        assert!(ring.verify(&forged, &rules, t0).is_err());

        // Once its key is dropped, a remembered token no longer verifies,
        // and the next reload forgets it.
        let at = t0.plus(Duration::from_secs(1));
        add_key(store.as_ref(), ring.kek(), Algorithm::Es256, at, at)
            .await
            .unwrap();
        ring.reload(
            store.as_ref(),
            at.plus(RETENTION).plus(Duration::from_secs(2)),
        )
        .await
        .unwrap();
        assert_eq!(ring.verified.len(), 0, "its key was dropped");
        assert_eq!(
            ring.verify(&token, &rules, t0).unwrap_err(),
            Rejected::UnknownKey
        );
    }

    #[tokio::test]
    async fn a_key_reload_forgets_the_remembered_tokens_that_have_expired() {
        let t0 = UnixTime::from_secs(1_000_000);
        let (_dir, store, ring) = ring_at(t0).await;
        let rules = rules();
        let token = |jti: &str, lifetime: i64| ring.sign(&claims(jti, t0, lifetime), t0).unwrap();
        let (short, long) = (token("short", 60), token("long", 300));
        ring.verify(&short, &rules, t0).unwrap();
        ring.verify(&long, &rules, t0).unwrap();
        assert_eq!(ring.verified.len(), 2);

        ring.reload(store.as_ref(), t0.plus(Duration::from_secs(60)))
            .await
            .unwrap();
        assert_eq!(ring.verified.len(), 2, "both are live at 60 s");
        ring.reload(store.as_ref(), t0.plus(Duration::from_secs(61)))
            .await
            .unwrap();
        assert_eq!(ring.verified.len(), 1, "only the long-lived one is left");
        ring.verify(&long, &rules, t0.plus(Duration::from_secs(61)))
            .unwrap();
        assert_eq!(ring.verified.len(), 1, "and it is still remembered");
    }
}
