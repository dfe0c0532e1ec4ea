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
    app.client = app.tls_client(&pki.ca_pem(), None);
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
