//! Several replicas on one PostgreSQL: shared keys, revocations crossing
//! between replicas, and failing closed when the log cannot be read.

use std::time::Duration;

use tessera_server::{Algorithm, Clock, Settings};
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::helpers::{Backend, TestDatabase, eventually, spawn_app_on};

/// A long backstop poll, so what the tests see is the LISTEN/NOTIFY push.
fn push_only(settings: &mut Settings) {
    settings.follow.poll_interval = Duration::from_secs(30);
    settings.revocation_stale_after = Duration::from_secs(60);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_on_one_replica_is_in_force_on_another_within_a_second() {
    let db = TestDatabase::new(Backend::Postgres).await;
    let a = spawn_app_on(&db, push_only).await;
    let b = spawn_app_on(&db, push_only).await;
    a.add_user("alice", "pw", &["read"]).await;
    let tokens = a.login("alice", "pw").await.unwrap();
    let bearer = b.introspector_token().await;
    // Keys are shared: B verifies what A signed.
    assert!(
        b.introspect_with(&bearer, &tokens.access_token)
            .await
            .unwrap()
            .active
    );

    a.revoke(&tokens.access_token).await.unwrap();
    let took = eventually(Duration::from_secs(1), || async {
        !b.introspect_with(&bearer, &tokens.access_token)
            .await
            .unwrap()
            .active
    })
    .await
    .expect("revocation reached the other replica within 1 s");
    println!("revocation crossed replicas in {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missed_notification_is_caught_by_the_poll() {
    let db = TestDatabase::new(Backend::Postgres).await;
    let a = spawn_app_on(&db, |_| {}).await;
    let b = spawn_app_on(&db, |s| s.follow.poll_interval = Duration::from_millis(300)).await;
    a.add_user("alice", "pw", &["read"]).await;
    let tokens = a.login("alice", "pw").await.unwrap();
    let bearer = b.introspector_token().await;
    // Silence the push for real: no NOTIFY is sent for this revocation.
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&db.url)
        .await
        .unwrap();
    sqlx::query("ALTER TABLE revocation_log DISABLE TRIGGER revocation_log_notify")
        .execute(&mut conn)
        .await
        .unwrap();
    a.revoke(&tokens.refresh_token).await.unwrap();
    let took = eventually(Duration::from_secs(3), || async {
        !b.introspect_with(&bearer, &tokens.access_token)
            .await
            .unwrap()
            .active
    })
    .await
    .expect("the poll picked up the revocation");
    println!("revocation reached the other replica by polling in {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_key_is_published_by_every_replica_before_it_signs() {
    let db = TestDatabase::new(Backend::Postgres).await;
    let a = spawn_app_on(&db, |_| {}).await;
    let b = spawn_app_on(&db, |_| {}).await;
    let kek = tessera_server::Kek::from_base64(&db.kek).unwrap();
    let now = a.clock.now();
    // Like `tessera keys rotate --activate-in 1h`.
    let (kid, _) = tessera_server::add_key(
        &*a.store,
        &kek,
        Algorithm::Es256,
        now,
        now.plus(Duration::from_secs(3600)),
    )
    .await
    .unwrap();
    let published = eventually(Duration::from_secs(2), || async {
        let jwks = b.jwks().await;
        jwks.contains(&kid)
    })
    .await;
    assert!(
        published.is_some(),
        "replica B does not publish the new key"
    );
    // Not signing yet: new tokens still carry the old kid.
    a.add_user("alice", "pw", &["read"]).await;
    let token = b.login("alice", "pw").await.unwrap().access_token;
    assert_ne!(
        jsonwebtoken::decode_header(&token).unwrap().kid.unwrap(),
        kid
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_cannot_read_the_log_fails_closed_and_recovers() {
    let db = TestDatabase::new(Backend::Postgres).await;
    let app = spawn_app_on(&db, |s| {
        s.follow.poll_interval = Duration::from_millis(100);
        s.revocation_stale_after = Duration::from_secs(1);
    })
    .await;
    app.add_user("alice", "pw", &["read"]).await;
    let token = app.login("alice", "pw").await.unwrap().access_token;
    let bearer = app.introspector_token().await;
    let mut health = health_client(app.addr).await;
    let status = |mut health: HealthClient<tonic::transport::Channel>, service: &'static str| async move {
        health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status()
    };
    assert_eq!(
        status(health.clone(), "tessera.v1.TokenService").await,
        ServingStatus::Serving
    );

    // Cut the replica off its database for real.
    db.set_reachable(false).await;

    let closed = eventually(Duration::from_secs(10), || async {
        matches!(app.introspect_with(&bearer, &token).await, Err(s) if s.code() == Code::Unavailable)
    })
    .await
    .expect("Introspect fails closed");
    println!("failed closed {closed:?} after losing the database");
    // Health follows within one reporting tick.
    for service in ["tessera.v1.TokenService", ""] {
        let not_serving = eventually(Duration::from_secs(1), || {
            let health = health.clone();
            async move { status(health, service).await == ServingStatus::NotServing }
        })
        .await;
        assert!(
            not_serving.is_some(),
            "health for {service:?} still SERVING"
        );
    }

    db.set_reachable(true).await;
    let recovered = eventually(Duration::from_secs(15), || async {
        matches!(app.introspect_with(&bearer, &token).await, Ok(r) if r.active)
    })
    .await;
    assert!(recovered.is_some(), "the replica did not recover by itself");
    health = health_client(app.addr).await;
    let serving = eventually(Duration::from_secs(2), || {
        let health = health.clone();
        async move { status(health, "").await == ServingStatus::Serving }
    })
    .await;
    assert!(serving.is_some(), "health did not return to SERVING");
}

async fn health_client(addr: std::net::SocketAddr) -> HealthClient<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    HealthClient::new(channel)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refreshes_of_the_same_tokens_on_two_replicas_keep_one_chain_each() {
    // Each replica sends the refreshes waiting on it in one statement: two
    // such batches over the same tokens must neither deadlock nor fork a
    // chain.
    let db = TestDatabase::new(Backend::Postgres).await;
    let a = spawn_app_on(&db, |_| {}).await;
    let b = spawn_app_on(&db, |_| {}).await;
    let mut firsts = Vec::new();
    for i in 0..32 {
        let name = format!("user{i}");
        a.add_user(&name, "pw", &["read"]).await;
        firsts.push(a.login(&name, "pw").await.unwrap().refresh_token);
    }
    let attempts: Vec<Vec<_>> = firsts
        .iter()
        .map(|token| {
            [&a, &b, &a, &b, &a, &b, &a, &b]
                .map(|replica| {
                    let mut client = replica.client.clone();
                    let token = token.clone();
                    tokio::spawn(async move {
                        client
                            .refresh(tessera::pb::RefreshRequest {
                                refresh_token: token,
                                scopes: Vec::new(),
                            })
                            .await
                            .map(tonic::Response::into_inner)
                    })
                })
                .into_iter()
                .collect()
        })
        .collect();
    for (i, presentations) in attempts.into_iter().enumerate() {
        let mut successors = Vec::new();
        for presentation in presentations {
            let answer = tokio::time::timeout(Duration::from_secs(20), presentation)
                .await
                .expect("answered (no deadlock)")
                .unwrap();
            match answer {
                Ok(pair) => successors.push(pair.refresh_token),
                Err(s) => assert_eq!(s.code(), Code::Unauthenticated, "{s:?}"),
            }
        }
        assert!(!successors.is_empty(), "user{i}: one presentation rotates");
        let mut live = 0;
        for successor in &successors {
            if a.refresh(successor).await.is_ok() {
                live += 1;
            }
        }
        assert!(live <= 1, "user{i}: {live} live chains");
    }
}
