//! SQLite: the embedded single-node default. WAL journal, full fsync on
//! commit (nothing acknowledged is lost on a crash), and a busy timeout so
//! concurrent writers queue instead of failing.

use std::time::Duration;

use sqlx::{Executor, any::AnyPoolOptions};

use super::{Backend, StoreError, sql::SqlStore};

pub(super) async fn connect(url: &str, max_connections: u32) -> Result<SqlStore, StoreError> {
    sqlx::any::install_default_drivers();
    let pool = AnyPoolOptions::new()
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
        .await?;
    let migrator = super::embedded_migrator(&[(
        1,
        "init",
        include_str!("../../migrations/sqlite/0001_init.sql"),
    )]);
    Ok(SqlStore::new(pool, Backend::Sqlite, migrator, url))
}
