//! The in-memory revocation state Introspect consults instead of the
//! database: revoked token ids, revoked sessions and per-subject "valid
//! after" times, following the append-only log in the store.
//!
//! Built for a large revoked set arriving fast: entries live in sharded
//! maps, so a reader locks one small shard for one lookup and never waits
//! for a batch being applied; entries are forgotten from an index ordered
//! by expiry, so the cost of a sync is that of its new and expired entries,
//! never of the whole set. Memory is bounded by the revocations of one
//! token lifetime (about 50 bytes each: a map holds a 64-bit keyed hash of
//! each value, not the value).
//!
//! A hash stands in for the value, so two values could share one: the cost
//! would be a token wrongly reported revoked, never a revoked token
//! reported active, and with a random 64-bit key per process the chance
//! is about one in 10^13 per lookup with a million entries.

use std::{
    collections::{BTreeMap, HashMap},
    hash::{BuildHasher, BuildHasherDefault, Hasher},
    sync::atomic::{AtomicI64, Ordering},
    time::Duration,
};

use parking_lot::{Mutex, RwLock};
use tokio::time::Instant;

use crate::{
    model::{Revocation, RevocationKind, UnixTime},
    store::{Store, StoreError},
};

/// Log entries read per query while catching up.
const PAGE: i64 = 10_000;

/// Shards of the revoked set: enough that a batch being applied to one
/// rarely meets a reader on the same one.
const SHARDS: usize = 64;

/// Keys are already uniformly distributed hashes: used as they are.
#[derive(Debug, Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used; fold anything else in all the same.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// What one revoked value denies.
#[derive(Debug, Clone, Copy)]
struct Denial {
    /// When the entry can be forgotten (Unix seconds).
    until: i64,
    /// Subjects only: tokens issued at or before this are denied.
    issued_up_to: i64,
}

type Shard = HashMap<u64, Denial, BuildHasherDefault<Prehashed>>;

/// The revoked set: keyed hashes of (kind, value) in sharded maps, and an
/// index of keys by expiry second. The hash is foldhash's, seeded at random
/// per process: three lookups on every Introspect of an access token (its
/// `jti`, `sid` and `sub`), twice a call with the caller's own token.
#[derive(Debug)]
struct Denied {
    hasher: foldhash::quality::RandomState,
    shards: Box<[RwLock<Shard>]>,
    by_expiry: Mutex<BTreeMap<i64, Vec<u64>>>,
}

impl Denied {
    fn new() -> Self {
        Self {
            hasher: foldhash::quality::RandomState::default(),
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            by_expiry: Mutex::default(),
        }
    }

    fn key(&self, kind: RevocationKind, value: &str) -> u64 {
        let tag: u8 = match kind {
            RevocationKind::Token => 0,
            RevocationKind::Session => 1,
            RevocationKind::Subject => 2,
        };
        self.hasher.hash_one((tag, value))
    }

    fn shard(&self, key: u64) -> &RwLock<Shard> {
        // The top bits pick the shard; the map uses all of them.
        &self.shards[(key >> 58) as usize % SHARDS]
    }

    fn get(&self, kind: RevocationKind, value: &str) -> Option<Denial> {
        let key = self.key(kind, value);
        self.shard(key).read().get(&key).copied()
    }

    fn apply(&self, entry: &Revocation) {
        let key = self.key(entry.kind, &entry.value);
        let (at, until) = (entry.at.as_secs(), entry.expires_at.as_secs());
        let extended = {
            let mut shard = self.shard(key).write();
            match shard.get_mut(&key) {
                Some(d) => {
                    // Seen before (applied here, then read from the log; or a
                    // subject revoked again): keep the widest denial.
                    d.issued_up_to = d.issued_up_to.max(at);
                    let longer = until > d.until;
                    d.until = d.until.max(until);
                    longer
                }
                None => {
                    shard.insert(
                        key,
                        Denial {
                            until,
                            issued_up_to: at,
                        },
                    );
                    true
                }
            }
        };
        if extended {
            self.by_expiry.lock().entry(until).or_default().push(key);
        }
    }

    /// Forgets entries that expired by `now`: only those are visited.
    fn prune(&self, now: UnixTime) -> usize {
        let now = now.as_secs();
        let expired: Vec<Vec<u64>> = {
            let mut index = self.by_expiry.lock();
            let live = index.split_off(&(now + 1));
            std::mem::replace(&mut *index, live).into_values().collect()
        };
        let mut forgotten = 0;
        for key in expired.into_iter().flatten() {
            let mut shard = self.shard(key).write();
            // It may have been extended since: then a later bucket has it.
            if shard.get(&key).is_some_and(|d| d.until <= now) {
                shard.remove(&key);
                forgotten += 1;
            }
        }
        forgotten
    }

    fn len(&self) -> usize {
        self.shards.iter().map(|s| s.read().len()).sum()
    }
}

/// The facts of a token that revocation can deny it by.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TokenFacts<'a> {
    /// `jti`.
    pub jti: &'a str,
    /// `sid`.
    pub sid: &'a str,
    /// `sub`.
    pub sub: &'a str,
    /// `iat`.
    pub iat: i64,
}

impl<'a> From<&'a tessera_token::AccessClaims> for TokenFacts<'a> {
    fn from(claims: &'a tessera_token::AccessClaims) -> Self {
        Self {
            jti: &claims.jti,
            sid: &claims.sid,
            sub: &claims.sub,
            iat: claims.iat,
        }
    }
}

/// Revocation state shared by the handlers and the follower.
#[derive(Debug)]
pub(crate) struct RevocationState {
    denied: Denied,
    /// Log position of the last entry applied.
    cursor: AtomicI64,
    /// One sync at a time (the follower's task and start-up).
    syncing: tokio::sync::Mutex<()>,
    /// When the log was last read completely (tokio's clock, so tests can
    /// pause it).
    synced_at: Mutex<Option<Instant>>,
    /// How old the last complete read may be before answers are refused.
    stale_after: Duration,
}

impl RevocationState {
    /// An empty state; fresh only after the first [`RevocationState::sync`].
    pub(crate) fn new(stale_after: Duration) -> Self {
        Self {
            denied: Denied::new(),
            cursor: AtomicI64::new(0),
            syncing: tokio::sync::Mutex::new(()),
            synced_at: Mutex::new(None),
            stale_after,
        }
    }

    /// True when a revocation denies the token.
    pub(crate) fn is_revoked(&self, token: TokenFacts<'_>) -> bool {
        self.denied.get(RevocationKind::Token, token.jti).is_some()
            || self
                .denied
                .get(RevocationKind::Session, token.sid)
                .is_some()
            || self
                .denied
                .get(RevocationKind::Subject, token.sub)
                .is_some_and(|d| token.iat <= d.issued_up_to)
    }

    /// Applies a revocation this replica just made durable, so it is in force
    /// here before the request that made it returns.
    pub(crate) fn apply_local(&self, entry: &Revocation) {
        self.denied.apply(entry);
    }

    /// Reads every log entry after the cursor, applies it, forgets expired
    /// entries and marks the state fresh. Returns how many entries it applied.
    pub(crate) async fn sync(&self, store: &dyn Store, now: UnixTime) -> Result<usize, StoreError> {
        let _one_at_a_time = self.syncing.lock().await;
        let started = Instant::now();
        let mut applied = 0;
        loop {
            let cursor = self.cursor.load(Ordering::Acquire);
            let page = store.revocations_after(cursor, now, PAGE).await?;
            for (_, entry) in &page {
                self.denied.apply(entry);
            }
            if let Some(newest) = page.iter().map(|(_, e)| e.at).max() {
                let lag_secs = (now.as_secs() - newest.as_secs()).max(0);
                crate::metrics::metrics()
                    .revocation_lag
                    .record(lag_secs as f64, &[]);
            }
            applied += page.len();
            if let Some((last, _)) = page.last() {
                self.cursor.store(*last, Ordering::Release);
            }
            if page.len() < usize::try_from(PAGE).unwrap_or(usize::MAX) {
                break;
            }
        }
        self.denied.prune(now);
        // Fresh as of when the read began: anything committed before then is in.
        *self.synced_at.lock() = Some(started);
        Ok(applied)
    }

    /// How many revocations are held.
    pub(crate) fn len(&self) -> usize {
        self.denied.len()
    }

    /// True when the log was read completely within the staleness bound.
    pub(crate) fn is_fresh(&self) -> bool {
        self.synced_at
            .lock()
            .is_some_and(|at| at.elapsed() <= self.stale_after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(kind: RevocationKind, value: &str, at: i64) -> Revocation {
        Revocation {
            kind,
            value: value.into(),
            at: UnixTime::from_secs(at),
            expires_at: UnixTime::from_secs(at + 100),
        }
    }

    fn facts<'a>(jti: &'a str, sid: &'a str, sub: &'a str, iat: i64) -> TokenFacts<'a> {
        TokenFacts { jti, sid, sub, iat }
    }

    #[test]
    fn a_revoked_jti_denies_only_that_token() {
        let state = RevocationState::new(Duration::from_secs(1));
        state.apply_local(&entry(RevocationKind::Token, "j1", 10));
        assert!(state.is_revoked(facts("j1", "s", "u", 5)));
        assert!(!state.is_revoked(facts("j2", "s", "u", 5)));
    }

    #[test]
    fn a_subject_revocation_denies_tokens_issued_at_or_before_it() {
        let state = RevocationState::new(Duration::from_secs(1));
        state.apply_local(&entry(RevocationKind::Subject, "u", 10));
        assert!(state.is_revoked(facts("j", "s", "u", 10)));
        assert!(!state.is_revoked(facts("j", "s", "u", 11)));
        assert!(!state.is_revoked(facts("j", "s", "other", 5)));
    }

    #[test]
    fn expired_entries_are_forgotten() {
        let denied = Denied::new();
        denied.apply(&entry(RevocationKind::Session, "s", 10));
        assert_eq!(denied.prune(UnixTime::from_secs(109)), 0);
        assert!(denied.get(RevocationKind::Session, "s").is_some());
        assert_eq!(denied.prune(UnixTime::from_secs(110)), 1);
        assert!(denied.get(RevocationKind::Session, "s").is_none());
        assert_eq!(denied.len(), 0);
        assert!(denied.by_expiry.lock().is_empty());
    }

    #[test]
    fn an_entry_extended_since_it_was_indexed_is_kept_until_its_new_expiry() {
        let denied = Denied::new();
        denied.apply(&entry(RevocationKind::Subject, "u", 10));
        denied.apply(&entry(RevocationKind::Subject, "u", 50));
        // The same entry twice (applied here, then read from the log).
        denied.apply(&entry(RevocationKind::Subject, "u", 50));
        assert_eq!(denied.prune(UnixTime::from_secs(110)), 0);
        let d = denied.get(RevocationKind::Subject, "u").unwrap();
        assert_eq!((d.issued_up_to, d.until), (50, 150));
        assert_eq!(denied.prune(UnixTime::from_secs(150)), 1);
        assert_eq!(denied.len(), 0);
    }

    #[test]
    fn kinds_do_not_share_entries() {
        let state = RevocationState::new(Duration::from_secs(1));
        state.apply_local(&entry(RevocationKind::Session, "x", 10));
        assert!(state.is_revoked(facts("j", "x", "u", 5)));
        assert!(!state.is_revoked(facts("x", "s", "x", 5)));
    }

    #[test]
    fn pruning_visits_only_what_expired() {
        let denied = Denied::new();
        for i in 0..100_000 {
            denied.apply(&entry(
                RevocationKind::Token,
                &format!("j{i}"),
                1_000 + i / 1000,
            ));
        }
        // Entries of the first second expire at 1100: only those 1000 go.
        assert_eq!(denied.prune(UnixTime::from_secs(1_100)), 1000);
        assert_eq!(denied.len(), 99_000);
        assert_eq!(denied.by_expiry.lock().len(), 99);
    }

    #[test]
    fn a_state_that_never_synced_is_not_fresh() {
        assert!(!RevocationState::new(Duration::from_secs(60)).is_fresh());
    }

    #[tokio::test(start_paused = true)]
    async fn a_synced_state_goes_stale_after_its_bound() {
        let state = RevocationState::new(Duration::from_secs(10));
        *state.synced_at.lock() = Some(Instant::now());
        assert!(state.is_fresh());
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(state.is_fresh());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(!state.is_fresh());
    }
}
