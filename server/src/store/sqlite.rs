//! SQLite: the embedded single-node default. WAL journal, full fsync on
//! commit (nothing acknowledged is lost on a crash), and a busy timeout so
//! concurrent writers queue instead of failing.

use std::time::Duration;

use async_trait::async_trait;
use sqlx::{AnyConnection, AnyPool, Connection, Executor, any::AnyPoolOptions, migrate::Migrator};

use super::{Change, ChangeFeed, StoreError};

/// How often the change feed asks whether another connection committed.
const DATA_VERSION_POLL: Duration = Duration::from_millis(250);

/// The schema, compiled into the binary.
pub(super) static MIGRATOR: Migrator = sqlx::migrate!("migrations/sqlite");

pub(super) async fn pool(url: &str, max_connections: u32) -> Result<AnyPool, StoreError> {
    sqlx::any::install_default_drivers();
    Ok(AnyPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .after_connect(|conn, _meta| {
            Box::pin(async move {
                conn.execute(
                    "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
                     PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 10000;",
                )
                .await?;
                Ok(())
            })
        })
        .connect(url)
        .await?)
}

/// Changes made by other processes (`tessera keys rotate`, `tessera user
/// disable`) and other connections: `PRAGMA data_version` on a connection of
/// its own changes whenever any other connection commits.
pub(super) struct SqliteChangeFeed {
    conn: AnyConnection,
    version: i64,
    /// Kept here, not in `next`'s future: the follower drops that future
    /// whenever another of its timers fires first, and `Interval::tick` is
    /// the cancel-safe way to keep time across that.
    ticks: tokio::time::Interval,
}

pub(super) async fn watch(url: &str) -> Result<SqliteChangeFeed, StoreError> {
    let mut conn = AnyConnection::connect(url).await?;
    let version = data_version(&mut conn).await?;
    let mut ticks = tokio::time::interval(DATA_VERSION_POLL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    Ok(SqliteChangeFeed {
        conn,
        version,
        ticks,
    })
}

async fn data_version(conn: &mut AnyConnection) -> Result<i64, StoreError> {
    Ok(sqlx::query_scalar::<_, i64>("PRAGMA data_version")
        .fetch_one(conn)
        .await?)
}

#[async_trait]
impl ChangeFeed for SqliteChangeFeed {
    async fn next(&mut self) -> Result<Change, StoreError> {
        loop {
            self.ticks.tick().await;
            let version = data_version(&mut self.conn).await?;
            if version != self.version {
                self.version = version;
                // It does not say what changed: re-read revocations and keys.
                return Ok(Change::Unknown);
            }
        }
    }
}
