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
        .connect(&with_planner_settings(url))
        .await?)
}

/// Planner settings for every pooled connection. Each statement Tessera
/// sends starts from a key (a token's hash, a session id, a username), and
/// sqlx prepares it once per connection; after five runs PostgreSQL keeps a
/// generic plan built from the statistics of that moment. On a new database
/// those describe tiny tables, where a sequential scan, or a join started
/// from the smallest table, is cheapest, and the plan stays while the table
/// grows, until autovacuum next analyzes it: measured on a fresh database, a
/// refresh read every refresh token twice (850 refreshes/s instead of
/// 4,000, falling as the table grew). With sequential and bitmap scans and
/// hash and merge joins priced out, reads go through indexes by key, and
/// joins keep the tree written (which side drives a join is still the
/// planner's choice: a statement that must start from one table says so,
/// as the batched rotation does with a fenced lateral subquery). A
/// statement with no usable index still scans.
const PLANNER_SETTINGS: [(&str, &str); 5] = [
    ("enable_seqscan", "off"),
    ("enable_bitmapscan", "off"),
    ("enable_hashjoin", "off"),
    ("enable_mergejoin", "off"),
    ("join_collapse_limit", "1"),
];

/// `url` with [`PLANNER_SETTINGS`] added to its `options` (sqlx's `Any`
/// driver takes its PostgreSQL options from the URL alone).
fn with_planner_settings(url: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    let settings: Vec<String> = PLANNER_SETTINGS
        .iter()
        .map(|(name, value)| format!("options[{name}]={value}"))
        .collect();
    format!("{url}{separator}{}", settings.join("&"))
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

#[cfg(test)]
mod tests {
    use sqlx::{Executor, PgConnection, postgres::PgConnectOptions};

    use super::*;
    use crate::model::random_id;

    #[test]
    fn planner_settings_join_the_url_options() {
        for url in [
            "postgres://tessera@db.internal/tessera",
            "postgres://tessera@db.internal/tessera?sslmode=verify-full&options=-c%20work_mem%3D8MB",
        ] {
            let options: PgConnectOptions = with_planner_settings(url).parse().unwrap();
            let set = options.get_options().unwrap_or_default();
            assert!(
                set.contains("-c enable_seqscan=off") && set.contains("-c join_collapse_limit=1"),
                "{url}: {set}"
            );
            if url.contains("work_mem") {
                assert!(set.contains("-c work_mem=8MB"), "{set}");
                assert!(matches!(
                    options.get_ssl_mode(),
                    sqlx::postgres::PgSslMode::VerifyFull
                ));
            }
        }
    }

    /// The plans of the statements that run per refresh and of the prune,
    /// on a new database, as PostgreSQL caches them for a pooled connection
    /// once autovacuum has analyzed the still tiny tables: every read starts
    /// from an index condition (the refresh statements from the presented
    /// token's key), none reads a table or an index whole, so they stay cheap
    /// as the tables grow.
    #[tokio::test]
    async fn plans_made_on_tiny_tables_start_from_a_key() {
        let admin = std::env::var("TESSERA_TEST_DATABASE_URL").expect(
            "TESSERA_TEST_DATABASE_URL is not set: run the tests with scripts/test.sh, \
             which starts a throwaway PostgreSQL",
        );
        let name = format!(
            "tessera_plan_{}",
            random_id().to_lowercase().replace('-', "_")
        );
        let mut server = PgConnection::connect(&admin).await.unwrap();
        server
            .execute(format!(r#"CREATE DATABASE "{name}""#).as_str())
            .await
            .unwrap();
        let url = format!("{}/{name}", admin.rsplit_once('/').unwrap().0);

        let pool = pool(&url, 1).await.unwrap();
        MIGRATOR.run(&pool).await.unwrap();
        let mut conn = pool.acquire().await.unwrap();
        for sql in [
            "INSERT INTO users (id, username, password_hash, scopes, audiences, created_at) \
             VALUES ('u', 'u', 'x', '', '', 0)",
            "INSERT INTO sessions (sid, user_id, audience, created_at) \
             SELECT 's' || g, 'u', 'a', g FROM generate_series(1, 64) g",
            "INSERT INTO refresh_tokens (hash, sid, scopes, issued_at, expires_at) \
             SELECT sha256(g::text::bytea), 's' || (g % 64 + 1), '', 0, g \
             FROM generate_series(1, 128) g",
            "INSERT INTO revocation_log (kind, value, at, expires_at) \
             SELECT 'token', 'j' || g, 0, g FROM generate_series(1, 64) g",
            "ANALYZE",
            "SET plan_cache_mode = force_generic_plan",
        ] {
            sqlx::query(sql).execute(&mut *conn).await.unwrap();
        }
        let prune = super::super::sql::PRUNE;
        let statements = [
            (
                "rotation",
                super::super::sql::BATCH_ROTATION.clone(),
                r#"('[{"writer": 0, "presented": "AA==", "now": 0, "requested": "", "successor": "AQ==", "issued_at": 0, "expires_at": 0}]')"#,
                Some("refresh_tokens_pkey on refresh_tokens t"),
            ),
            (
                "find",
                format!(
                    "SELECT {} {}",
                    super::super::sql::REFRESH_TOKEN_COLUMNS,
                    super::super::sql::REFRESH_TOKEN_FROM
                ),
                "('\\x00')",
                Some("refresh_tokens_pkey on refresh_tokens t"),
            ),
            ("prune_revocations", prune[0].to_owned(), "(10, 16)", None),
            ("prune_tokens", prune[1].to_owned(), "(10, 16)", None),
            ("prune_sessions", prune[2].to_owned(), "(10, 16)", None),
        ];
        for (statement, sql, arguments, first) in statements {
            sqlx::query(&format!("PREPARE {statement} AS {sql}"))
                .execute(&mut *conn)
                .await
                .unwrap();
            let plan: Vec<String> =
                sqlx::query_scalar(&format!("EXPLAIN EXECUTE {statement}{arguments}"))
                    .fetch_all(&mut *conn)
                    .await
                    .unwrap();
            let scans = scans(&plan);
            for (scan, condition) in &scans {
                assert!(
                    condition.is_some(),
                    "{statement} reads all of `{scan}`:\n{}",
                    plan.join("\n")
                );
            }
            if let Some(first) = first {
                assert!(
                    scans[0].0.contains(first),
                    "{statement} starts elsewhere:\n{}",
                    plan.join("\n")
                );
            }
        }
        drop(conn);
        pool.close().await;
        server
            .execute(format!(r#"DROP DATABASE "{name}" WITH (FORCE)"#).as_str())
            .await
            .unwrap();
    }

    /// The reads of a plan (scans of a table or an index), in order, each
    /// with the index or recheck condition that bounds it (`None`: it reads
    /// the whole relation).
    fn scans(plan: &[String]) -> Vec<(String, Option<String>)> {
        const READS: [&str; 5] = [
            "Seq Scan",
            "Index Scan",
            "Index Only Scan",
            "Bitmap Heap Scan",
            "Bitmap Index Scan",
        ];
        let mut scans: Vec<(String, Option<String>)> = Vec::new();
        let mut in_scan = false;
        for (i, line) in plan.iter().enumerate() {
            let text = line.trim_start();
            if i == 0 || text.starts_with("->") {
                let node = text.trim_start_matches("->").trim_start();
                in_scan = READS.iter().any(|r| node.starts_with(r));
                if in_scan {
                    scans.push((node.to_owned(), None));
                }
            } else if in_scan
                && (text.starts_with("Index Cond:") || text.starts_with("Recheck Cond:"))
            {
                scans.last_mut().expect("a scan").1 = Some(text.to_owned());
            }
        }
        scans
    }
}
