//! Argon2id password hashing on a bounded pool off the async runtime, so a
//! login storm queues (and past a bound is refused) instead of stalling
//! Introspect.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use argon2::{
    Algorithm, Argon2, Params, PasswordHash, PasswordVerifier, Version,
    password_hash::{PasswordHasher as _, SaltString},
};
use tokio::sync::Semaphore;

use crate::model::{Password, random_bytes, random_id};

/// Argon2id cost and pool bounds.
#[derive(Debug, Clone)]
pub struct HashingSettings {
    /// Memory cost in KiB (OWASP: 19456).
    pub memory_kib: u32,
    /// Iterations (OWASP: 2).
    pub iterations: u32,
    /// Lanes (OWASP: 1).
    pub parallelism: u32,
    /// Hashes computed at once; more wait their turn.
    pub max_concurrent: usize,
    /// Hashes allowed to wait; past this a login is refused as throttled.
    pub max_waiting: usize,
}

impl Default for HashingSettings {
    fn default() -> Self {
        Self {
            memory_kib: 19_456,
            iterations: 2,
            parallelism: 1,
            max_concurrent: std::thread::available_parallelism().map_or(2, usize::from),
            max_waiting: 256,
        }
    }
}

/// Why a hash could not be computed or checked.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    /// Too many hashes are already waiting.
    #[error("too many password checks are waiting")]
    Throttled,
    /// The parameters are invalid (a configuration error).
    #[error("invalid argon2 parameters: {0}")]
    Params(String),
    /// Hashing failed or the blocking task died.
    #[error("password hashing failed: {0}")]
    Failed(String),
}

/// Hashes and verifies passwords with argon2id.
#[derive(Clone)]
pub(crate) struct PasswordHasher {
    argon2: Argon2<'static>,
    /// Verified against when the user is unknown, so the answer takes as long
    /// as for a known user and timing does not reveal who exists.
    dummy_hash: Arc<str>,
    running: Arc<Semaphore>,
    waiting: Arc<AtomicUsize>,
    max_waiting: usize,
}

impl PasswordHasher {
    /// Builds a hasher; computes the dummy hash once (one argon2 run).
    pub(crate) fn new(settings: &HashingSettings) -> Result<Self, HashError> {
        let params = Params::new(
            settings.memory_kib,
            settings.iterations,
            settings.parallelism,
            None,
        )
        .map_err(|e| HashError::Params(e.to_string()))?;
        let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let dummy_hash = hash_with(&argon2, &random_id())?;
        Ok(Self {
            argon2,
            dummy_hash: dummy_hash.into(),
            running: Arc::new(Semaphore::new(settings.max_concurrent.max(1))),
            waiting: Arc::new(AtomicUsize::new(0)),
            max_waiting: settings.max_waiting,
        })
    }

    /// A PHC string for `password`.
    pub(crate) async fn hash(&self, password: &Password) -> Result<String, HashError> {
        let argon2 = self.argon2.clone();
        let password = password.expose().to_owned();
        self.run(move || hash_with(&argon2, &password)).await
    }

    /// True when `password` matches `phc`; with `None` (unknown user) checks
    /// against the dummy hash and answers false, taking the same time.
    pub(crate) async fn verify(
        &self,
        password: &Password,
        phc: Option<&str>,
    ) -> Result<bool, HashError> {
        let argon2 = self.argon2.clone();
        let password = password.expose().to_owned();
        let known = phc.is_some();
        let phc = phc.map_or_else(|| self.dummy_hash.to_string(), str::to_owned);
        self.run(move || {
            let parsed = PasswordHash::new(&phc).map_err(|e| HashError::Failed(e.to_string()))?;
            let ok = argon2.verify_password(password.as_bytes(), &parsed).is_ok();
            Ok(ok && known)
        })
        .await
    }

    async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> Result<T, HashError> + Send + 'static,
    ) -> Result<T, HashError> {
        let _waiting = WaitingSlot::take(&self.waiting, self.max_waiting)?;
        let _permit = self
            .running
            .acquire()
            .await
            .map_err(|e| HashError::Failed(e.to_string()))?;
        tokio::task::spawn_blocking(job)
            .await
            .map_err(|e| HashError::Failed(e.to_string()))?
    }
}

fn hash_with(argon2: &Argon2<'_>, password: &str) -> Result<String, HashError> {
    let salt = SaltString::encode_b64(&random_bytes::<16>())
        .map_err(|e| HashError::Failed(e.to_string()))?;
    argon2
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| HashError::Failed(e.to_string()))
}

impl std::fmt::Debug for PasswordHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordHasher")
            .field("max_waiting", &self.max_waiting)
            .finish_non_exhaustive()
    }
}

/// One place in the bounded waiting line, given back on drop.
struct WaitingSlot<'a>(&'a AtomicUsize);

impl<'a> WaitingSlot<'a> {
    fn take(counter: &'a AtomicUsize, max: usize) -> Result<Self, HashError> {
        let previous = counter.fetch_add(1, Ordering::SeqCst);
        let slot = Self(counter);
        if previous >= max {
            return Err(HashError::Throttled);
        }
        Ok(slot)
    }
}

impl Drop for WaitingSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use secrecy::SecretString;

    use super::*;

    fn cheap() -> HashingSettings {
        HashingSettings {
            memory_kib: 1024,
            iterations: 1,
            ..HashingSettings::default()
        }
    }

    fn pw(s: &str) -> Password {
        Password::parse(SecretString::from(s)).unwrap()
    }

    #[tokio::test]
    async fn a_hash_verifies_its_password_and_no_other() {
        let hasher = PasswordHasher::new(&cheap()).unwrap();
        let phc = hasher.hash(&pw("correct horse")).await.unwrap();
        assert!(phc.starts_with("$argon2id$"));
        assert!(
            hasher
                .verify(&pw("correct horse"), Some(&phc))
                .await
                .unwrap()
        );
        assert!(!hasher.verify(&pw("wrong horse"), Some(&phc)).await.unwrap());
    }

    #[tokio::test]
    async fn an_unknown_user_never_verifies() {
        let hasher = PasswordHasher::new(&cheap()).unwrap();
        assert!(!hasher.verify(&pw("anything"), None).await.unwrap());
    }

    #[tokio::test]
    async fn the_default_parameters_are_owasp_argon2id() {
        let hasher = PasswordHasher::new(&HashingSettings::default()).unwrap();
        let phc = hasher.hash(&pw("p")).await.unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
    }

    #[tokio::test]
    async fn past_the_waiting_bound_a_hash_is_throttled() {
        let hasher = PasswordHasher::new(&HashingSettings {
            max_concurrent: 1,
            max_waiting: 0,
            ..cheap()
        })
        .unwrap();
        assert!(matches!(
            hasher.hash(&pw("p")).await,
            Err(HashError::Throttled)
        ));
    }
}
