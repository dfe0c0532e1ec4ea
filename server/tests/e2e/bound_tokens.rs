//! RFC 8705: clients that authenticate by their TLS certificate, tokens
//! bound to it (`cnf.x5t#S256`), and verifiers that refuse a bound token
//! presented with any other certificate.

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, pem::PemObject};
use secrecy::SecretString;
use tessera::pb::{
    GetJwksRequest, GetJwksResponse, IntrospectRequest, IntrospectResponse, IssueRequest,
    IssueResponse, RefreshRequest, RefreshResponse, RevokeRequest, RevokeResponse,
    token_service_client::TokenServiceClient,
    token_service_server::{TokenService, TokenServiceServer},
};
use tessera_client::{
    ClientTls, Transport,
    verify::{ScopeRules, Verifier, VerifyError, VerifyLayer},
};
use tessera_server::{ClientAuth, NewClientCredential, Settings, TlsSettings};
use tonic::{
    Code, Request, Response, Status,
    transport::{Certificate, Endpoint, Identity, Server, ServerTlsConfig},
};

use crate::{
    helpers::{Backend, TestApp, TestDatabase, client_grant, spawn_app_with},
    pki::{Leaf, Pki},
};

fn der(leaf: &Leaf) -> Vec<u8> {
    CertificateDer::from_pem_slice(leaf.cert_pem.as_bytes())
        .unwrap()
        .to_vec()
}

/// A Tessera over TLS that verifies (but does not require) client certificates.
async fn mtls_app(pki: &Pki) -> (TestApp, TestDatabase) {
    let (cert, key) = pki.write("server", &pki.server());
    let tls = TlsSettings {
        cert,
        key,
        client_ca: Some(pki.ca_path()),
        client_auth: ClientAuth::Optional,
    };
    let (mut app, db) = spawn_app_with(Backend::Sqlite, |s: &mut Settings| s.tls = Some(tls)).await;
    app.use_tls(&pki.ca_pem());
    (app, db)
}

/// Issue with client credentials and no secret, over a connection
/// presenting `identity`.
async fn issue_by_certificate(
    app: &TestApp,
    pki: &Pki,
    client_id: &str,
    identity: Option<&Leaf>,
) -> Result<IssueResponse, Status> {
    app.tls_client(&pki.ca_pem(), identity)
        .issue(client_grant(client_id, ""))
        .await
        .map(Response::into_inner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_authenticated_by_its_certificate_gets_tokens_bound_to_it() {
    let pki = Pki::new("CA");
    let (app, _db) = mtls_app(&pki).await;
    let spiffe = "spiffe://example.org/billing";
    let secret = app
        .add_client_with(
            "billing",
            &["invoices:read"],
            &[],
            NewClientCredential::TlsSubject(spiffe.into()),
        )
        .await;
    assert!(secret.is_none(), "a certificate client got a secret");
    let billing = pki.client(&[spiffe]);
    let tokens = issue_by_certificate(&app, &pki, "billing", Some(&billing))
        .await
        .unwrap();
    assert!(tokens.refresh_token.is_empty());

    let bearer = app.introspector_token().await;
    let info = app
        .introspect_with(&bearer, &tokens.access_token)
        .await
        .unwrap();
    assert!(info.active);
    assert_eq!(info.cnf_x5t_s256, tessera_token::x5t_s256(&der(&billing)));
    // A secret-authenticated token is not bound.
    assert!(
        app.introspect_with(&bearer, &bearer)
            .await
            .unwrap()
            .cnf_x5t_s256
            .is_empty()
    );

    // Another certificate from the same CA, naming something else: refused.
    let other = pki.client(&["spiffe://example.org/payroll"]);
    let refused = issue_by_certificate(&app, &pki, "billing", Some(&other))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    // No certificate and no secret: the request is incomplete.
    let incomplete = issue_by_certificate(&app, &pki, "billing", None)
        .await
        .unwrap_err();
    assert_eq!(incomplete.code(), Code::InvalidArgument);
    assert!(
        incomplete.message().contains("mutual TLS"),
        "{incomplete:?}"
    );
    // A guessed secret gets nowhere either.
    let guessed = app
        .issue(client_grant("billing", "tsc_guess"))
        .await
        .unwrap_err();
    assert_eq!(guessed.code(), Code::Unauthenticated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_pinned_by_thumbprint_authenticates_with_that_certificate_only() {
    let pki = Pki::new("CA");
    let (app, _db) = mtls_app(&pki).await;
    let pinned = pki.client(&["agent.example.org"]);
    let sha256: [u8; 32] = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &der(&pinned))
        .as_ref()
        .try_into()
        .unwrap();
    app.add_client_with(
        "agent",
        &["read"],
        &[],
        NewClientCredential::TlsCertificate(sha256),
    )
    .await;
    assert!(
        issue_by_certificate(&app, &pki, "agent", Some(&pinned))
            .await
            .is_ok()
    );
    // Same name, same CA, another key: not the pinned certificate.
    let twin = pki.client(&["agent.example.org"]);
    assert_eq!(
        issue_by_certificate(&app, &pki, "agent", Some(&twin))
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );
}

/// A protected service: only GetJwks is implemented; the layer in front of
/// it does the work.
struct Protected;

#[tonic::async_trait]
impl TokenService for Protected {
    async fn issue(&self, _: Request<IssueRequest>) -> Result<Response<IssueResponse>, Status> {
        Err(Status::unimplemented("issue"))
    }
    async fn refresh(
        &self,
        _: Request<RefreshRequest>,
    ) -> Result<Response<RefreshResponse>, Status> {
        Err(Status::unimplemented("refresh"))
    }
    async fn revoke(&self, _: Request<RevokeRequest>) -> Result<Response<RevokeResponse>, Status> {
        Err(Status::unimplemented("revoke"))
    }
    async fn introspect(
        &self,
        _: Request<IntrospectRequest>,
    ) -> Result<Response<IntrospectResponse>, Status> {
        Err(Status::unimplemented("introspect"))
    }
    async fn get_jwks(
        &self,
        _: Request<GetJwksRequest>,
    ) -> Result<Response<GetJwksResponse>, Status> {
        Ok(Response::new(GetJwksResponse::default()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bound_token_is_refused_with_any_other_certificate() {
    let pki = Pki::new("CA");
    let (app, _db) = mtls_app(&pki).await;
    let spiffe = "spiffe://example.org/billing";
    app.add_client_with(
        "billing",
        &["read"],
        &[],
        NewClientCredential::TlsSubject(spiffe.into()),
    )
    .await;
    let billing = pki.client(&[spiffe]);
    let thief = pki.client(&[spiffe]);
    let token = issue_by_certificate(&app, &pki, "billing", Some(&billing))
        .await
        .unwrap()
        .access_token;

    // Both verifiers, directly.
    let introspection = app.introspection_verifier(|_| {}).await;
    let jwks = app.jwks_verifier(|_| {});
    for (verifier, which) in [
        (&introspection as &dyn Verifier, "introspection"),
        (&jwks, "jwks"),
    ] {
        assert!(
            verifier
                .verify_presented(&token, Some(&der(&billing)))
                .await
                .is_ok(),
            "{which}: refused with its own certificate"
        );
        for presented in [Some(der(&thief)), None] {
            assert!(
                matches!(
                    verifier
                        .verify_presented(&token, presented.as_deref())
                        .await,
                    Err(VerifyError::WrongCertificate)
                ),
                "{which}: accepted with another certificate or none"
            );
        }
    }

    // VerifyLayer in a real TLS service that asks for client certificates.
    let service_cert = pki.server();
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(
            &service_cert.cert_pem,
            &service_cert.key_pem,
        ))
        .client_ca_root(Certificate::from_pem(pki.ca_pem()))
        .client_auth_optional(true);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let rules = ScopeRules::new().require("/tessera.v1.TokenService/GetJwks", &["read"]);
    tokio::spawn(
        Server::builder()
            .tls_config(tls)
            .unwrap()
            .layer(VerifyLayer::new(Arc::new(jwks), rules))
            .add_service(TokenServiceServer::new(Protected))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    let call = |identity: &Leaf| {
        let transport = Transport::Tls(ClientTls::new().with_ca_pem(pki.ca_pem()).with_identity(
            &identity.cert_pem,
            SecretString::from(identity.key_pem.clone()),
        ));
        let endpoint = Endpoint::from_shared(format!("https://localhost:{port}")).unwrap();
        let channel = transport.prepare(&endpoint).unwrap().connect_lazy();
        let mut request = Request::new(GetJwksRequest {});
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        async move { TokenServiceClient::new(channel).get_jwks(request).await }
    };
    assert!(
        call(&billing).await.is_ok(),
        "the bound token was refused with its certificate"
    );
    let stolen = call(&thief).await.unwrap_err();
    assert_eq!(stolen.code(), Code::Unauthenticated, "{stolen:?}");
    assert!(stolen.message().contains("certificate"), "{stolen:?}");
}
