//! What running several replicas, or changing settings over time, needs:
//! one clock (the database's), lifetimes independent of the TTL, tokens
//! meant for their audience, changes that reach a running server quickly,
//! keys that keep the deployment's algorithm, private files, and pruning.

use std::time::Duration;

use tessera_client::verify::{Verifier, VerifyError};
use tessera_server::{Algorithm, Clock, Kek, add_key};
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::helpers::{
    Backend, TestApp, TestDatabase, client_grant, eventually, on_both_backends, spawn_app,
    spawn_app_on, spawn_app_with,
};

on_both_backends!(a_replica_whose_clock_is_out_of_step_reports_not_serving_until_it_is_back);

async fn serving(app: &TestApp) -> ServingStatus {
    let mut health = HealthClient::new(app.endpoint().connect().await.unwrap());
    health
        .check(HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner()
        .status()
}

async fn a_replica_whose_clock_is_out_of_step_reports_not_serving_until_it_is_back(
    backend: Backend,
) {
    let (app, _db) = spawn_app_with(backend, |s| {
        s.follow.poll_interval = Duration::from_millis(100);
        s.revocation_stale_after = Duration::from_secs(2);
    })
    .await;
    assert!(
        eventually(Duration::from_secs(2), || async {
            serving(&app).await == ServingStatus::Serving
        })
        .await
        .is_some()
    );
    // 30 s ahead of the database.
    app.clock.advance(Duration::from_secs(30));
    let out = eventually(Duration::from_secs(3), || async {
        serving(&app).await == ServingStatus::NotServing
    })
    .await;
    assert!(out.is_some(), "a replica 30 s ahead kept reporting SERVING");
    app.clock.rewind(Duration::from_secs(30));
    let back = eventually(Duration::from_secs(3), || async {
        serving(&app).await == ServingStatus::Serving
    })
    .await;
    assert!(back.is_some(), "the replica did not come back in step");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_change_of_the_ttl_never_rejects_live_tokens_of_other_replicas() {
    let db = TestDatabase::new(Backend::Postgres).await;
    let old = spawn_app_on(&db, |s| {
        s.tokens.access_token_ttl = Duration::from_secs(3600);
    })
    .await;
    let new = spawn_app_on(&db, |s| s.tokens.access_token_ttl = Duration::from_secs(60)).await;
    old.add_user("alice", "pw", &["read"]).await;
    let long_lived = old.login("alice", "pw").await.unwrap().access_token;
    let bearer = new.introspector_token().await;
    assert!(
        new.introspect_with(&bearer, &long_lived)
            .await
            .unwrap()
            .active,
        "a replica with a shorter TTL rejected a sibling's live token"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn introspect_accepts_only_bearers_meant_for_tessera() {
    let (app, _db) = spawn_app(Backend::Sqlite).await;
    app.add_user("alice", "pw", &["read"]).await;
    let token = app.login("alice", "pw").await.unwrap().access_token;
    let secret = app
        .add_client("gateway", &["tessera:introspect"], &["billing-api"])
        .await;
    let mut elsewhere = client_grant("gateway", &secret);
    elsewhere.audience = "billing-api".into();
    let for_billing = app.issue(elsewhere).await.unwrap().access_token;
    let refused = app.introspect_with(&for_billing, &token).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    assert!(refused.message().contains("audience"), "{refused:?}");
    let for_tessera = app
        .issue(client_grant("gateway", &secret))
        .await
        .unwrap()
        .access_token;
    assert!(
        app.introspect_with(&for_tessera, &token)
            .await
            .unwrap()
            .active
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_bearer_is_told_apart_from_a_garbage_one() {
    let (app, _db) = spawn_app(Backend::Sqlite).await;
    app.add_user("alice", "pw", &["read"]).await;
    let token = app.login("alice", "pw").await.unwrap().access_token;
    let bearer = app.introspector_token().await;
    let garbage = app.introspect_with("garbage", &token).await.unwrap_err();
    app.clock.advance(Duration::from_secs(600 + 6));
    let expired = app.introspect_with(&bearer, &token).await.unwrap_err();
    assert_eq!(expired.code(), Code::Unauthenticated);
    assert_eq!(garbage.code(), Code::Unauthenticated);
    assert!(expired.message().contains("expired"), "{expired:?}");
    assert_ne!(expired.message(), garbage.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_introspection_verifier_refuses_a_token_meant_for_another_service() {
    let (app, _db) = spawn_app(Backend::Sqlite).await;
    app.add_user("alice", "pw", &["read"]).await;
    let token = app.login("alice", "pw").await.unwrap().access_token;
    let ours = app.introspection_verifier(|_| {}).await;
    assert!(ours.verify(&token).await.is_ok());
    let billing = app
        .introspection_verifier(|c| c.audience = "billing-api".into())
        .await;
    assert!(matches!(
        billing.verify(&token).await,
        Err(VerifyError::Inactive)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_sqlite_a_key_rotated_by_another_process_is_published_within_a_second() {
    let db = TestDatabase::new(Backend::Sqlite).await;
    // The backstop re-read is a minute away: only the change feed can be this quick.
    let app = spawn_app_on(&db, |s| {
        s.follow.key_refresh_interval = Duration::from_secs(60);
    })
    .await;
    let kek = Kek::from_base64(&db.kek).unwrap();
    let now = app.clock.now();
    // A store of its own, as `tessera keys rotate` would open.
    let store = tessera_server::connect_store(&db.url, 1, false)
        .await
        .unwrap();
    let (kid, _) = add_key(
        &*store,
        &kek,
        Algorithm::Es256,
        now,
        now.plus(Duration::from_secs(3600)),
    )
    .await
    .unwrap();
    let published = eventually(Duration::from_secs(2), || async {
        app.jwks().await.contains(&kid)
    })
    .await;
    println!("published after {published:?}");
    assert!(
        published.is_some(),
        "the new key was not published within 2 s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_rows_are_pruned_and_live_ones_kept() {
    let (app, _db) = spawn_app(Backend::Sqlite).await;
    app.add_user("alice", "pw", &["read"]).await;
    let live = app.login("alice", "pw").await.unwrap();
    let expired = app.login("alice", "pw").await.unwrap();
    app.revoke(&expired.access_token).await.unwrap();
    // Everything the second login made has expired a day from now, except
    // what belongs to the first login's refresh token (30 days).
    let in_two_days = app.clock.now().plus(Duration::from_secs(2 * 24 * 3600));
    let pruned = app.store.prune(in_two_days, 1).await.unwrap();
    assert_eq!(pruned.revocations, 1, "{pruned:?}");
    assert_eq!(pruned.refresh_tokens, 0, "{pruned:?}");
    let in_two_months = app.clock.now().plus(Duration::from_secs(60 * 24 * 3600));
    let pruned = app.store.prune(in_two_months, 1).await.unwrap();
    assert_eq!(pruned.refresh_tokens, 2, "{pruned:?}");
    assert_eq!(pruned.sessions, 2, "{pruned:?}");
    drop(live);
    // And nothing is pruned from a database whose rows are all live.
    let (other, _other_db) = spawn_app(Backend::Sqlite).await;
    other.add_user("bob", "pw", &["read"]).await;
    other.login("bob", "pw").await.unwrap();
    let none = other.store.prune(other.clock.now(), 1).await.unwrap();
    assert_eq!(none, tessera_server::Pruned::default());
}
