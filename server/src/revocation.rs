//! The in-memory revocation state Introspect consults instead of the
//! database: revoked token ids, revoked sessions and per-subject "valid
//! after" times, following the append-only log in the store.
//!
//! Entries are forgotten once no token they could deny can still be live, so
//! memory is bounded by the revocations of one token lifetime.

use std::{collections::HashMap, time::Duration};

use parking_lot::{Mutex, RwLock};
use tokio::time::Instant;

use crate::{
    model::{Revocation, RevocationKind, UnixTime},
    store::{Store, StoreError},
};

/// Log entries read per query while catching up.
const PAGE: i64 = 1000;

/// What the state knows, behind one lock.
#[derive(Debug, Default)]
struct Denied {
    /// Log position of the last entry applied.
    cursor: i64,
    /// `jti` → when the entry can be forgotten.
    tokens: HashMap<String, UnixTime>,
    /// `sid` → when the entry can be forgotten.
    sessions: HashMap<String, UnixTime>,
    /// `sub` → (tokens issued at or before this are denied, forget after).
    subjects: HashMap<String, (UnixTime, UnixTime)>,
}

impl Denied {
    fn apply(&mut self, entry: &Revocation) {
        match entry.kind {
            RevocationKind::Token => {
                self.tokens.insert(entry.value.clone(), entry.expires_at);
            }
            RevocationKind::Session => {
                self.sessions.insert(entry.value.clone(), entry.expires_at);
            }
            RevocationKind::Subject => {
                let slot = self
                    .subjects
                    .entry(entry.value.clone())
                    .or_insert((entry.at, entry.expires_at));
                *slot = (slot.0.max(entry.at), slot.1.max(entry.expires_at));
            }
        }
    }

    fn prune(&mut self, now: UnixTime) {
        self.tokens.retain(|_, until| *until > now);
        self.sessions.retain(|_, until| *until > now);
        self.subjects.retain(|_, (_, until)| *until > now);
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
    denied: RwLock<Denied>,
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
            denied: RwLock::new(Denied::default()),
            synced_at: Mutex::new(None),
            stale_after,
        }
    }

    /// True when a revocation denies the token.
    pub(crate) fn is_revoked(&self, token: TokenFacts<'_>) -> bool {
        let denied = self.denied.read();
        denied.tokens.contains_key(token.jti)
            || denied.sessions.contains_key(token.sid)
            || denied
                .subjects
                .get(token.sub)
                .is_some_and(|(valid_after, _)| token.iat <= valid_after.as_secs())
    }

    /// Applies a revocation this replica just made durable, so it is in force
    /// here before the request that made it returns.
    pub(crate) fn apply_local(&self, entry: &Revocation) {
        self.denied.write().apply(entry);
    }

    /// Reads every log entry after the cursor, applies it, forgets expired
    /// entries and marks the state fresh. Returns how many entries it applied.
    pub(crate) async fn sync(&self, store: &dyn Store, now: UnixTime) -> Result<usize, StoreError> {
        let started = Instant::now();
        let mut applied = 0;
        loop {
            let cursor = self.denied.read().cursor;
            let page = store.revocations_after(cursor, now, PAGE).await?;
            let mut denied = self.denied.write();
            for (position, entry) in &page {
                // Two syncs can overlap (a notification during a poll); an
                // entry at or behind the cursor was applied already.
                if *position > denied.cursor {
                    denied.apply(entry);
                    denied.cursor = *position;
                    applied += 1;
                }
            }
            if page.len() < usize::try_from(PAGE).unwrap_or(usize::MAX) {
                denied.prune(now);
                break;
            }
        }
        // Fresh as of when the read began: anything committed before then is in.
        *self.synced_at.lock() = Some(started);
        Ok(applied)
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
        let mut denied = Denied::default();
        denied.apply(&entry(RevocationKind::Session, "s", 10));
        denied.prune(UnixTime::from_secs(109));
        assert!(denied.sessions.contains_key("s"));
        denied.prune(UnixTime::from_secs(110));
        assert!(denied.sessions.is_empty());
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
