//! PostgreSQL: connection pool, migrations and the LISTEN/NOTIFY change feed.

use std::time::Duration;

use async_trait::async_trait;
use sqlx::{AnyPool, Connection, any::AnyPoolOptions, migrate::Migrator, postgres::PgListener};

use super::{Change, ChangeFeed, StoreError};

/// The schema, compiled into the binary so a deployed `tessera` needs no
/// files beside it.
pub(super) static MIGRATOR: Migrator = sqlx::migrate!("migrations/postgres");

/// Channel notified (by a trigger) when revocation log entries commit.
const REVOCATIONS_CHANNEL: &str = "tessera_revocations";
/// Channel notified (by a trigger) when a signing key is added.
const KEYS_CHANNEL: &str = "tessera_keys";

pub(super) async fn pool(url: &str, max_connections: u32) -> Result<AnyPool, StoreError> {
    sqlx::any::install_default_drivers();
    // One connection first, on its own: an unreachable server is then named
    // with the real reason, where the pool would only say it timed out.
    let target = target(url);
    let first = tokio::time::timeout(CONNECT_TIMEOUT, sqlx::PgConnection::connect(url))
        .await
        .map_err(|_| StoreError::Connect {
            target: target.clone(),
            source: sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer within {} s", CONNECT_TIMEOUT.as_secs()),
            )),
        })?
        .map_err(|source| StoreError::Connect { target, source })?;
    drop(first.close().await);
    Ok(AnyPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(CONNECT_TIMEOUT)
        .connect(url)
        .await?)
}

/// How long to wait for a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// "PostgreSQL at HOST:PORT, database NAME", for errors (never the password).
fn target(url: &str) -> String {
    match url.parse::<sqlx::postgres::PgConnectOptions>() {
        Ok(o) => format!(
            "PostgreSQL at {}:{}, database {}",
            o.get_host(),
            o.get_port(),
            o.get_database().unwrap_or("(default)")
        ),
        Err(_) => "PostgreSQL (unparsable URL)".to_owned(),
    }
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
        Ok(match self.listener.try_recv().await? {
            Some(n) => match n.channel() {
                REVOCATIONS_CHANNEL => Change::Revocations,
                KEYS_CHANNEL => Change::Keys,
                _ => Change::Unknown,
            },
            None => Change::Unknown,
        })
    }
}
