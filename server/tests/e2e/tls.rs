//! TLS on the server: every RPC over it, plaintext refused, client
//! certificates required or optional, and certificates replaced while
//! clients hold connections.

use std::{path::Path, time::Duration};

use tessera::pb::GetJwksRequest;
use tessera_server::{ClientAuth, Settings, TlsSettings};

use crate::{
    helpers::{Backend, TestApp, TestDatabase, eventually, spawn_app_with},
    pki::{Leaf, Pki},
};

fn tls_settings(cert: &Path, key: &Path) -> TlsSettings {
    TlsSettings {
        cert: cert.to_owned(),
        key: key.to_owned(),
        client_ca: None,
        client_auth: ClientAuth::Required,
    }
}

async fn tls_app(pki: &Pki, configure: impl FnOnce(&mut TlsSettings)) -> (TestApp, TestDatabase) {
    let (cert, key) = pki.write("server", &pki.server());
    let mut tls = tls_settings(&cert, &key);
    configure(&mut tls);
    spawn_app_with(Backend::Sqlite, |s: &mut Settings| s.tls = Some(tls)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_works_over_tls_and_plaintext_is_refused() {
    let pki = Pki::new("server CA");
    let (mut app, _db) = tls_app(&pki, |_| {}).await;
    app.use_tls(&pki.ca_pem());
    app.add_user("alice", "pw", &["read"]).await;
    let tokens = app.login("alice", "pw").await.unwrap();
    let rotated = app.refresh(&tokens.refresh_token).await.unwrap();
    let bearer = app.introspector_token().await;
    assert!(
        app.introspect_with(&bearer, &rotated.access_token)
            .await
            .unwrap()
            .active
    );
    app.revoke(&rotated.refresh_token).await.unwrap();
    assert!(
        !app.introspect_with(&bearer, &rotated.access_token)
            .await
            .unwrap()
            .active
    );
    assert!(app.jwks().await.contains("keys"));
    let mut health =
        tonic_health::pb::health_client::HealthClient::new(app.tls_channel(&pki.ca_pem(), None));
    health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap();

    // The same port in plaintext: no answer.
    let mut plain =
        tessera::pb::token_service_client::TokenServiceClient::new(app.endpoint().connect_lazy());
    let refused = plain.get_jwks(GetJwksRequest {}).await;
    assert!(refused.is_err(), "plaintext was answered on a TLS port");

    // A client that does not trust the server's CA does not get through.
    let stranger = Pki::new("another CA");
    let untrusted = app
        .tls_client(&stranger.ca_pem(), None)
        .get_jwks(GetJwksRequest {})
        .await;
    assert!(
        untrusted.is_err(),
        "a client trusting another CA got through"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_client_certificates_refuse_missing_and_untrusted_ones() {
    let pki = Pki::new("server and client CA");
    let ca = pki.ca_path();
    let (app, _db) = tls_app(&pki, |tls| {
        tls.client_ca = Some(ca);
        tls.client_auth = ClientAuth::Required;
    })
    .await;
    let trusted = pki.client(&["spiffe://example.org/billing"]);
    let stranger = Pki::new("a CA the server does not trust");
    let untrusted = stranger.client(&["spiffe://example.org/billing"]);

    let call = |identity: Option<&Leaf>| {
        let mut client = app.tls_client(&pki.ca_pem(), identity);
        async move { client.get_jwks(GetJwksRequest {}).await }
    };
    assert!(call(Some(&trusted)).await.is_ok());
    assert!(call(None).await.is_err(), "no certificate, yet answered");
    assert!(
        call(Some(&untrusted)).await.is_err(),
        "an untrusted certificate was accepted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optional_client_certificates_admit_clients_with_or_without_one() {
    let pki = Pki::new("server and client CA");
    let ca = pki.ca_path();
    let (app, _db) = tls_app(&pki, |tls| {
        tls.client_ca = Some(ca);
        tls.client_auth = ClientAuth::Optional;
    })
    .await;
    let trusted = pki.client(&["billing.example.org"]);
    let stranger = Pki::new("a CA the server does not trust").client(&["x.example.org"]);
    for (identity, ok) in [
        (None, true),
        (Some(&trusted), true),
        (Some(&stranger), false),
    ] {
        let answer = app
            .tls_client(&pki.ca_pem(), identity)
            .get_jwks(GetJwksRequest {})
            .await;
        assert_eq!(answer.is_ok(), ok, "{answer:?}");
    }
}

/// Writes `leaf` over `cert` and `key` the way cert-manager does: new files
/// renamed into place.
fn replace(cert: &Path, key: &Path, leaf: &Leaf) {
    for (path, pem) in [(key, &leaf.key_pem), (cert, &leaf.cert_pem)] {
        let staged = path.with_extension("new");
        std::fs::write(&staged, pem).unwrap();
        std::fs::rename(&staged, path).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_certificate_reaches_new_connections_and_open_ones_keep_working() {
    let first_ca = Pki::new("first CA");
    let second_ca = Pki::new("second CA");
    let (cert, key) = first_ca.write("server", &first_ca.server());
    let (app, _db) = spawn_app_with(Backend::Sqlite, |s| {
        s.tls = Some(tls_settings(&cert, &key));
    })
    .await;
    let mut before = app.tls_client(&first_ca.ca_pem(), None);
    before.get_jwks(GetJwksRequest {}).await.unwrap();

    replace(&cert, &key, &second_ca.server());
    let switched = eventually(Duration::from_secs(5), || async {
        app.tls_client(&second_ca.ca_pem(), None)
            .get_jwks(GetJwksRequest {})
            .await
            .is_ok()
    })
    .await;
    assert!(
        switched.is_some(),
        "new connections did not get the new certificate"
    );
    println!("new certificate served after {switched:?}");
    // The connection opened before still works (a new one trusting only
    // the first CA would now fail).
    before.get_jwks(GetJwksRequest {}).await.unwrap();
    assert!(
        app.tls_client(&first_ca.ca_pem(), None)
            .get_jwks(GetJwksRequest {})
            .await
            .is_err()
    );

    // A broken replacement is refused and the current certificate kept.
    std::fs::write(&cert, "not a certificate").unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    app.tls_client(&second_ca.ca_pem(), None)
        .get_jwks(GetJwksRequest {})
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_crate_never_dials_https_in_plaintext() {
    use secrecy::SecretString;
    use tessera_client::{
        AuthInterceptor, AuthLayer, Credentials, SourceConfig, TokenSource, Transport,
        TransportError,
        verify::{IntrospectionConfig, IntrospectionVerifier, JwksConfig, JwksVerifier},
    };
    use tonic::transport::Endpoint;

    let https = Endpoint::from_static("https://127.0.0.1:50051");
    let plaintext = Transport::default();
    let credentials = || Credentials::ClientCredentials {
        client_id: "svc".into(),
        client_secret: SecretString::from("s"),
    };
    let is_refused = |e: &TransportError| matches!(e, TransportError::TlsNotConfigured(_));
    let refused = TokenSource::connect(&https, &plaintext, credentials(), SourceConfig::default())
        .unwrap_err();
    assert!(is_refused(&refused), "{refused}");
    assert!(is_refused(
        &JwksVerifier::connect(&https, &plaintext, &JwksConfig::new("tessera", "tessera"))
            .unwrap_err()
    ));
    // The verifier's own token source, over a transport that is fine...
    let local = Endpoint::from_static("http://127.0.0.1:1");
    let source =
        TokenSource::connect(&local, &plaintext, credentials(), SourceConfig::default()).unwrap();
    let auth = AuthInterceptor::new(&source, &local, &plaintext).unwrap();
    // ...but the verifier's endpoint is https without TLS.
    assert!(is_refused(
        &IntrospectionVerifier::connect(&https, &plaintext, auth, IntrospectionConfig::new("x"))
            .unwrap_err()
    ));
    assert!(is_refused(
        &AuthInterceptor::new(&source, &https, &plaintext).unwrap_err()
    ));
    assert!(is_refused(
        &AuthLayer::new(source, &https, &plaintext).unwrap_err()
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_crate_gets_and_checks_tokens_over_mutual_tls() {
    use secrecy::SecretString;
    use tessera_client::{
        AuthInterceptor, ClientTls, Credentials, SourceConfig, TokenSource, Transport,
        verify::{IntrospectionConfig, IntrospectionVerifier, JwksConfig, JwksVerifier, Verifier},
    };
    use tonic::transport::Endpoint;

    let pki = Pki::new("CA");
    let ca = pki.ca_path();
    let (mut app, _db) = tls_app(&pki, |tls| tls.client_ca = Some(ca)).await;
    let identity = pki.client(&["orders.example.org"]);
    app.client = app.tls_client(&pki.ca_pem(), Some(&identity));
    app.add_user("alice", "pw", &["read"]).await;
    let secret = app.add_client("orders", &["tessera:introspect"], &[]).await;

    let endpoint = Endpoint::from_shared(format!("https://localhost:{}", app.addr.port())).unwrap();
    let tls = Transport::Tls(ClientTls::new().with_ca_pem(pki.ca_pem()).with_identity(
        &identity.cert_pem,
        SecretString::from(identity.key_pem.clone()),
    ));
    let source = TokenSource::connect(
        &endpoint,
        &tls,
        Credentials::ClientCredentials {
            client_id: "orders".into(),
            client_secret: SecretString::from(secret),
        },
        SourceConfig::default(),
    )
    .unwrap();
    source.ready().await.unwrap();
    let token = app.login("alice", "pw").await.unwrap().access_token;

    let auth = AuthInterceptor::new(&source, &endpoint, &tls).unwrap();
    let introspection =
        IntrospectionVerifier::connect(&endpoint, &tls, auth, IntrospectionConfig::new("tessera"))
            .unwrap();
    assert!(introspection.verify(&token).await.is_ok());
    let jwks =
        JwksVerifier::connect(&endpoint, &tls, &JwksConfig::new("tessera", "tessera")).unwrap();
    assert!(jwks.verify(&token).await.is_ok());
}

/// The test cluster's CA, when `scripts/test.sh` started it with TLS.
fn postgres_ca() -> Option<String> {
    let ca = std::env::var("TESSERA_TEST_PG_CA").ok();
    if ca.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run the PostgreSQL TLS test: scripts/test.sh sets TESSERA_TEST_PG_CA"
        );
        eprintln!(
            "skipped: TESSERA_TEST_PG_CA is not set (scripts/test.sh sets it for its own TLS cluster)"
        );
    }
    ca
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_connections_honour_sslmode() {
    let Some(ca) = postgres_ca() else {
        return;
    };
    let db = TestDatabase::new(Backend::Postgres).await;
    let with = |params: &str| format!("{}?{params}", db.url);
    // The full check: chain and host name.
    let store = tessera_server::connect_store(
        &with(&format!("sslmode=verify-full&sslrootcert={ca}")),
        1,
        true,
    )
    .await
    .expect("verify-full with the cluster's CA");
    store.ping().await.unwrap();
    let ssl: bool = {
        use sqlx::Connection;
        let mut conn =
            sqlx::PgConnection::connect(&with(&format!("sslmode=verify-full&sslrootcert={ca}")))
                .await
                .unwrap();
        sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(&mut conn)
            .await
            .unwrap()
    };
    assert!(ssl, "the connection was not encrypted");
    assert!(
        tessera_server::connect_store(&with("sslmode=require"), 1, false)
            .await
            .is_ok()
    );
    // A CA that did not sign the server's certificate: refused.
    let stranger = Pki::new("not the database's CA");
    let refused = tessera_server::connect_store(
        &with(&format!(
            "sslmode=verify-full&sslrootcert={}",
            stranger.ca_path().display()
        )),
        1,
        false,
    )
    .await;
    assert!(
        refused.is_err(),
        "verify-full accepted a server the CA did not sign"
    );
    // And a whole Tessera runs over it.
    let app = crate::helpers::spawn_app_on(&db, |s| {
        s.database_url =
            secrecy::SecretString::from(with(&format!("sslmode=verify-full&sslrootcert={ca}")));
    })
    .await;
    app.add_user("alice", "pw", &["read"]).await;
    app.login("alice", "pw").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_listener_speaks_tls_when_the_grpc_one_does() {
    use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let pki = Pki::new("server CA");
    let (cert, key) = pki.write("server", &pki.server());
    let tls = tls_settings(&cert, &key);
    let (app, _db) = spawn_app_with(Backend::Sqlite, |s: &mut Settings| {
        s.tls = Some(tls);
        s.http_addr = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let http = app.http_addr.unwrap();

    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(pki.ca_pem().as_bytes()).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(http).await.unwrap();
    let mut stream = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("a TLS handshake on the HTTP port");
    stream
        .write_all(
            b"GET /.well-known/jwks.json HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap_or_default();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"keys\""), "{answer}");

    // Plaintext HTTP on that port gets no answer.
    let mut plain = tokio::net::TcpStream::connect(http).await.unwrap();
    plain
        .write_all(b"GET /livez HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut said = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut said)).await;
    assert!(
        !String::from_utf8_lossy(&said).contains("200"),
        "plaintext was answered"
    );
}
