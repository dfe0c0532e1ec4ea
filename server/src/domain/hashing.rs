//! Argon2id on a fixed pool of worker threads, off the async runtime, so a
//! login storm queues (and past a bound is refused) instead of stalling
//! Introspect.
//!
//! The bound is the pool itself: a hash runs only on one of its workers, so
//! however many callers give up (a deadline, a reset stream), no more than
//! `max_concurrent` hashes ever run, and a job whose caller has gone is
//! dropped unrun when a worker reaches it. Each worker allocates its argon2
//! memory once and reuses it, so resident memory stays at about
//! `max_concurrent × memory_kib` whatever the load: nothing is freed to
//! fragment the allocator.

use std::{
    collections::VecDeque,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use argon2::{
    Algorithm, Argon2, Block, Params, PasswordHash, Version,
    password_hash::{Output, SaltString},
};
use aws_lc_rs::constant_time;
use base64::{Engine, engine::general_purpose::STANDARD_NO_PAD};
use parking_lot::{Condvar, Mutex};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::oneshot;

use crate::model::{Password, random_bytes};

/// OWASP's recommended argon2id floors (memory KiB, iterations), any of
/// which is acceptable; below all of them, settings are refused unless
/// explicitly allowed.
const OWASP_FLOORS: [(u32, u32); 5] = [
    (47_104, 1),
    (19_456, 2),
    (12_288, 3),
    (9_216, 4),
    (7_168, 5),
];

/// Length of the hashes Tessera writes.
const HASH_LEN: usize = 32;

/// Argon2id cost and pool bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HashingSettings {
    /// Memory cost in KiB (OWASP: 19456).
    pub memory_kib: u32,
    /// Iterations (OWASP: 2).
    pub iterations: u32,
    /// Lanes (OWASP: 1).
    pub parallelism: u32,
    /// Worker threads: hashes computed at once.
    pub max_concurrent: usize,
    /// Hashes allowed to wait; past this a login is refused as throttled.
    pub max_waiting: usize,
    /// Accept parameters below OWASP's floor (for tests and tiny devices).
    pub allow_weak: bool,
}

impl HashingSettings {
    /// Refuses parameters below every OWASP floor unless `allow_weak`.
    pub fn check(&self) -> Result<(), String> {
        let strong = self.parallelism >= 1
            && OWASP_FLOORS
                .iter()
                .any(|&(m, t)| self.memory_kib >= m && self.iterations >= t);
        if strong || self.allow_weak {
            Ok(())
        } else {
            Err(format!(
                "argon2id m={} KiB, t={} is below OWASP's floor (e.g. m=19456, t=2); \
                 set TESSERA_ARGON2_ALLOW_WEAK=true to use it anyway",
                self.memory_kib, self.iterations
            ))
        }
    }

    fn params(&self) -> Result<Params, HashError> {
        Params::new(
            self.memory_kib,
            self.iterations,
            self.parallelism,
            Some(HASH_LEN),
        )
        .map_err(|e| HashError::Params(e.to_string()))
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
    /// Hashing failed, or the pool has stopped.
    #[error("password hashing failed: {0}")]
    Failed(String),
}

/// The result of checking a password.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Verified {
    /// The password matches.
    pub(crate) matches: bool,
    /// The stored hash used other parameters than the configured ones: a
    /// successful login should store a new hash.
    pub(crate) needs_rehash: bool,
}

enum Work {
    Hash(SecretString),
    Verify(SecretString, Option<String>),
}

enum Done {
    Hashed(String),
    Verified(Verified),
}

struct Job {
    work: Work,
    reply: oneshot::Sender<Result<Done, HashError>>,
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    closed: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    ready: Condvar,
    params: Params,
    max_waiting: usize,
    /// Jobs run to the end.
    ran: AtomicU64,
    /// Jobs dropped unrun because their caller had gone.
    abandoned: AtomicU64,
}

/// Closes the queue (stopping the workers) when the last hasher goes.
struct Shutdown(Arc<Shared>);

impl Drop for Shutdown {
    fn drop(&mut self) {
        self.0.queue.lock().closed = true;
        self.0.ready.notify_all();
    }
}

/// Hashes and verifies passwords with argon2id on its own worker threads.
/// Clones share the pool; it stops when the last clone is dropped.
#[derive(Clone)]
pub(crate) struct PasswordHasher {
    shared: Arc<Shared>,
    _shutdown: Arc<Shutdown>,
    /// Checked against when the user is unknown, so the answer takes as
    /// long as for a known user: configured parameters, random salt and
    /// random "hash", so it never matches and costs nothing to make.
    dummy_hash: Arc<str>,
}

impl std::fmt::Debug for PasswordHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordHasher")
            .field("params", &self.shared.params)
            .field("max_waiting", &self.shared.max_waiting)
            .finish_non_exhaustive()
    }
}

impl PasswordHasher {
    /// Starts `settings.max_concurrent` workers.
    pub(crate) fn new(settings: &HashingSettings) -> Result<Self, HashError> {
        let params = settings.params()?;
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            ready: Condvar::new(),
            params: params.clone(),
            max_waiting: settings.max_waiting,
            ran: AtomicU64::new(0),
            abandoned: AtomicU64::new(0),
        });
        for n in 0..settings.max_concurrent.max(1) {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name(format!("tessera-argon2-{n}"))
                .spawn(move || work(&shared))
                .map_err(|e| HashError::Failed(e.to_string()))?;
        }
        let dummy_hash = phc(&params, &random_bytes::<16>(), &random_bytes::<HASH_LEN>())?;
        Ok(Self {
            _shutdown: Arc::new(Shutdown(Arc::clone(&shared))),
            shared,
            dummy_hash: dummy_hash.into(),
        })
    }

    /// A PHC string for `password`.
    pub(crate) async fn hash(&self, password: &Password) -> Result<String, HashError> {
        match self.run(Work::Hash(password.secret().clone())).await? {
            Done::Hashed(phc) => Ok(phc),
            Done::Verified(_) => Err(HashError::Failed("unexpected answer".into())),
        }
    }

    /// Checks `password` against `phc`; with `None` (unknown user) checks
    /// against the dummy hash, taking the same time, and never matches.
    pub(crate) async fn verify(
        &self,
        password: &Password,
        phc: Option<&str>,
    ) -> Result<Verified, HashError> {
        let phc = phc.map(str::to_owned);
        match self
            .run(Work::Verify(password.secret().clone(), phc))
            .await?
        {
            Done::Verified(verified) => Ok(verified),
            Done::Hashed(_) => Err(HashError::Failed("unexpected answer".into())),
        }
    }

    /// Jobs waiting for a worker.
    #[cfg(test)]
    pub(crate) fn waiting(&self) -> usize {
        self.shared.queue.lock().jobs.len()
    }

    /// Jobs run, and jobs dropped unrun because their caller had gone.
    #[cfg(test)]
    pub(crate) fn counts(&self) -> (u64, u64) {
        (
            self.shared.ran.load(Ordering::Relaxed),
            self.shared.abandoned.load(Ordering::Relaxed),
        )
    }

    async fn run(&self, work: Work) -> Result<Done, HashError> {
        let work = match work {
            Work::Verify(password, None) => {
                Work::Verify(password, Some(self.dummy_hash.to_string()))
            }
            other => other,
        };
        let unknown_user = matches!(&work, Work::Verify(_, Some(p)) if **p == *self.dummy_hash);
        let (reply, answer) = oneshot::channel();
        {
            let mut queue = self.shared.queue.lock();
            if queue.jobs.len() >= self.shared.max_waiting {
                return Err(HashError::Throttled);
            }
            queue.jobs.push_back(Job { work, reply });
            crate::metrics::metrics()
                .hashing_queue_depth
                .record(queue.jobs.len() as u64, &[]);
        }
        self.shared.ready.notify_one();
        let done = answer
            .await
            .map_err(|_| HashError::Failed("the hashing pool stopped".into()))??;
        Ok(match done {
            Done::Verified(v) if unknown_user => Done::Verified(Verified {
                matches: false,
                needs_rehash: v.needs_rehash,
            }),
            other => other,
        })
    }
}

/// A worker: takes jobs until the queue closes, skipping any whose caller
/// has gone, with one argon2 memory block it reuses for every job.
fn work(shared: &Shared) {
    let mut memory: Vec<Block> = Vec::new();
    loop {
        let job = {
            let mut queue = shared.queue.lock();
            loop {
                if let Some(job) = queue.jobs.pop_front() {
                    crate::metrics::metrics()
                        .hashing_queue_depth
                        .record(queue.jobs.len() as u64, &[]);
                    break job;
                }
                if queue.closed {
                    return;
                }
                shared.ready.wait(&mut queue);
            }
        };
        if job.reply.is_closed() {
            shared.abandoned.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let done = match job.work {
            Work::Hash(password) => {
                hash(&shared.params, password.expose_secret(), &mut memory).map(Done::Hashed)
            }
            Work::Verify(password, phc) => verify(
                &shared.params,
                password.expose_secret(),
                phc.as_deref().unwrap_or_default(),
                &mut memory,
            )
            .map(Done::Verified),
        };
        shared.ran.fetch_add(1, Ordering::Relaxed);
        let _ = job.reply.send(done);
    }
}

/// `memory`, grown to `params`' size if it is smaller (only the first job,
/// or a stored hash made with more memory than configured).
fn blocks<'m>(memory: &'m mut Vec<Block>, params: &Params) -> &'m mut [Block] {
    if memory.len() < params.block_count() {
        memory.resize(params.block_count(), Block::default());
    }
    &mut memory[..params.block_count()]
}

fn argon2(params: &Params) -> Argon2<'static> {
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
}

fn hash(params: &Params, password: &str, memory: &mut Vec<Block>) -> Result<String, HashError> {
    let salt = random_bytes::<16>();
    let mut out = [0u8; HASH_LEN];
    argon2(params)
        .hash_password_into_with_memory(
            password.as_bytes(),
            &salt,
            &mut out,
            blocks(memory, params),
        )
        .map_err(|e| HashError::Failed(e.to_string()))?;
    phc(params, &salt, &out)
}

fn verify(
    configured: &Params,
    password: &str,
    phc: &str,
    memory: &mut Vec<Block>,
) -> Result<Verified, HashError> {
    let failed = |e: &dyn std::fmt::Display| HashError::Failed(format!("stored hash: {e}"));
    let parsed = PasswordHash::new(phc).map_err(|e| failed(&e))?;
    let algorithm = Algorithm::try_from(parsed.algorithm).map_err(|e| failed(&e))?;
    let version = parsed
        .version
        .map_or(Ok(Version::V0x13), Version::try_from)
        .map_err(|e| failed(&e))?;
    let expected = parsed.hash.ok_or_else(|| failed(&"no hash"))?;
    let mut params = Params::try_from(&parsed).map_err(|e| failed(&e))?;
    if params.output_len() != Some(expected.len()) {
        params = Params::new(
            params.m_cost(),
            params.t_cost(),
            params.p_cost(),
            Some(expected.len()),
        )
        .map_err(|e| failed(&e))?;
    }
    let mut salt = [0u8; 64];
    let salt = parsed
        .salt
        .ok_or_else(|| failed(&"no salt"))?
        .decode_b64(&mut salt)
        .map_err(|e| failed(&e))?;
    let mut out = vec![0u8; expected.len()];
    Argon2::new(algorithm, version, params.clone())
        .hash_password_into_with_memory(
            password.as_bytes(),
            salt,
            &mut out,
            blocks(memory, &params),
        )
        .map_err(|e| failed(&e))?;
    let matches = constant_time::verify_slices_are_equal(&out, expected.as_bytes()).is_ok();
    let needs_rehash = algorithm != Algorithm::Argon2id
        || version != Version::V0x13
        || (params.m_cost(), params.t_cost(), params.p_cost())
            != (
                configured.m_cost(),
                configured.t_cost(),
                configured.p_cost(),
            )
        || expected.len() != HASH_LEN;
    Ok(Verified {
        matches,
        needs_rehash,
    })
}

/// The PHC string of an argon2id hash.
fn phc(params: &Params, salt: &[u8], hash: &[u8]) -> Result<String, HashError> {
    let failed = |e: argon2::password_hash::Error| HashError::Failed(e.to_string());
    let salt = SaltString::from_b64(&STANDARD_NO_PAD.encode(salt)).map_err(failed)?;
    let hash = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: params.try_into().map_err(failed)?,
        salt: Some(salt.as_salt()),
        hash: Some(Output::new(hash).map_err(failed)?),
    };
    Ok(hash.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cheap() -> HashingSettings {
        HashingSettings {
            memory_kib: 1024,
            iterations: 1,
            parallelism: 1,
            max_concurrent: 1,
            max_waiting: 16,
            allow_weak: true,
        }
    }

    fn pw(s: &str) -> Password {
        Password::parse(SecretString::from(s)).unwrap()
    }

    #[tokio::test]
    async fn a_hash_verifies_its_password_and_no_other() {
        let hasher = PasswordHasher::new(&cheap()).unwrap();
        let phc = hasher.hash(&pw("correct horse")).await.unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=1024,t=1,p=1$"), "{phc}");
        let right = hasher
            .verify(&pw("correct horse"), Some(&phc))
            .await
            .unwrap();
        assert!(right.matches && !right.needs_rehash);
        let wrong = hasher.verify(&pw("wrong horse"), Some(&phc)).await.unwrap();
        assert!(!wrong.matches);
    }

    #[tokio::test]
    async fn hashes_from_the_argon2_crate_verify_too() {
        use argon2::PasswordHasher as _;
        let hasher = PasswordHasher::new(&cheap()).unwrap();
        let salt = SaltString::encode_b64(&random_bytes::<16>()).unwrap();
        let theirs = argon2(&Params::new(1024, 1, 1, None).unwrap())
            .hash_password(b"correct horse", &salt)
            .unwrap()
            .to_string();
        assert!(
            hasher
                .verify(&pw("correct horse"), Some(&theirs))
                .await
                .unwrap()
                .matches
        );
    }

    #[tokio::test]
    async fn a_hash_made_with_other_parameters_asks_to_be_rehashed() {
        let old = PasswordHasher::new(&cheap()).unwrap();
        let phc = old.hash(&pw("correct horse")).await.unwrap();
        let new = PasswordHasher::new(&HashingSettings {
            memory_kib: 2048,
            ..cheap()
        })
        .unwrap();
        let verified = new.verify(&pw("correct horse"), Some(&phc)).await.unwrap();
        assert!(verified.matches && verified.needs_rehash);
    }

    #[tokio::test]
    async fn an_unknown_user_never_verifies() {
        let hasher = PasswordHasher::new(&cheap()).unwrap();
        assert!(!hasher.verify(&pw("anything"), None).await.unwrap().matches);
    }

    #[test]
    fn the_default_parameters_meet_the_owasp_floor_and_weaker_ones_need_allowing() {
        let owasp = HashingSettings {
            memory_kib: 19_456,
            iterations: 2,
            allow_weak: false,
            ..cheap()
        };
        assert!(owasp.check().is_ok());
        let weak = HashingSettings {
            memory_kib: 19_456,
            iterations: 1,
            ..owasp
        };
        assert!(weak.check().is_err());
        assert!(
            HashingSettings {
                allow_weak: true,
                ..weak
            }
            .check()
            .is_ok()
        );
    }

    #[tokio::test]
    async fn past_the_waiting_bound_a_hash_is_throttled() {
        let hasher = PasswordHasher::new(&HashingSettings {
            max_waiting: 0,
            ..cheap()
        })
        .unwrap();
        assert!(matches!(
            hasher.hash(&pw("p")).await,
            Err(HashError::Throttled)
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_abandoned_job_is_never_run() {
        use std::task::{Context, Waker};
        // One worker, and a hash that takes milliseconds.
        let hasher = PasswordHasher::new(&HashingSettings {
            memory_kib: 19_456,
            iterations: 2,
            ..cheap()
        })
        .unwrap();
        let mut cx = Context::from_waker(Waker::noop());
        // Queue a job, and wait until the worker has taken it.
        let (busy_pw, gone_pw) = (pw("busy"), pw("gone"));
        let mut busy = Box::pin(hasher.hash(&busy_pw));
        assert!(busy.as_mut().poll(&mut cx).is_pending());
        while hasher.waiting() > 0 {
            std::thread::yield_now();
        }
        // While it works, eight callers queue a job and give up at once.
        for _ in 0..8 {
            let mut gone = Box::pin(hasher.hash(&gone_pw));
            assert!(gone.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(hasher.waiting(), 8);
        busy.await.unwrap();
        // A live job behind them: when it is done, they were all reached.
        hasher.hash(&pw("next")).await.unwrap();
        assert_eq!(hasher.counts(), (2, 8), "(run, dropped unrun)");
    }
}
