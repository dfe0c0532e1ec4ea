//! One conformance suite for the `Store` trait, run on PostgreSQL and SQLite.

use std::{sync::Arc, time::Duration};

use tessera_server::{
    Audience, Exchange, ExchangeRequest, ExchangeRules, NewRefreshToken, NewSession,
    RefreshTokenRecord, RefreshTokenState, Revocation, RevocationKind, ScopeSet, SecretHash, Store,
    StoreError, Successor, UnixTime, UserRecord, Username, connect_store,
};

use crate::helpers::{Backend, TestDatabase, on_both_backends};

on_both_backends!(
    a_taken_username_is_a_conflict,
    only_one_rotation_of_a_refresh_token_succeeds_and_the_successor_keeps_its_scopes,
    a_replay_supersedes_the_unused_successor_and_presenting_that_is_theft,
    no_token_is_added_to_a_revoked_session,
    no_session_is_created_for_a_disabled_user,
    disabling_a_user_revokes_their_sessions_and_logs_each_session_and_the_subject,
    the_revocation_log_is_read_in_order_without_expired_entries,
    migrations_can_run_twice,
);

async fn open(backend: Backend) -> (Arc<dyn Store>, TestDatabase) {
    let db = TestDatabase::new(backend).await;
    let store = connect_store(&db.url, 4, true).await.unwrap();
    (store, db)
}

fn t(secs: i64) -> UnixTime {
    UnixTime::from_secs(secs)
}

fn user(name: &str) -> UserRecord {
    UserRecord {
        id: format!("id-{name}"),
        username: Username::parse(name).unwrap(),
        password_hash: "$argon2id$stub".into(),
        scopes: ScopeSet::parse_list(&["read"]).unwrap(),
        audiences: vec![Audience::parse("api").unwrap()],
        roles: ScopeSet::parse_list(&["admin"]).unwrap(),
        disabled: false,
    }
}

fn token(secret: &str, expires: i64) -> NewRefreshToken {
    NewRefreshToken {
        hash: SecretHash::of(secret),
        scopes: ScopeSet::parse_list(&["read"]).unwrap(),
        issued_at: t(100),
        expires_at: t(expires),
    }
}

async fn session(store: &dyn Store, sid: &str, first: &str) {
    store.insert_user(&user(sid), t(1)).await.ok();
    assert!(create_session(store, sid, first).await);
}

async fn create_session(store: &dyn Store, sid: &str, first: &str) -> bool {
    store
        .create_session(
            &NewSession {
                sid: sid.into(),
                user_id: format!("id-{sid}"),
                audience: Audience::parse("api").unwrap(),
                created_at: t(100),
            },
            &token(first, 1000),
        )
        .await
        .unwrap()
}

const RULES: ExchangeRules = ExchangeRules {
    grace: Duration::from_secs(60),
    max_replays: 3,
};

/// Presents `secret` for a successor `next` at time `now`, asking for `scopes`.
async fn exchange(
    store: &dyn Store,
    secret: &str,
    next: &str,
    now: i64,
    scopes: &[&str],
) -> Exchange {
    store
        .exchange_refresh_token(&ExchangeRequest {
            presented: &SecretHash::of(secret),
            requested_scopes: &ScopeSet::parse_list(scopes).unwrap(),
            successor: &Successor {
                hash: SecretHash::of(next),
                issued_at: t(now),
                expires_at: t(now + 1000),
            },
            now: t(now),
            rules: RULES,
            theft_revocation_expires_at: t(now + 900),
        })
        .await
        .unwrap()
}

/// The stored refresh token for `secret`, which must exist.
async fn stored(store: &dyn Store, secret: &str) -> RefreshTokenRecord {
    store
        .find_refresh_token(&SecretHash::of(secret))
        .await
        .unwrap()
        .expect("stored refresh token")
}

async fn a_taken_username_is_a_conflict(backend: Backend) {
    let (store, _db) = open(backend).await;
    store.insert_user(&user("alice"), t(1)).await.unwrap();
    let mut again = user("alice");
    again.id = "another-id".into();
    assert!(matches!(
        store.insert_user(&again, t(2)).await,
        Err(StoreError::Conflict)
    ));
    let found = store
        .find_user(&Username::parse("alice").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.id, "id-alice");
    assert_eq!(found.audiences, vec![Audience::parse("api").unwrap()]);
    assert!(
        store
            .find_user(&Username::parse("bob").unwrap())
            .await
            .unwrap()
            .is_none()
    );
}

async fn only_one_rotation_of_a_refresh_token_succeeds_and_the_successor_keeps_its_scopes(
    backend: Backend,
) {
    let (store, _db) = open(backend).await;
    store.insert_user(&user("s1"), t(1)).await.unwrap();
    let mut wide = token("rt-1", 1000);
    wide.scopes = ScopeSet::parse_list(&["read", "write"]).unwrap();
    assert!(
        store
            .create_session(
                &NewSession {
                    sid: "s1".into(),
                    user_id: "id-s1".into(),
                    audience: Audience::parse("api").unwrap(),
                    created_at: t(100),
                },
                &wide,
            )
            .await
            .unwrap()
    );
    // Narrowed for the access token only.
    let Exchange::Issued { record, replay } =
        exchange(&*store, "rt-1", "rt-2", 200, &["read"]).await
    else {
        panic!("the first presentation rotates");
    };
    assert!(!replay);
    assert_eq!(record.sid, "s1");
    assert!(matches!(
        stored(&*store, "rt-1").await.state,
        RefreshTokenState::Spent {
            successor_used: false,
            replays: 0,
            ..
        }
    ));
    assert_eq!(
        stored(&*store, "rt-2").await.scopes,
        ScopeSet::parse_list(&["read", "write"]).unwrap(),
        "the successor kept the presented token's scopes"
    );
    // Using the successor marks it used on the spent token.
    assert!(matches!(
        exchange(&*store, "rt-2", "rt-3", 201, &[]).await,
        Exchange::Issued { replay: false, .. }
    ));
    assert!(matches!(
        stored(&*store, "rt-1").await.state,
        RefreshTokenState::Spent {
            successor_used: true,
            ..
        }
    ));
    // A scope the token never held is refused, and nothing is written.
    assert!(matches!(
        exchange(&*store, "rt-3", "rt-4", 202, &["admin"]).await,
        Exchange::ScopeNotAllowed(_)
    ));
    assert_eq!(
        stored(&*store, "rt-3").await.state,
        RefreshTokenState::Active
    );
    assert!(
        store
            .find_refresh_token(&SecretHash::of("rt-4"))
            .await
            .unwrap()
            .is_none()
    );
    // An expired token is refused.
    assert!(matches!(
        exchange(&*store, "rt-3", "rt-5", 5000, &[]).await,
        Exchange::Refused
    ));
    assert!(matches!(
        exchange(&*store, "unknown", "rt-6", 202, &[]).await,
        Exchange::Refused
    ));
}

async fn a_replay_supersedes_the_unused_successor_and_presenting_that_is_theft(backend: Backend) {
    let (store, _db) = open(backend).await;
    session(&*store, "s1", "rt-1").await;
    assert!(matches!(
        exchange(&*store, "rt-1", "rt-2", 200, &[]).await,
        Exchange::Issued { replay: false, .. }
    ));
    // The same token again, inside the grace window, successor unused: a replay.
    assert!(matches!(
        exchange(&*store, "rt-1", "rt-3", 201, &[]).await,
        Exchange::Issued { replay: true, .. }
    ));
    assert_eq!(
        stored(&*store, "rt-2").await.state,
        RefreshTokenState::Superseded
    );
    assert_eq!(
        stored(&*store, "rt-3").await.state,
        RefreshTokenState::Active
    );
    // Whoever holds the superseded successor is not the one who replayed.
    let Exchange::TheftDetected { revocation, .. } =
        exchange(&*store, "rt-2", "rt-4", 202, &[]).await
    else {
        panic!("presenting a superseded token is theft");
    };
    assert_eq!(revocation.kind, RevocationKind::Session);
    assert_eq!(revocation.value, "s1");
    assert_eq!(
        stored(&*store, "rt-3").await.state,
        RefreshTokenState::Revoked
    );
    let log = store.revocations_after(0, t(202), 10).await.unwrap();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].1, revocation);
}

async fn no_token_is_added_to_a_revoked_session(backend: Backend) {
    let (store, _db) = open(backend).await;
    session(&*store, "s1", "rt-1").await;
    let entry = Revocation {
        kind: RevocationKind::Session,
        value: "s1".into(),
        at: t(300),
        expires_at: t(900),
    };
    assert!(store.revoke_session(&entry).await.unwrap());
    assert!(
        !store.revoke_session(&entry).await.unwrap(),
        "revoked twice"
    );
    assert!(matches!(
        exchange(&*store, "rt-1", "rt-2", 301, &[]).await,
        Exchange::Refused
    ));
    assert!(
        store
            .find_refresh_token(&SecretHash::of("rt-2"))
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        stored(&*store, "rt-1").await.state,
        RefreshTokenState::Revoked
    );
    let log = store.revocations_after(0, t(301), 10).await.unwrap();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].1, entry);
}

async fn no_session_is_created_for_a_disabled_user(backend: Backend) {
    let (store, _db) = open(backend).await;
    store.insert_user(&user("alice"), t(1)).await.unwrap();
    store
        .disable_user(&Username::parse("alice").unwrap(), t(50), t(900))
        .await
        .unwrap();
    assert!(!create_session(&*store, "alice", "rt-1").await);
    assert!(
        store
            .find_refresh_token(&SecretHash::of("rt-1"))
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        !create_session(&*store, "nobody", "rt-2").await,
        "unknown user"
    );
}

async fn disabling_a_user_revokes_their_sessions_and_logs_each_session_and_the_subject(
    backend: Backend,
) {
    let (store, _db) = open(backend).await;
    session(&*store, "alice", "rt-1").await;
    let id = store
        .disable_user(&Username::parse("alice").unwrap(), t(400), t(900))
        .await
        .unwrap();
    assert_eq!(id.as_deref(), Some("id-alice"));
    assert!(
        store
            .find_user(&Username::parse("alice").unwrap())
            .await
            .unwrap()
            .unwrap()
            .disabled
    );
    assert_eq!(
        stored(&*store, "rt-1").await.state,
        RefreshTokenState::Revoked
    );
    let log: Vec<_> = store
        .revocations_after(0, t(401), 10)
        .await
        .unwrap()
        .into_iter()
        .map(|(_, e)| (e.kind, e.value))
        .collect();
    assert_eq!(
        log,
        [
            (RevocationKind::Session, "alice".to_owned()),
            (RevocationKind::Subject, "id-alice".to_owned())
        ]
    );
    assert!(
        store
            .disable_user(&Username::parse("nobody").unwrap(), t(400), t(900))
            .await
            .unwrap()
            .is_none()
    );
}

async fn the_revocation_log_is_read_in_order_without_expired_entries(backend: Backend) {
    let (store, _db) = open(backend).await;
    for (i, expires) in [(1, 50), (2, 500), (3, 500), (4, 40), (5, 500)] {
        let entry = Revocation {
            kind: RevocationKind::Token,
            value: format!("jti-{i}"),
            at: t(10),
            expires_at: t(expires),
        };
        store.append_revocation(&entry).await.unwrap();
    }
    let all = store.revocations_after(0, t(100), 10).await.unwrap();
    let values: Vec<_> = all.iter().map(|(_, e)| e.value.as_str()).collect();
    assert_eq!(values, ["jti-2", "jti-3", "jti-5"]);
    assert!(all.windows(2).all(|w| w[0].0 < w[1].0));
    let page = store.revocations_after(0, t(100), 2).await.unwrap();
    assert_eq!(page.len(), 2);
    let rest = store.revocations_after(page[1].0, t(100), 2).await.unwrap();
    assert_eq!(
        rest.iter()
            .map(|(_, e)| e.value.as_str())
            .collect::<Vec<_>>(),
        ["jti-5"]
    );
}

async fn migrations_can_run_twice(backend: Backend) {
    let (_store, db) = open(backend).await;
    let again = connect_store(&db.url, 2, true).await;
    assert!(again.is_ok(), "second migration run failed");
}

/// Tables, columns (with nullability) and named indexes of a migrated
/// database, sorted, as `table.column null|not null` and `index table.name`.
async fn schema(db: &TestDatabase) -> Vec<String> {
    use sqlx::{Connection, PgConnection, SqliteConnection};
    let mut shape: Vec<String> = match db.backend {
        Backend::Postgres => {
            let mut conn = PgConnection::connect(&db.url).await.unwrap();
            let columns: Vec<(String, String, String)> = sqlx::query_as(
                "SELECT table_name::text, column_name::text, is_nullable::text \
                 FROM information_schema.columns \
                 WHERE table_schema = 'public' AND table_name <> '_sqlx_migrations'",
            )
            .fetch_all(&mut conn)
            .await
            .unwrap();
            let indexes: Vec<(String, String)> = sqlx::query_as(
                "SELECT tablename::text, indexname::text FROM pg_indexes \
                 WHERE schemaname = 'public' AND indexname NOT LIKE '%_pkey' \
                   AND indexname NOT LIKE '%_key'",
            )
            .fetch_all(&mut conn)
            .await
            .unwrap();
            columns
                .into_iter()
                .map(|(t, c, n)| {
                    format!("{t}.{c} {}", if n == "YES" { "null" } else { "not null" })
                })
                .chain(indexes.into_iter().map(|(t, i)| format!("index {t}.{i}")))
                .collect()
        }
        Backend::Sqlite => {
            let mut conn = SqliteConnection::connect(&db.url).await.unwrap();
            let columns: Vec<(String, String, i64, i64)> = sqlx::query_as(
                "SELECT m.name, p.name, p.\"notnull\", p.pk FROM sqlite_master m \
                 JOIN pragma_table_info(m.name) p \
                 WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%' \
                   AND m.name <> '_sqlx_migrations'",
            )
            .fetch_all(&mut conn)
            .await
            .unwrap();
            let indexes: Vec<(String, String)> = sqlx::query_as(
                "SELECT tbl_name, name FROM sqlite_master \
                 WHERE type = 'index' AND name NOT LIKE 'sqlite_autoindex_%'",
            )
            .fetch_all(&mut conn)
            .await
            .unwrap();
            columns
                .into_iter()
                // SQLite lets a non-INTEGER primary key hold NULL unless told
                // otherwise; PostgreSQL's primary keys are NOT NULL.
                .map(|(t, c, not_null, pk)| {
                    let nullable = not_null == 0 && pk == 0;
                    format!("{t}.{c} {}", if nullable { "null" } else { "not null" })
                })
                .chain(indexes.into_iter().map(|(t, i)| format!("index {t}.{i}")))
                .collect()
        }
    };
    shape.sort();
    shape
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_backends_migrate_to_the_same_tables_columns_and_indexes() {
    let (_pg, pg_db) = open(Backend::Postgres).await;
    let (_lite, lite_db) = open(Backend::Sqlite).await;
    let (pg, lite) = (schema(&pg_db).await, schema(&lite_db).await);
    assert!(pg.len() > 20, "too few columns read: {pg:?}");
    assert_eq!(pg, lite, "the PostgreSQL and SQLite schemas differ");
}
