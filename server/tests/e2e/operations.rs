//! What operators and tools rely on: reflection for grpcurl, throttling of
//! login storms, and key rotation with overlap.

use std::time::Duration;

use tessera_server::{Algorithm, Clock, Kek, add_key};
use tokio::time::Instant;
use tonic::Code;

use crate::helpers::{Backend, TestDatabase, eventually, spawn_app, spawn_app_on};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_v1_and_v1alpha_both_list_the_token_service() {
    use tonic_reflection::pb::{v1, v1alpha};
    let (app, _db) = spawn_app(Backend::Sqlite).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", app.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();

    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut answers = v1::server_reflection_client::ServerReflectionClient::new(channel.clone())
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        answers.message().await.unwrap().unwrap().message_response
    else {
        panic!("v1 reflection did not list services");
    };
    let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"tessera.v1.TokenService".to_owned()),
        "{names:?}"
    );
    assert!(
        names.contains(&"grpc.health.v1.Health".to_owned()),
        "{names:?}"
    );

    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    };
    let mut answers = v1alpha::server_reflection_client::ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        answers.message().await.unwrap().unwrap().message_response
    else {
        panic!("v1alpha reflection did not list services");
    };
    assert!(
        list.service
            .iter()
            .any(|s| s.name == "tessera.v1.TokenService")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_storm_is_throttled_and_introspect_keeps_answering() {
    let db = TestDatabase::new(Backend::Sqlite).await;
    let app = spawn_app_on(&db, |s| {
        s.hashing.max_concurrent = 1;
        s.hashing.max_waiting = 2;
    })
    .await;
    app.add_user("alice", "pw", &["read"]).await;
    let token = app.login("alice", "pw").await.unwrap().access_token;
    let bearer = app.introspector_token().await;

    let storm: Vec<_> = (0..30)
        .map(|_| {
            let mut client = app.client.clone();
            tokio::spawn(async move {
                client
                    .issue(crate::helpers::password_grant("alice", "pw"))
                    .await
            })
        })
        .collect();
    // While the hashing pool is saturated, Introspect does not wait on it.
    let started = Instant::now();
    assert!(app.introspect_with(&bearer, &token).await.unwrap().active);
    let introspect_took = started.elapsed();

    let (mut ok, mut throttled) = (0, 0);
    for login in storm {
        match login.await.unwrap() {
            Ok(_) => ok += 1,
            Err(s) if s.code() == Code::ResourceExhausted => throttled += 1,
            Err(s) => panic!("unexpected status {s:?}"),
        }
    }
    println!(
        "storm of 30 logins: {ok} served, {throttled} throttled; introspect took {introspect_took:?} meanwhile"
    );
    assert!(
        ok >= 1 && throttled >= 1,
        "{ok} served, {throttled} throttled"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_key_signs_after_activation_and_the_old_key_is_dropped_when_its_tokens_expire() {
    let db = TestDatabase::new(Backend::Sqlite).await;
    let app = spawn_app_on(&db, |s| {
        s.signing_alg = Algorithm::EdDsa;
        s.tokens.access_token_ttl = Duration::from_secs(60);
        s.tokens.access_token_max_lifetime = Duration::from_secs(60);
        s.follow.key_refresh_interval = Duration::from_millis(100);
    })
    .await;
    app.add_user("alice", "pw", &["read"]).await;
    let old_token = app.login("alice", "pw").await.unwrap().access_token;
    let old_kid = jsonwebtoken::decode_header(&old_token)
        .unwrap()
        .kid
        .unwrap();
    let jwks = || async { app.jwks().await };

    let now = app.clock.now();
    let kek = Kek::from_base64(&db.kek).unwrap();
    let (new_kid, _) = add_key(
        &*app.store,
        &kek,
        Algorithm::EdDsa,
        now,
        now.plus(Duration::from_secs(30)),
    )
    .await
    .unwrap();
    assert!(
        eventually(Duration::from_secs(2), || async {
            jwks().await.contains(&new_kid)
        })
        .await
        .is_some()
    );
    let before = app.login("alice", "pw").await.unwrap().access_token;
    assert_eq!(
        jsonwebtoken::decode_header(&before).unwrap().kid.unwrap(),
        old_kid
    );

    app.clock.advance(Duration::from_secs(31));
    let after = app.login("alice", "pw").await.unwrap().access_token;
    let header = jsonwebtoken::decode_header(&after).unwrap();
    assert_eq!(header.kid.as_deref(), Some(new_kid.as_str()));
    assert_eq!(header.alg, jsonwebtoken::Algorithm::EdDSA);
    let bearer = app.introspector_token().await;
    assert!(
        app.introspect_with(&bearer, &old_token)
            .await
            .unwrap()
            .active,
        "old key's token rejected too early"
    );
    let set: jsonwebtoken::jwk::JwkSet = serde_json::from_str(&jwks().await).unwrap();
    assert!(
        set.find(&old_kid).is_some(),
        "old key unpublished while its tokens live"
    );

    // Past the last possible expiry of a token the old key signed (longest
    // lifetime + leeway + how late a replica may notice the rotation).
    app.clock.advance(Duration::from_secs(66));
    let dropped = eventually(Duration::from_secs(2), || async {
        !jwks().await.contains(&old_kid)
    })
    .await;
    assert!(
        dropped.is_some(),
        "old key still published after its tokens expired"
    );
    // The new key keeps signing and verifying.
    let fresh = app.login("alice", "pw").await.unwrap().access_token;
    let bearer = app.introspector_token().await;
    assert!(app.introspect_with(&bearer, &fresh).await.unwrap().active);
}
