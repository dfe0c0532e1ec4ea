//! tessera-client against a real Tessera: the token source's schedule and
//! recovery, the interceptor, retry, transport refusal and the verifiers.

use std::{sync::Arc, time::Duration};

use secrecy::SecretString;
use tessera::pb::{IntrospectRequest, token_service_client::TokenServiceClient};
use tessera_client::{
    AuthInterceptor, AuthLayer, Credentials, Plaintext, SourceConfig, TokenSource, Transport,
    retry::with_fresh_token,
    source::SourceMetrics,
    verify::{ScopeRules, VerifiedClaims, Verifier, VerifyError, VerifyLayer, VerifyMetrics},
};
use tessera_server::{Clock, Revocation, RevocationKind};
use tokio::time::Instant;
use tonic::{
    Code,
    service::interceptor::InterceptedService,
    transport::{Channel, Endpoint},
};
use tower::{Layer, ServiceExt};

use crate::helpers::{Backend, TestApp, TestDatabase, eventually, spawn_app_on};

fn endpoint(app: &TestApp) -> Endpoint {
    app.endpoint()
}

fn password(username: &str, password: &str) -> Credentials {
    Credentials::Password {
        username: username.into(),
        password: SecretString::from(password),
    }
}

fn source(app: &TestApp, credentials: Credentials, config: SourceConfig) -> TokenSource {
    TokenSource::connect(&endpoint(app), &Transport::default(), credentials, config).unwrap()
}

/// A Tessera client whose calls carry the source's token.
fn authed_client(
    app: &TestApp,
    source: &TokenSource,
) -> TokenServiceClient<InterceptedService<Channel, AuthInterceptor>> {
    let auth = AuthInterceptor::new(source, &endpoint(app), &Transport::default()).unwrap();
    TokenServiceClient::with_interceptor(endpoint(app).connect_lazy(), auth)
}

/// A protected call: Introspect needs the caller's bearer token.
fn probe(token: &str) -> IntrospectRequest {
    IntrospectRequest {
        token: token.into(),
        token_type_hint: 0,
    }
}

fn count(counter: &std::sync::atomic::AtomicU64) -> u64 {
    SourceMetrics::get(counter)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_calls_as_the_token_nears_expiry_cause_exactly_one_refresh() {
    let db = TestDatabase::new(Backend::Sqlite).await;
    let app = spawn_app_on(&db, |s| s.tokens.access_token_ttl = Duration::from_secs(6)).await;
    app.add_user("svc", "pw", &["tessera:introspect"]).await;
    let config = SourceConfig {
        jitter: 0.0,
        ..SourceConfig::default()
    }; // refresh at 4.5 s
    let source = source(&app, password("svc", "pw"), config);
    source.ready().await.unwrap();
    let started = Instant::now();
    let client = authed_client(&app, &source);

    // 1,000 calls spread over 3.5 s .. 5.5 s of the token's life, around the refresh.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let calls: Vec<_> = (0..1000u64)
        .map(|i| {
            let mut client = client.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(i * 2)).await;
                client
                    .introspect(probe("x"))
                    .await
                    .map(|r| r.into_inner().active)
            })
        })
        .collect();
    for call in calls {
        let active = call
            .await
            .unwrap()
            .expect("every call carries a valid token");
        assert!(!active, "the probe token \"x\" is not a token");
    }
    println!(
        "1000 calls over {:?} of the token's life",
        started.elapsed()
    );
    let metrics = source.metrics();
    assert_eq!(count(&metrics.issues), 1);
    assert_eq!(count(&metrics.refreshes), 1, "exactly one refresh");
    assert_eq!(count(&metrics.failures), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_recover_by_themselves_after_an_outage_longer_than_a_token_life() {
    let db = TestDatabase::new(Backend::Sqlite).await;
    let app = spawn_app_on(&db, |s| s.tokens.access_token_ttl = Duration::from_secs(2)).await;
    app.add_user("svc", "pw", &["tessera:introspect"]).await;
    let addr = app.addr.to_string();
    let config = SourceConfig {
        max_backoff: Duration::from_millis(300),
        ..SourceConfig::default()
    };
    let source = source(&app, password("svc", "pw"), config);
    source.ready().await.unwrap();
    let mut client = authed_client(&app, &source);
    assert!(client.introspect(probe("x")).await.is_ok());

    app.stop().await;
    tokio::time::sleep(Duration::from_secs(3)).await; // longer than the token's life
    let down = client.introspect(probe("x")).await.unwrap_err();
    assert_eq!(down.code(), Code::Unavailable);
    assert!(
        source.current().is_none(),
        "an expired token is still handed out"
    );

    let _back = spawn_app_on(&db, |s| {
        s.tokens.access_token_ttl = Duration::from_secs(2);
        s.listen_addr = addr.parse().unwrap();
    })
    .await;
    let recovered = eventually(Duration::from_secs(5), || {
        let mut client = client.clone();
        async move { client.introspect(probe("x")).await.is_ok() }
    })
    .await
    .expect("calls recover without help");
    println!("recovered {recovered:?} after the restart");
    assert!(count(&source.metrics().failures) >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_refresh_falls_back_to_issue() {
    let db = TestDatabase::new(Backend::Sqlite).await;
    let app = spawn_app_on(&db, |_| {}).await;
    app.add_user("svc", "pw", &["tessera:introspect"]).await;
    let source = source(&app, password("svc", "pw"), SourceConfig::default());
    let first = source.token().await.unwrap();
    let bearer = app.introspector_token().await;
    let sid = app
        .introspect_with(&bearer, first.secret())
        .await
        .unwrap()
        .sid;
    // End the session server-side: its refresh token is now rejected.
    let now = app.clock.now();
    let entry = Revocation {
        kind: RevocationKind::Session,
        value: sid.clone(),
        at: now,
        expires_at: now.plus(Duration::from_secs(3600)),
    };
    assert!(app.store.revoke_session(&entry).await.unwrap());

    assert!(source.invalidate());
    let second = source.token().await.unwrap();
    let info = app.introspect_with(&bearer, second.secret()).await.unwrap();
    assert!(info.active);
    assert_ne!(info.sid, sid, "a new session was issued");
    let metrics = source.metrics();
    assert_eq!(count(&metrics.fallbacks), 1);
    assert_eq!(count(&metrics.issues), 2);
    // Invalidation is rate-limited.
    assert!(!source.invalidate());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unauthenticated_call_is_retried_once_with_a_fresh_token() {
    let db = TestDatabase::new(Backend::Sqlite).await;
    let app = spawn_app_on(&db, |_| {}).await;
    app.add_user("svc", "pw", &["tessera:introspect"]).await;
    let source = source(&app, password("svc", "pw"), SourceConfig::default());
    let token = source.token().await.unwrap();
    app.revoke(token.secret()).await.unwrap();
    let client = authed_client(&app, &source);

    let mut attempts = 0;
    let answer = with_fresh_token(&source, probe("x"), |request| {
        attempts += 1;
        let mut client = client.clone();
        async move { client.introspect(request).await }
    })
    .await;
    assert!(answer.is_ok(), "{answer:?}");
    assert_eq!(attempts, 2);
    assert_eq!(count(&source.metrics().refreshes), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_auth_layer_waits_for_the_first_token_instead_of_failing() {
    let db = TestDatabase::new(Backend::Sqlite).await;
    // Reserve a port, start the client side first, the token service second.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let endpoint = Endpoint::from_shared(format!("http://{addr}")).unwrap();
    let config = SourceConfig {
        max_backoff: Duration::from_millis(200),
        ..SourceConfig::default()
    };
    let source = TokenSource::connect(
        &endpoint,
        &Transport::default(),
        password("svc", "pw"),
        config,
    )
    .unwrap();
    let layer = AuthLayer::new(source.clone(), &endpoint, &Transport::default()).unwrap();
    let channel = tower::ServiceBuilder::new()
        .layer(layer)
        .service(endpoint.connect_lazy());
    let mut client = TokenServiceClient::new(channel);
    let call = tokio::spawn(async move { client.introspect(probe("x")).await });

    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!call.is_finished(), "the call did not wait for a token");
    let app = spawn_app_on(&db, |s| s.listen_addr = addr.parse().unwrap()).await;
    app.add_user("svc", "pw", &["tessera:introspect"]).await;
    let answer = tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .unwrap()
        .unwrap();
    assert!(answer.is_ok(), "{answer:?}");
}

#[test]
fn bearer_tokens_are_not_sent_in_plaintext_to_another_machine() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let _guard = runtime.enter();
    let remote = Endpoint::from_static("http://10.20.30.40:50051");
    let refused = TokenSource::connect(
        &remote,
        &Transport::default(),
        password("a", "b"),
        SourceConfig::default(),
    );
    assert!(refused.is_err());
    let local = Endpoint::from_static("http://127.0.0.1:9");
    let source = TokenSource::connect(
        &local,
        &Transport::default(),
        password("a", "b"),
        SourceConfig::default(),
    )
    .unwrap();
    assert!(AuthInterceptor::new(&source, &remote, &Transport::default()).is_err());
    assert!(AuthLayer::new(source.clone(), &remote, &Transport::default()).is_err());
    // Explicitly allowed (a mesh encrypts): accepted. Nothing connects here.
    assert!(
        AuthInterceptor::new(
            &source,
            &remote,
            &Transport::Plaintext(Plaintext::AllowAnywhere)
        )
        .is_ok()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_is_refused_by_the_verifier_within_its_revocation_budget() {
    let db = TestDatabase::new(Backend::Postgres).await;
    let app = spawn_app_on(&db, |_| {}).await;
    app.add_user("alice", "pw", &["orders:read"]).await;
    let token = app.login("alice", "pw").await.unwrap().access_token;
    let budget = Duration::from_secs(1);
    let verifier = app
        .introspection_verifier(|c| c.revocation_budget = budget)
        .await;
    let claims = verifier.verify(&token).await.unwrap();
    assert!(claims.has_scope("orders:read"));
    assert!(verifier.verify(&token).await.is_ok());
    assert_eq!(VerifyMetrics::get(&verifier.metrics().cache_hits), 1);

    let revoked_at = Instant::now();
    app.revoke(&token).await.unwrap();
    let refused = eventually(budget + Duration::from_millis(500), || async {
        matches!(verifier.verify(&token).await, Err(VerifyError::Inactive))
    })
    .await;
    let took = refused.expect("revoked token still accepted after the budget");
    println!(
        "verifier refused the revoked token {:?} after revocation (budget {budget:?})",
        revoked_at.elapsed()
    );
    assert!(took <= budget + Duration::from_millis(200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_verifications_of_one_token_share_one_introspection() {
    let db = TestDatabase::new(Backend::Sqlite).await;
    let app = spawn_app_on(&db, |_| {}).await;
    app.add_user("alice", "pw", &["orders:read"]).await;
    let token = app.login("alice", "pw").await.unwrap().access_token;
    let verifier = Arc::new(app.introspection_verifier(|_| {}).await);
    let checks: Vec<_> = (0..50)
        .map(|_| {
            let verifier = Arc::clone(&verifier);
            let token = token.clone();
            tokio::spawn(async move { verifier.verify(&token).await.is_ok() })
        })
        .collect();
    for check in checks {
        assert!(check.await.unwrap());
    }
    assert_eq!(VerifyMetrics::get(&verifier.metrics().lookups), 1);
    assert!(matches!(
        verifier.verify("garbage").await,
        Err(VerifyError::Inactive)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_jwks_verifier_checks_audience_and_refetches_for_a_new_key() {
    let db = TestDatabase::new(Backend::Sqlite).await;
    let app = spawn_app_on(&db, |s| {
        s.follow.key_refresh_interval = Duration::from_millis(100);
    })
    .await;
    app.add_user("alice", "pw", &["orders:read"]).await;
    let verifier = app.jwks_verifier(|_| {});
    let token = app.login("alice", "pw").await.unwrap().access_token;
    assert!(
        verifier
            .verify(&token)
            .await
            .unwrap()
            .has_scope("orders:read")
    );
    assert!(verifier.verify(&token).await.is_ok());
    assert_eq!(VerifyMetrics::get(&verifier.metrics().lookups), 1);

    let other_audience = app.jwks_verifier(|c| c.audience = "billing".into());
    assert!(matches!(
        other_audience.verify(&token).await,
        Err(VerifyError::Inactive)
    ));

    // A key that signs at once: tokens with an unknown kid make the verifier refetch.
    let kek = tessera_server::Kek::from_base64(&db.kek).unwrap();
    let now = app.clock.now();
    let (kid, _) = tessera_server::add_key(
        &*app.store,
        &kek,
        tessera_server::Algorithm::Es256,
        now,
        now,
    )
    .await
    .unwrap();
    // It activates a second after the first key (see add_key).
    app.clock.advance(Duration::from_secs(1));
    let signed_by_new = eventually(Duration::from_secs(2), || async {
        let token = app.login("alice", "pw").await.unwrap().access_token;
        jsonwebtoken::decode_header(&token).unwrap().kid.as_deref() == Some(kid.as_str())
    })
    .await;
    assert!(signed_by_new.is_some());
    let new_token = app.login("alice", "pw").await.unwrap().access_token;
    assert!(verifier.verify(&new_token).await.is_ok());
    assert_eq!(VerifyMetrics::get(&verifier.metrics().lookups), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_verify_layer_enforces_scopes_per_method_and_passes_claims_to_handlers() {
    let db = TestDatabase::new(Backend::Sqlite).await;
    let app = spawn_app_on(&db, |_| {}).await;
    app.add_user("reader", "pw", &["orders:read"]).await;
    app.add_user("writer", "pw", &["orders:read", "orders:write"])
        .await;
    let reader = app.login("reader", "pw").await.unwrap().access_token;
    let writer = app.login("writer", "pw").await.unwrap().access_token;
    let verifier: Arc<dyn Verifier> = Arc::new(app.introspection_verifier(|_| {}).await);
    let rules = ScopeRules::new()
        .require("/shop.v1.Orders/", &["orders:read"])
        .require("/shop.v1.Orders/Create", &["orders:write"]);
    // The handler reports the subject it was given, proving claims arrive.
    let handler = tower::service_fn(|request: http::Request<tonic::body::Body>| async move {
        let sub = request
            .extensions()
            .get::<Arc<VerifiedClaims>>()
            .map(|c| c.sub.clone())
            .unwrap_or_default();
        Ok::<_, std::convert::Infallible>(
            http::Response::builder()
                .header("x-sub", sub)
                .body(tonic::body::Body::empty())
                .unwrap(),
        )
    });
    let service = VerifyLayer::new(verifier, rules).layer(handler);
    let call = |path: &'static str, bearer: Option<String>| {
        let service = service.clone();
        async move {
            let mut request = http::Request::builder().uri(format!("http://orders{path}"));
            if let Some(bearer) = bearer {
                request = request.header("authorization", format!("Bearer {bearer}"));
            }
            let response = service
                .oneshot(request.body(tonic::body::Body::empty()).unwrap())
                .await
                .unwrap();
            let code =
                tonic::Status::from_header_map(response.headers()).map_or(Code::Ok, |s| s.code());
            let sub = response
                .headers()
                .get("x-sub")
                .map(|v| v.to_str().unwrap().to_owned());
            (code, sub)
        }
    };
    assert_eq!(
        call("/shop.v1.Orders/Get", Some(reader.clone())).await.0,
        Code::Ok
    );
    assert_eq!(
        call("/shop.v1.Orders/Create", Some(reader.clone())).await.0,
        Code::PermissionDenied
    );
    let (code, sub) = call("/shop.v1.Orders/Create", Some(writer.clone())).await;
    assert_eq!(code, Code::Ok);
    assert!(sub.is_some_and(|s| !s.is_empty()));
    assert_eq!(
        call("/shop.v1.Orders/Get", None).await.0,
        Code::Unauthenticated
    );
    assert_eq!(
        call("/shop.v1.Orders/Get", Some("forged".into())).await.0,
        Code::Unauthenticated
    );
    assert_eq!(
        call("/shop.v1.Admin/Drop", Some(writer.clone())).await.0,
        Code::PermissionDenied
    );
    assert_eq!(call("/grpc.health.v1.Health/Check", None).await.0, Code::Ok);
    // Scopes are checked on every request, even when the answer is cached.
    assert_eq!(
        call("/shop.v1.Orders/Create", Some(reader)).await.0,
        Code::PermissionDenied
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_travel_in_the_token_introspection_and_both_verifiers_and_gate_methods() {
    use tessera_server::{Password, ScopeSet, Username};
    let db = TestDatabase::new(Backend::Sqlite).await;
    let app = spawn_app_on(&db, |_| {}).await;
    app.admin
        .add_user(
            Username::parse("boss").unwrap(),
            &Password::parse(SecretString::from("pw")).unwrap(),
            ScopeSet::parse_list(&["orders:read"]).unwrap(),
            Vec::new(),
            ScopeSet::parse_list(&["admin", "auditor"]).unwrap(),
        )
        .await
        .unwrap();
    app.add_user("staff", "pw", &["orders:read"]).await;
    let boss = app.login("boss", "pw").await.unwrap();
    let staff = app.login("staff", "pw").await.unwrap().access_token;

    // In the JWT as RFC 9068 `roles`, omitted when there are none.
    let payload = |token: &str| -> serde_json::Value {
        use base64::Engine;
        let part = token.split('.').nth(1).unwrap();
        serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(part)
                .unwrap(),
        )
        .unwrap()
    };
    assert_eq!(
        payload(&boss.access_token)["roles"],
        serde_json::json!(["admin", "auditor"])
    );
    assert!(payload(&staff).get("roles").is_none());
    // Introspect reports them; a refreshed token keeps them.
    let bearer = app.introspector_token().await;
    let answer = app
        .introspect_with(&bearer, &boss.access_token)
        .await
        .unwrap();
    assert_eq!(answer.roles, ["admin", "auditor"]);
    let refreshed = app.refresh(&boss.refresh_token).await.unwrap().access_token;
    assert_eq!(
        payload(&refreshed)["roles"],
        serde_json::json!(["admin", "auditor"])
    );

    let introspection: Arc<dyn Verifier> = Arc::new(app.introspection_verifier(|_| {}).await);
    let jwks: Arc<dyn Verifier> = Arc::new(app.jwks_verifier(|_| {}));
    for verifier in [introspection, jwks] {
        assert_eq!(
            verifier.verify(&boss.access_token).await.unwrap().roles,
            ["admin", "auditor"]
        );
        assert!(verifier.verify(&staff).await.unwrap().roles.is_empty());
        let rules = ScopeRules::new()
            .require("/shop.v1.Orders/", &["orders:read"])
            .require_roles("/shop.v1.Orders/Refund", &["admin"]);
        let handler = tower::service_fn(|_: http::Request<tonic::body::Body>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(tonic::body::Body::empty()))
        });
        let service = VerifyLayer::new(verifier, rules).layer(handler);
        let call = |path: &'static str, bearer: String| {
            let service = service.clone();
            async move {
                let request = http::Request::builder()
                    .uri(format!("http://orders{path}"))
                    .header("authorization", format!("Bearer {bearer}"))
                    .body(tonic::body::Body::empty())
                    .unwrap();
                let response = service.oneshot(request).await.unwrap();
                tonic::Status::from_header_map(response.headers()).map_or(Code::Ok, |s| s.code())
            }
        };
        assert_eq!(
            call("/shop.v1.Orders/Refund", boss.access_token.clone()).await,
            Code::Ok
        );
        assert_eq!(
            call("/shop.v1.Orders/Refund", staff.clone()).await,
            Code::PermissionDenied
        );
        assert_eq!(call("/shop.v1.Orders/Get", staff.clone()).await, Code::Ok);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_interceptor_sends_the_callers_trace_as_traceparent() {
    use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
    use tonic::service::Interceptor as _;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    use tracing_subscriber::layer::SubscriberExt as _;

    let db = TestDatabase::new(Backend::Sqlite).await;
    let app = spawn_app_on(&db, |_| {}).await;
    app.add_user("svc", "pw", &["read"]).await;
    let source = source(&app, password("svc", "pw"), SourceConfig::default());
    source.ready().await.unwrap();
    let mut auth = AuthInterceptor::new(&source, &endpoint(&app), &Transport::default()).unwrap();

    // The application's tracing setup: OpenTelemetry behind `tracing`, and
    // the W3C propagator.
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    let (request, trace_id) = tracing::subscriber::with_default(subscriber, || {
        let span = tracing::info_span!("checkout");
        let _entered = span.enter();
        let trace_id = span.context().span().span_context().trace_id().to_string();
        (auth.call(tonic::Request::new(())).unwrap(), trace_id)
    });
    let traceparent = request
        .metadata()
        .get("traceparent")
        .expect("a traceparent")
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        traceparent.starts_with(&format!("00-{trace_id}-")),
        "{traceparent} is not in trace {trace_id}"
    );
    assert!(request.metadata().get("authorization").is_some());
    // Outside any span, nothing is invented.
    let bare = auth.call(tonic::Request::new(())).unwrap();
    assert!(bare.metadata().get("traceparent").is_none());
}
