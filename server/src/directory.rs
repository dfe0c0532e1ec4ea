//! Every client, held in memory, so a client login (a SHA-256 and a
//! signature) does not wait for a database read.
//!
//! The copy is re-read when the store's directory version moves (a trigger
//! moves it with every change to a client, however made), checked every
//! [`CHECK_EVERY`]. A copy not confirmed current within [`MAX_AGE`] is not
//! used: lookups go to the database, as they do for an id the copy does
//! not hold (a client added since), and a login the copy refuses is
//! checked again against the database (a new secret, an enabled client),
//! so a change that admits works at once. A change that refuses (a
//! disable, a rotated-out secret) reaches every replica's logins within
//! [`MAX_AGE`]; the admin commands revoke the client's tokens issued up to
//! that long after the change (see [`revocation_cutoff`]), so no token
//! issued from a stale copy outlives it.

use std::{collections::HashMap, sync::Arc, time::Duration};

use parking_lot::RwLock;
use tokio::time::Instant;

use crate::{
    model::{ClientId, UnixTime},
    store::{ClientRecord, Store, StoreError},
};

/// How often the directory version is read (a one-row read).
pub(crate) const CHECK_EVERY: Duration = Duration::from_millis(100);

/// The oldest confirmation a lookup trusts.
pub(crate) const MAX_AGE: Duration = Duration::from_millis(400);

/// The `issued up to` of the subject revocation that ends a client's
/// tokens when it is changed at `now_ms` (milliseconds since the epoch):
/// tokens a replica may still issue from its copy, for up to [`MAX_AGE`],
/// are ended too.
pub(crate) fn revocation_cutoff(now_ms: i64) -> UnixTime {
    let max_age = i64::try_from(MAX_AGE.as_millis()).unwrap_or(i64::MAX);
    UnixTime::from_secs(now_ms.saturating_add(max_age).div_euclid(1000))
}

#[derive(Debug)]
struct Snapshot {
    /// The directory version this copy was read at.
    version: i64,
    clients: HashMap<String, ClientRecord>,
    /// When the version was last read and found to be this one.
    confirmed: Instant,
}

/// The in-memory clients.
#[derive(Debug)]
pub(crate) struct ClientDirectory {
    copy: RwLock<Option<Snapshot>>,
}

impl ClientDirectory {
    /// An empty directory: every lookup goes to the database until the
    /// first [`Self::refresh`].
    pub(crate) fn new() -> Self {
        Self {
            copy: RwLock::new(None),
        }
    }

    /// Client `id` from the copy, if the copy is confirmed current and
    /// holds it; `None` sends the caller to the database.
    pub(crate) fn cached(&self, id: &ClientId) -> Option<ClientRecord> {
        let copy = self.copy.read();
        let copy = copy.as_ref()?;
        if copy.confirmed.elapsed() > MAX_AGE {
            return None;
        }
        copy.clients.get(id.as_str()).cloned()
    }

    /// Reads the directory version, and every client if it moved.
    pub(crate) async fn refresh(&self, store: &dyn Store) -> Result<(), StoreError> {
        let started = Instant::now();
        let version = store.directory_version().await?;
        let current = self.copy.read().as_ref().map(|c| c.version);
        if current == Some(version) {
            if let Some(copy) = &mut *self.copy.write() {
                copy.confirmed = started;
            }
            return Ok(());
        }
        let clients = store
            .clients()
            .await?
            .into_iter()
            .map(|c| (c.id.as_str().to_owned(), c))
            .collect();
        *self.copy.write() = Some(Snapshot {
            version,
            clients,
            confirmed: started,
        });
        Ok(())
    }

    /// Refreshes every [`CHECK_EVERY`] until aborted. A failure leaves the
    /// copy to age out (lookups then go to the database, which reports the
    /// outage); the revocation follower logs database outages.
    pub(crate) async fn follow(self: Arc<Self>, store: Arc<dyn Store>) {
        let mut tick = tokio::time::interval(CHECK_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = self.refresh(&*store).await {
                tracing::debug!(error = %e, "cannot read the client directory version");
            }
        }
    }
}
