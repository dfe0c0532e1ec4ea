//! Clients remembered in memory as logins look them up, so a client login
//! (a SHA-256 and a signature) does not wait for a database read.
//!
//! The clients logins used most are held, up to [`CAPACITY_BYTES`]
//! (quick_cache): memory does not grow with the number of clients, and a
//! client not held is read by its id, one primary-key read. Everything
//! held is dropped when the store's directory version moves (a trigger
//! moves it with every change to a client, however made), checked every
//! [`CHECK_EVERY`]: each client is read again at its next login, so a
//! change costs each replica one read per client in use, not a read of
//! every client. A record read from the database is remembered only when
//! no move was seen since the read began, so a read that may have returned
//! the record from before a change cannot outlive the drop.
//!
//! What is held is not used unless the version was confirmed within
//! [`MAX_AGE`]: lookups go to the database, as they do for a client not
//! held, and a login the held copy refuses is checked again against the
//! database (a new secret, an enabled client), so a change that admits
//! works at once. A change that refuses (a disable, a rotated-out secret)
//! reaches every replica's logins within [`MAX_AGE`]; the admin commands
//! revoke the client's tokens issued up to that long after the change (see
//! [`revocation_cutoff`]), so no token issued from a stale copy outlives it.

use std::{sync::Arc, time::Duration};

use parking_lot::RwLock;
use quick_cache::{Weighter, sync::Cache};
use tokio::time::Instant;

use crate::{
    model::{ClientId, UnixTime},
    store::{ClientCredential, ClientRecord, Store, StoreError},
};

/// How often the directory version is read (a one-row read).
pub(crate) const CHECK_EVERY: Duration = Duration::from_millis(100);

/// The oldest confirmation a lookup trusts.
pub(crate) const MAX_AGE: Duration = Duration::from_millis(400);

/// What the held clients may take, in (estimated) bytes: about 8,000
/// clients of a few scopes each.
const CAPACITY_BYTES: u64 = 8 * 1024 * 1024;

/// A typical record's weight, for sizing the cache's tables.
const TYPICAL_RECORD_BYTES: u64 = 1_000;

/// The `issued up to` of the subject revocation that ends a client's
/// tokens when it is changed at `now_ms` (milliseconds since the epoch):
/// tokens a replica may still issue from its copy, for up to [`MAX_AGE`],
/// are ended too.
pub(crate) fn revocation_cutoff(now_ms: i64) -> UnixTime {
    let max_age = i64::try_from(MAX_AGE.as_millis()).unwrap_or(i64::MAX);
    UnixTime::from_secs(now_ms.saturating_add(max_age).div_euclid(1000))
}

#[derive(Debug, Clone, Copy)]
struct ByEstimatedSize;

impl Weighter<ClientId, Arc<ClientRecord>> for ByEstimatedSize {
    fn weight(&self, _: &ClientId, record: &Arc<ClientRecord>) -> u64 {
        estimated_bytes(record)
    }
}

/// What a held record takes: the record in its `Arc`, each string it owns
/// (a heap allocation each: glibc's 16 bytes on at least 16), the id twice
/// (the record's and the cache key), the scope and role sets' B-tree
/// leaves (eleven names each), the audience list, and the cache's slot.
fn estimated_bytes(r: &ClientRecord) -> u64 {
    const PER_ALLOCATION: usize = 16;
    let string = |s: &str| s.len().max(16) + PER_ALLOCATION;
    let set = |names: usize| names.div_ceil(11) * (11 * size_of::<String>() + 32);
    let credential = match &r.credential {
        ClientCredential::TlsSubject(s) => string(s),
        ClientCredential::Secret(_) | ClientCredential::TlsCertificate(_) => 0,
    };
    let (scopes, roles) = (r.scopes.iter().count(), r.roles.iter().count());
    let names = r
        .scopes
        .iter()
        .chain(r.roles.iter())
        .map(string)
        .sum::<usize>()
        + r.audiences
            .iter()
            .map(|a| string(a.as_str()))
            .sum::<usize>();
    let bytes = size_of::<ClientRecord>()
        + 2 * size_of::<usize>()
        + PER_ALLOCATION
        + 2 * string(r.id.as_str())
        + credential
        + names
        + set(scopes)
        + set(roles)
        + r.audiences.len() * size_of::<String>()
        + PER_ALLOCATION
        + 64;
    bytes as u64
}

/// What is held, as of one directory version.
#[derive(Debug)]
struct Held {
    /// The directory version the held records are current for (`None`
    /// before the first read).
    version: Option<i64>,
    /// Moves with every version move seen: a read begun at another
    /// generation is not remembered.
    generation: u64,
    /// When the version was last read and found to be this one.
    confirmed: Option<Instant>,
    clients: Cache<ClientId, Arc<ClientRecord>, ByEstimatedSize>,
}

/// A database read of a client begun at one generation: what
/// [`ClientDirectory::remember`] needs to know whether it is still current.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReadBegun(u64);

/// The clients held in memory.
#[derive(Debug)]
pub(crate) struct ClientDirectory {
    held: RwLock<Held>,
}

impl ClientDirectory {
    /// An empty directory, not yet confirmed: every lookup goes to the
    /// database until the first [`Self::refresh`].
    pub(crate) fn new() -> Self {
        Self {
            held: RwLock::new(Held {
                version: None,
                generation: 0,
                confirmed: None,
                clients: Cache::with_weighter(
                    usize::try_from(CAPACITY_BYTES / TYPICAL_RECORD_BYTES).unwrap_or(usize::MAX),
                    CAPACITY_BYTES,
                    ByEstimatedSize,
                ),
            }),
        }
    }

    /// Client `id`, if it is held and the version was confirmed within
    /// [`MAX_AGE`]; `None` sends the caller to the database (then
    /// [`Self::begin_read`] and [`Self::remember`]).
    pub(crate) fn cached(&self, id: &ClientId) -> Option<ClientRecord> {
        let held = self.held.read();
        if held.confirmed.is_none_or(|at| at.elapsed() > MAX_AGE) {
            return None;
        }
        held.clients.get(id).map(|r| ClientRecord::clone(&r))
    }

    /// Marks the start of a database read of a client, before it is sent.
    pub(crate) fn begin_read(&self) -> ReadBegun {
        ReadBegun(self.held.read().generation)
    }

    /// Holds `record`, read from the database in the read `begun`, unless
    /// a version move was seen since (the record may be from before it).
    pub(crate) fn remember(&self, begun: ReadBegun, record: ClientRecord) {
        let held = self.held.read();
        if held.generation == begun.0 {
            held.clients.insert(record.id.clone(), Arc::new(record));
        }
    }

    /// Reads the directory version: confirms what is held if it did not
    /// move, drops everything held if it did.
    pub(crate) async fn refresh(&self, store: &dyn Store) -> Result<(), StoreError> {
        let started = Instant::now();
        let version = store.directory_version().await?;
        let mut held = self.held.write();
        if held.version != Some(version) {
            held.version = Some(version);
            held.generation += 1;
            held.clients.clear();
        }
        held.confirmed = Some(started);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Audience, ScopeSet, SecretHash};

    fn client(id: &str, scopes: usize) -> ClientRecord {
        let scopes: Vec<String> = (0..scopes).map(|i| format!("scope.{i:02}")).collect();
        ClientRecord {
            id: ClientId::parse(id).unwrap(),
            credential: ClientCredential::Secret(SecretHash::of(id)),
            scopes: ScopeSet::parse_list(&scopes).unwrap(),
            audiences: vec![Audience::parse("billing").unwrap()],
            roles: ScopeSet::parse_list(&["reader"]).unwrap(),
            disabled: false,
            previous_secret: None,
        }
    }

    /// A fresh SQLite store holding clients `a` and `b`.
    async fn store() -> (tempfile::TempDir, Arc<dyn Store>) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
        let store = crate::store::connect(&url, 1, true).await.unwrap();
        for id in ["a", "b"] {
            store
                .insert_client(&client(id, 2), UnixTime::from_secs(1))
                .await
                .unwrap();
        }
        (dir, store)
    }

    /// What a login that misses does: read the client, then hold it.
    async fn read(directory: &ClientDirectory, store: &dyn Store, id: &str) {
        let begun = directory.begin_read();
        let record = store.find_client(&ClientId::parse(id).unwrap()).await;
        directory.remember(begun, record.unwrap().unwrap());
    }

    fn holds(directory: &ClientDirectory, id: &str) -> bool {
        directory.cached(&ClientId::parse(id).unwrap()).is_some()
    }

    #[tokio::test]
    async fn a_client_read_once_is_held_until_any_client_changes() {
        let (_dir, store) = store().await;
        let directory = ClientDirectory::new();
        directory.refresh(&*store).await.unwrap();
        assert!(!holds(&directory, "a"), "nothing is read in advance");
        read(&directory, &*store, "a").await;
        assert!(holds(&directory, "a"));
        assert!(!holds(&directory, "b"));
        directory.refresh(&*store).await.unwrap();
        assert!(holds(&directory, "a"), "kept while the version stands");

        // A change to another client drops what is held.
        store
            .insert_client(&client("c", 1), UnixTime::from_secs(2))
            .await
            .unwrap();
        assert!(holds(&directory, "a"), "until the version is read");
        directory.refresh(&*store).await.unwrap();
        assert!(!holds(&directory, "a"));
        read(&directory, &*store, "a").await;
        assert!(holds(&directory, "a"), "and held again once read");
    }

    #[tokio::test]
    async fn a_read_begun_before_a_change_is_seen_is_not_held() {
        let (_dir, store) = store().await;
        let directory = ClientDirectory::new();
        directory.refresh(&*store).await.unwrap();
        // The record is read, then another replica changes a client and
        // this one sees it before the record is remembered: the record
        // may be from before the change, so it is not held.
        let begun = directory.begin_read();
        let record = store
            .find_client(&ClientId::parse("a").unwrap())
            .await
            .unwrap()
            .unwrap();
        store
            .insert_client(&client("c", 1), UnixTime::from_secs(2))
            .await
            .unwrap();
        directory.refresh(&*store).await.unwrap();
        directory.remember(begun, record);
        assert!(!holds(&directory, "a"));
    }

    #[tokio::test]
    async fn nothing_is_used_before_the_version_is_first_read() {
        let (_dir, store) = store().await;
        let directory = ClientDirectory::new();
        read(&directory, &*store, "a").await;
        assert!(!holds(&directory, "a"));
    }

    #[test]
    fn the_held_clients_are_bounded_by_their_size_not_their_number() {
        let directory = ClientDirectory::new();
        for i in 0..40_000 {
            directory.remember(directory.begin_read(), client(&format!("c{i}"), 8));
        }
        let held = directory.held.read();
        let (count, weight) = (held.clients.len(), held.clients.weight());
        assert!(weight <= CAPACITY_BYTES, "{weight} bytes held");
        assert!((3_000..40_000).contains(&count), "{count} held");
        // The estimate is in the range of what a record really takes (a
        // record of eight scopes: about 1.3 KB of heap).
        let one = estimated_bytes(&client("c1", 8));
        assert!((900..2_000).contains(&one), "{one}");
        drop(held);
        let large = client("large", 64);
        assert!(estimated_bytes(&large) > 3 * one);
    }
}
