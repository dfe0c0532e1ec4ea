//! One conformance suite for the `Store` trait, run on PostgreSQL and SQLite.

use std::sync::Arc;

use tessera_server::{
    Audience, NewRefreshToken, NewSession, RefreshTokenRecord, RefreshTokenState, Revocation,
    RevocationKind, ScopeSet, SecretHash, Store, StoreError, UnixTime, UserRecord, Username,
    connect_store,
};

use crate::helpers::{Backend, TestDatabase, on_both_backends};

on_both_backends!(
    a_taken_username_is_a_conflict,
    only_one_spend_of_a_refresh_token_succeeds,
    no_token_is_added_to_a_revoked_session,
    disabling_a_user_revokes_their_sessions_and_logs_the_subject,
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
        .unwrap();
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

async fn only_one_spend_of_a_refresh_token_succeeds(backend: Backend) {
    let (store, _db) = open(backend).await;
    session(&*store, "s1", "rt-1").await;
    let presented = SecretHash::of("rt-1");
    assert!(
        store
            .spend_refresh_token(&presented, &token("rt-2", 1000), t(200))
            .await
            .unwrap()
    );
    assert!(
        !store
            .spend_refresh_token(&presented, &token("rt-3", 1000), t(201))
            .await
            .unwrap()
    );
    let spent = store.find_refresh_token(&presented).await.unwrap().unwrap();
    assert_eq!(spent.state, RefreshTokenState::Spent { at: t(200) });
    assert!(
        store
            .find_refresh_token(&SecretHash::of("rt-2"))
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        store
            .find_refresh_token(&SecretHash::of("rt-3"))
            .await
            .unwrap()
            .is_none(),
        "a loser's successor was stored"
    );
    // An expired token cannot be spent.
    assert!(
        !store
            .spend_refresh_token(&SecretHash::of("rt-2"), &token("rt-4", 2000), t(1000))
            .await
            .unwrap()
    );
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
    assert!(
        !store
            .add_refresh_token("s1", &token("rt-2", 1000))
            .await
            .unwrap()
    );
    assert!(
        !store
            .spend_refresh_token(&SecretHash::of("rt-1"), &token("rt-3", 1000), t(301))
            .await
            .unwrap()
    );
    assert_eq!(
        stored(&*store, "rt-1").await.state,
        RefreshTokenState::Revoked
    );
    let log = store.revocations_after(0, t(301), 10).await.unwrap();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].1, entry);
}

async fn disabling_a_user_revokes_their_sessions_and_logs_the_subject(backend: Backend) {
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
    let log = store.revocations_after(0, t(401), 10).await.unwrap();
    assert_eq!(log[0].1.kind, RevocationKind::Subject);
    assert_eq!(log[0].1.value, "id-alice");
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
