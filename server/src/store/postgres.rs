//! PostgreSQL: connection pool, migrations and the LISTEN/NOTIFY change feed.

use std::time::Duration;

use async_trait::async_trait;
use sqlx::{any::AnyPoolOptions, postgres::PgListener};

use super::{Backend, Change, ChangeFeed, StoreError, sql::SqlStore};

/// Channel notified (by a trigger) when revocation log entries commit.
pub(super) const REVOCATIONS_CHANNEL: &str = "tessera_revocations";
/// Channel notified (by a trigger) when a signing key is added.
pub(super) const KEYS_CHANNEL: &str = "tessera_keys";

pub(super) async fn connect(url: &str, max_connections: u32) -> Result<SqlStore, StoreError> {
    sqlx::any::install_default_drivers();
    let pool = AnyPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect(url)
        .await?;
    let migrator = super::embedded_migrator(&[(
        1,
        "init",
        include_str!("../../migrations/postgres/0001_init.sql"),
    )]);
    Ok(SqlStore::new(pool, Backend::Postgres, migrator, url))
}

/// A dedicated LISTEN connection.
pub(super) struct PgChangeFeed {
    listener: PgListener,
}

pub(super) async fn listen(url: &str) -> Result<PgChangeFeed, StoreError> {
    let mut listener = PgListener::connect(url).await?;
    listener
        .listen_all([REVOCATIONS_CHANNEL, KEYS_CHANNEL])
        .await?;
    Ok(PgChangeFeed { listener })
}

#[async_trait]
impl ChangeFeed for PgChangeFeed {
    async fn next(&mut self) -> Result<Change, StoreError> {
        // `try_recv` answers `None` when the connection dropped (it reconnects
        // on the next call): notifications may have been missed meanwhile.
        match self.listener.try_recv().await? {
            Some(n) => Ok(super::sql::change_for_channel(n.channel())),
            None => Ok(Change::Unknown),
        }
    }
}
