//! Following the database: the background task that keeps this replica's
//! revocation state and key ring in step with what every replica wrote.
//! Woken at once by the change feed (PostgreSQL LISTEN/NOTIFY), and polling
//! on a timer as the backstop, so a missed notification delays a change by
//! at most one poll interval.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicI64, Ordering},
    },
    time::Duration,
};

use tokio::time::{Instant, MissedTickBehavior, interval_at};

use crate::{
    keys::KeyRing,
    model::Clock,
    revocation::RevocationState,
    store::{Change, ChangeFeed, Store, StoreError},
};

/// How long to wait for the LISTEN connection before polling on without it.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(2);

/// How often to follow, and how often to re-read keys without a notification.
#[derive(Debug, Clone, Copy)]
pub struct FollowSettings {
    /// Backstop poll of the revocation log.
    pub poll_interval: Duration,
    /// Backstop re-read of the signing keys.
    pub key_refresh_interval: Duration,
}

/// Whether this replica's clock agrees with the database's: the one clock
/// every replica shares. Tokens a replica signs, and expiries it judges,
/// are only right while the two agree within the verification leeway.
#[derive(Debug)]
pub(crate) struct ClockCheck {
    tolerance: Duration,
    in_step: AtomicBool,
    /// The last measured difference, replica minus database, milliseconds.
    skew_ms: AtomicI64,
}

impl ClockCheck {
    pub(crate) fn new(tolerance: Duration) -> Self {
        Self {
            tolerance,
            in_step: AtomicBool::new(true),
            skew_ms: AtomicI64::new(0),
        }
    }

    /// False while the last measurement was out of tolerance.
    pub(crate) fn is_in_step(&self) -> bool {
        self.in_step.load(Ordering::Relaxed)
    }

    /// Records a measurement; logs when the replica leaves or rejoins step.
    fn record(&self, skew_ms: i64) {
        self.skew_ms.store(skew_ms, Ordering::Relaxed);
        let tolerance = i64::try_from(self.tolerance.as_millis()).unwrap_or(i64::MAX);
        let in_step = skew_ms.abs() <= tolerance;
        if self.in_step.swap(in_step, Ordering::Relaxed) != in_step {
            if in_step {
                tracing::info!(
                    skew_ms,
                    "this replica's clock is back in step with the database's"
                );
            } else {
                tracing::warn!(
                    skew_ms,
                    tolerance_ms = tolerance,
                    "this replica's clock differs from the database's by more than the leeway: \
                     reporting NOT_SERVING until it is back in step (check NTP)"
                );
            }
        }
    }
}

/// Keeps a replica's in-memory state in step with the database.
pub(crate) struct DatabaseFollower {
    /// Source of truth.
    pub(crate) store: Arc<dyn Store>,
    /// Updated from the revocation log.
    pub(crate) revocations: Arc<RevocationState>,
    /// Updated from the signing keys table.
    pub(crate) keys: Arc<KeyRing>,
    /// Wall-clock time for expiry decisions.
    pub(crate) clock: Arc<dyn Clock>,
    /// Compared with the database's clock at every poll.
    pub(crate) clock_check: Arc<ClockCheck>,
    /// Intervals.
    pub(crate) settings: FollowSettings,
}

impl DatabaseFollower {
    /// Runs until the task is aborted.
    ///
    /// Revocation syncs run in a task of their own, woken through a
    /// [`tokio::sync::Notify`]: any number of notifications arriving during
    /// a sync cost one more sync, not one each, and reading the feed never
    /// waits for a sync.
    pub(crate) async fn run(self) {
        let wake = Arc::new(tokio::sync::Notify::new());
        // Aborted with this task, when dropped.
        let _syncer = {
            let (wake, revocations, store, clock) = (
                Arc::clone(&wake),
                Arc::clone(&self.revocations),
                Arc::clone(&self.store),
                Arc::clone(&self.clock),
            );
            crate::background::Background(tokio::spawn(async move {
                let mut failing_since: Option<tokio::time::Instant> = None;
                loop {
                    wake.notified().await;
                    match revocations.sync(&*store, clock.now()).await {
                        Ok(_) => {
                            if let Some(since) = failing_since.take() {
                                tracing::info!(
                                    down_for_ms = since.elapsed().as_millis(),
                                    "the revocation log is readable again: following the database"
                                );
                            }
                        }
                        Err(e) => {
                            failing_since.get_or_insert_with(tokio::time::Instant::now);
                            tracing::warn!(error = %e, "cannot read the revocation log");
                        }
                    }
                }
            }))
        };
        self.follow(&wake).await;
    }

    async fn follow(&self, sync: &tokio::sync::Notify) {
        // The first ticks are one period out: start-up has just loaded keys
        // and read the log.
        let mut poll = every(self.settings.poll_interval);
        let mut key_refresh = every(self.settings.key_refresh_interval);
        let mut feed: Option<Box<dyn ChangeFeed>> = None;
        // Whether the backend has a feed at all (SQLite does not).
        let mut feed_supported = true;

        loop {
            if feed.is_none() && feed_supported {
                // Bounded, so an unreachable database cannot stall polling.
                match tokio::time::timeout(LISTEN_TIMEOUT, self.store.change_feed()).await {
                    Ok(Ok(Some(f))) => {
                        feed = Some(f);
                        // Anything committed while we were not listening.
                        sync.notify_one();
                        self.reload_keys().await;
                    }
                    Ok(Ok(None)) => feed_supported = false,
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "cannot listen for changes; polling only");
                    }
                    Err(_) => tracing::warn!("listening for changes timed out; polling only"),
                }
            }
            tokio::select! {
                _ = poll.tick() => {
                    sync.notify_one();
                    self.check_clock().await;
                }
                _ = key_refresh.tick() => self.reload_keys().await,
                change = next_change(&mut feed) => match change {
                    Ok(Change::Revocations) => sync.notify_one(),
                    Ok(Change::Keys) => self.reload_keys().await,
                    Ok(Change::Unknown) => {
                        sync.notify_one();
                        self.reload_keys().await;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "change feed lost; reconnecting at the next poll");
                        feed = None;
                    }
                },
            }
        }
    }

    async fn check_clock(&self) {
        let before = self.clock.now_ms();
        if let Ok(database) = self.store.database_time_ms().await {
            // Against the middle of the round trip.
            let local = before + (self.clock.now_ms() - before) / 2;
            self.clock_check.record(local - database);
        }
    }

    async fn reload_keys(&self) {
        if let Err(e) = self.keys.reload(&*self.store, self.clock.now()).await {
            tracing::warn!(error = %e, "cannot reload signing keys");
        }
    }
}

fn every(period: Duration) -> tokio::time::Interval {
    let mut ticks = interval_at(Instant::now() + period, period);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ticks
}

/// The next change from the feed, or never when there is no feed.
async fn next_change(feed: &mut Option<Box<dyn ChangeFeed>>) -> Result<Change, StoreError> {
    match feed {
        Some(feed) => feed.next().await,
        None => std::future::pending().await,
    }
}
