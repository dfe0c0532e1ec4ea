//! SQLite: the embedded single-node default. WAL journal, full fsync on
//! commit (nothing acknowledged is lost on a crash), and a busy timeout so
//! concurrent writers queue instead of failing.

use std::time::Duration;

use sqlx::{AnyPool, Executor, any::AnyPoolOptions, migrate::Migrator};

use super::StoreError;

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
