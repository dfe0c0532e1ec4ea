//! Slowing credential guessing without locking anyone out (OWASP
//! authentication cheat sheet): failures are counted per account *and*
//! peer address, and per peer across accounts; past a few free failures
//! each further one doubles a delay during which that pair (or peer) is
//! answered at once, without hashing. The real user, coming from another
//! address, is never delayed by an attack on their account; one address
//! cannot have more than a few logins hashing or queued for hashing (the
//! rest wait their turn in a line of their own, so a busy client is served
//! in order rather than refused, and is judged again when its turn comes),
//! so it cannot fill the hashing queue either.

use std::{collections::HashMap, net::IpAddr, sync::Arc, time::Duration};

use parking_lot::Mutex;
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore},
    time::Instant,
};

/// Throttling thresholds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThrottleSettings {
    /// Failures for one account from one address before delays start.
    pub failures_before_delay: u32,
    /// Failures from one address, any account, before delays start.
    pub peer_failures_before_delay: u32,
    /// The longest delay.
    pub max_delay: Duration,
    /// Password logins one address may have hashing or queued for hashing
    /// at once; more wait their turn behind them (up to 16 times this).
    pub max_in_flight_per_peer: usize,
}

impl Default for ThrottleSettings {
    fn default() -> Self {
        Self {
            failures_before_delay: 5,
            peer_failures_before_delay: 50,
            max_delay: Duration::from_secs(15 * 60),
            max_in_flight_per_peer: 16,
        }
    }
}

/// Logins one address may have waiting for one of its in-flight slots,
/// times [`ThrottleSettings::max_in_flight_per_peer`]; past that it is
/// refused as busy.
const WAITING_PER_SLOT: usize = 16;

/// Records kept per map before quiet ones are forgotten early.
const MAX_TRACKED: usize = 100_000;

/// Why a login was refused before any credential was checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Too many recent failures: retry after this long.
    Delayed(Duration),
    /// Too many logins in flight from this address.
    Busy,
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
    blocked_until: Option<Instant>,
}

impl Failures {
    fn blocked(&self, now: Instant) -> Option<Duration> {
        self.blocked_until
            .filter(|until| *until > now)
            .map(|until| until - now)
    }

    /// Counts a failure; past `free` failures, starts a delay that doubles
    /// with each further one. Returns the delay started, if any.
    fn fail(&mut self, now: Instant, free: u32, max: Duration) -> Option<Duration> {
        self.count = self.count.saturating_add(1);
        self.last = now;
        let over = self.count.checked_sub(free)?.checked_sub(1)?;
        let delay = Duration::from_secs(1u64 << over.min(20)).min(max);
        self.blocked_until = Some(now + delay);
        Some(delay)
    }

    /// Quiet for twice the longest delay: nothing worth remembering.
    fn forgotten(&self, now: Instant, max: Duration) -> bool {
        now.duration_since(self.last) > max * 2
    }
}

#[derive(Debug, Default)]
struct State {
    accounts: HashMap<(String, IpAddr), Failures>,
    peers: HashMap<IpAddr, Failures>,
    /// Per address: permits for logins hashing or queued for hashing.
    in_flight: HashMap<IpAddr, Arc<Semaphore>>,
}

/// The throttle shared by every login on this replica.
#[derive(Debug, Default)]
pub(crate) struct LoginThrottle {
    settings: ThrottleSettings,
    state: Mutex<State>,
}

/// A login admitted; its in-flight slot, if it took one, is given back
/// when dropped.
#[derive(Debug)]
pub(crate) struct Admitted<'a> {
    throttle: &'a LoginThrottle,
    slot: Option<(IpAddr, OwnedSemaphorePermit)>,
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        let Some((peer, permit)) = self.slot.take() else {
            return;
        };
        drop(permit);
        let mut state = self.throttle.state.lock();
        // Forget the address's line once nobody holds or waits on it (each
        // holder and waiter keeps a reference; the map keeps one).
        if state
            .in_flight
            .get(&peer)
            .is_some_and(|line| Arc::strong_count(line) == 1)
        {
            state.in_flight.remove(&peer);
        }
    }
}

impl LoginThrottle {
    pub(crate) fn new(settings: ThrottleSettings) -> Self {
        Self {
            settings,
            state: Mutex::default(),
        }
    }

    /// Lets a login for `account` from `peer` go ahead, or says why not. A
    /// login that `hashes` (a password: argon2 is what an address must not
    /// monopolise) first waits for one of the address's in-flight slots,
    /// and is judged again when it gets one; a client secret is checked
    /// with one SHA-256 and takes none.
    pub(crate) async fn admit(
        &self,
        account: &str,
        peer: IpAddr,
        hashes: bool,
    ) -> Result<Admitted<'_>, Refusal> {
        self.check_delays(account, peer)?;
        if !hashes {
            return Ok(Admitted {
                throttle: self,
                slot: None,
            });
        }
        let per_peer = self.settings.max_in_flight_per_peer;
        let line = {
            let mut state = self.state.lock();
            let line = state
                .in_flight
                .entry(peer)
                .or_insert_with(|| Arc::new(Semaphore::new(per_peer)));
            // Holders and waiters each hold a reference; the map one more.
            if Arc::strong_count(line) > per_peer * (1 + WAITING_PER_SLOT) {
                return Err(Refusal::Busy);
            }
            Arc::clone(line)
        };
        let permit = line
            .acquire_owned()
            .await
            .expect("an address's semaphore is never closed");
        let admitted = Admitted {
            throttle: self,
            slot: Some((peer, permit)),
        };
        // Failures may have piled up while this login waited.
        self.check_delays(account, peer)?;
        Ok(admitted)
    }

    /// Refuses while `peer`, or `account` from `peer`, is delayed.
    fn check_delays(&self, account: &str, peer: IpAddr) -> Result<(), Refusal> {
        let now = Instant::now();
        let state = self.state.lock();
        let delayed = [
            state.peers.get(&peer).and_then(|f| f.blocked(now)),
            state
                .accounts
                .get(&(account.to_owned(), peer))
                .and_then(|f| f.blocked(now)),
        ];
        match delayed.into_iter().flatten().max() {
            Some(wait) => Err(Refusal::Delayed(wait)),
            None => Ok(()),
        }
    }

    /// Counts a failed login; returns the delay it started, if any.
    pub(crate) fn failed(&self, account: &str, peer: IpAddr) -> Option<Duration> {
        let now = Instant::now();
        let s = &self.settings;
        let mut state = self.state.lock();
        state.forget_quiet(now, s.max_delay);
        let fresh = Failures {
            count: 0,
            last: now,
            blocked_until: None,
        };
        let pair = state
            .accounts
            .entry((account.to_owned(), peer))
            .or_insert(fresh)
            .fail(now, s.failures_before_delay, s.max_delay);
        let by_peer = state.peers.entry(peer).or_insert(fresh).fail(
            now,
            s.peer_failures_before_delay,
            s.max_delay,
        );
        pair.max(by_peer)
    }

    /// A successful login clears that account's failures from that address
    /// (not the address's failures across accounts: one good password must
    /// not buy an address more guesses at others).
    pub(crate) fn succeeded(&self, account: &str, peer: IpAddr) {
        self.state
            .lock()
            .accounts
            .remove(&(account.to_owned(), peer));
    }
}

impl State {
    fn forget_quiet(&mut self, now: Instant, max: Duration) {
        if self.accounts.len() >= MAX_TRACKED {
            self.accounts.retain(|_, f| !f.forgotten(now, max));
        }
        if self.peers.len() >= MAX_TRACKED {
            self.peers.retain(|_, f| !f.forgotten(now, max));
        }
        // Under a flood of distinct addresses, keep only active delays:
        // memory stays bounded, and nobody is locked out by being forgotten.
        if self.accounts.len() >= MAX_TRACKED {
            self.accounts.retain(|_, f| f.blocked(now).is_some());
        }
        if self.peers.len() >= MAX_TRACKED {
            self.peers.retain(|_, f| f.blocked(now).is_some());
        }
        // Lines left behind by logins cancelled while waiting.
        if self.in_flight.len() >= MAX_TRACKED {
            self.in_flight.retain(|_, line| Arc::strong_count(line) > 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[tokio::test(start_paused = true)]
    async fn guessing_one_account_from_one_address_is_delayed_exponentially() {
        let throttle = LoginThrottle::new(ThrottleSettings::default());
        for _ in 0..5 {
            drop(throttle.admit("alice", addr(1), true).await.unwrap());
            assert_eq!(throttle.failed("alice", addr(1)), None);
        }
        assert_eq!(
            throttle.failed("alice", addr(1)),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            throttle.admit("alice", addr(1), true).await.unwrap_err(),
            Refusal::Delayed(Duration::from_secs(1))
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        drop(throttle.admit("alice", addr(1), true).await.unwrap());
        assert_eq!(
            throttle.failed("alice", addr(1)),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            throttle.failed("alice", addr(1)),
            Some(Duration::from_secs(4))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_real_user_from_another_address_is_never_delayed() {
        let throttle = LoginThrottle::new(ThrottleSettings::default());
        for _ in 0..30 {
            throttle.failed("alice", addr(1));
        }
        assert!(throttle.admit("alice", addr(1), true).await.is_err());
        assert!(throttle.admit("alice", addr(2), true).await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn spraying_many_accounts_from_one_address_is_delayed_too() {
        let throttle = LoginThrottle::new(ThrottleSettings::default());
        for n in 0..50 {
            assert_eq!(throttle.failed(&format!("user{n}"), addr(1)), None);
        }
        assert!(throttle.failed("user50", addr(1)).is_some());
        assert!(matches!(
            throttle.admit("someone-new", addr(1), true).await,
            Err(Refusal::Delayed(_))
        ));
        assert!(throttle.admit("someone-new", addr(2), true).await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn success_clears_the_pair_and_delays_are_capped() {
        let throttle = LoginThrottle::new(ThrottleSettings::default());
        for _ in 0..40 {
            throttle.failed("alice", addr(1));
        }
        assert_eq!(
            throttle.failed("alice", addr(1)),
            Some(Duration::from_secs(15 * 60))
        );
        throttle.succeeded("alice", addr(1));
        assert_eq!(throttle.failed("alice", addr(1)), None);
    }

    #[tokio::test(start_paused = true)]
    async fn one_address_waits_its_turn_beyond_its_share_and_is_judged_again() {
        let throttle = LoginThrottle::new(ThrottleSettings {
            max_in_flight_per_peer: 2,
            ..ThrottleSettings::default()
        });
        let a = throttle.admit("alice", addr(1), true).await.unwrap();
        let _b = throttle.admit("bob", addr(1), true).await.unwrap();
        // A third from the same address waits; another address does not.
        let third = tokio::time::timeout(
            Duration::from_secs(1),
            throttle.admit("carol", addr(1), true),
        )
        .await;
        assert!(third.is_err(), "a third login from one address went ahead");
        assert!(throttle.admit("carol", addr(2), true).await.is_ok());
        // A client secret costs no argon2 and takes no slot.
        assert!(throttle.admit("client:ci", addr(1), false).await.is_ok());
        drop(a);
        assert!(throttle.admit("carol", addr(1), true).await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_login_is_refused_when_its_address_was_delayed_meanwhile() {
        let throttle = LoginThrottle::new(ThrottleSettings {
            max_in_flight_per_peer: 1,
            ..ThrottleSettings::default()
        });
        let first = throttle.admit("alice", addr(1), true).await.unwrap();
        let waiting = throttle.admit("alice", addr(1), true);
        tokio::pin!(waiting);
        assert!(
            tokio::time::timeout(Duration::from_millis(1), &mut waiting)
                .await
                .is_err()
        );
        for _ in 0..6 {
            throttle.failed("alice", addr(1));
        }
        drop(first);
        assert!(matches!(waiting.await, Err(Refusal::Delayed(_))));
    }

    #[tokio::test(start_paused = true)]
    async fn an_address_with_too_many_waiting_is_refused_as_busy() {
        let throttle = LoginThrottle::new(ThrottleSettings {
            max_in_flight_per_peer: 1,
            ..ThrottleSettings::default()
        });
        let _held = throttle.admit("alice", addr(1), true).await.unwrap();
        let waiting: Vec<_> = (0..WAITING_PER_SLOT)
            .map(|_| {
                let throttle = &throttle;
                Box::pin(async move { throttle.admit("alice", addr(1), true).await.map(drop) })
            })
            .collect();
        let mut waiting = waiting;
        for w in &mut waiting {
            assert!(
                tokio::time::timeout(Duration::from_millis(1), w)
                    .await
                    .is_err()
            );
        }
        assert_eq!(
            throttle.admit("alice", addr(1), true).await.unwrap_err(),
            Refusal::Busy
        );
        assert!(throttle.admit("alice", addr(2), true).await.is_ok());
    }
}
