//! The HTTP listener for gateways and operators (`TESSERA_HTTP_ADDR`): the
//! JWK Set at a URL (with `Cache-Control` and `ETag`, so Envoy, Istio,
//! PyJWKClient and `jose.createRemoteJWKSet` can point at it), RFC 8414
//! metadata, Prometheus metrics, and liveness/readiness for probes. Over TLS when the gRPC
//! listener has it. axum routes on hyper, as tonic itself does.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use aws_lc_rs::digest;
use axum::{
    Router,
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
    service::TowerToHyperService,
};
use parking_lot::Mutex;
use tokio::{net::TcpListener, sync::Semaphore};
use tokio_rustls::TlsAcceptor;

use crate::{background::Background, domain::Authority};

/// How long verifiers may cache the JWK Set. Shorter than any sensible
/// publish-ahead time (`tessera keys rotate --activate-in`, 1h by default),
/// so every verifier has learnt a key before it signs.
pub const JWKS_MAX_AGE: Duration = Duration::from_secs(300);

/// Connections served at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 256;

/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether the replica is ready, as gRPC health reports it: `None` when
/// ready, else why not.
#[derive(Debug, Default)]
pub(crate) struct Readiness(Mutex<Option<String>>);

impl Readiness {
    /// Not ready until told otherwise.
    pub(crate) fn starting() -> Self {
        Self(Mutex::new(Some("starting".to_owned())))
    }

    /// Records the current state (`reasons` empty: ready).
    pub(crate) fn set(&self, reasons: &[&str]) {
        *self.0.lock() = (!reasons.is_empty()).then(|| reasons.join("; "));
    }

    fn why_not(&self) -> Option<String> {
        self.0.lock().clone()
    }
}

#[derive(Clone)]
struct Shared {
    authority: Arc<Authority>,
    readiness: Arc<Readiness>,
    issuer: String,
    scheme: &'static str,
    local_addr: SocketAddr,
}

/// Serves the routes on `listener` until the returned task is dropped.
pub(crate) fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    authority: Arc<Authority>,
    readiness: Arc<Readiness>,
    issuer: String,
) -> std::io::Result<(SocketAddr, Background)> {
    let local_addr = listener.local_addr()?;
    let shared = Shared {
        authority,
        readiness,
        issuer,
        scheme: if tls.is_some() { "https" } else { "http" },
        local_addr,
    };
    let router = Router::new()
        .route("/.well-known/jwks.json", get(jwks))
        .route("/.well-known/oauth-authorization-server", get(metadata))
        .route("/livez", get(|| async { "ok\n" }))
        .route(
            "/metrics",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                    crate::metrics::metrics().render(),
                )
            }),
        )
        .route("/readyz", get(readyz))
        .with_state(shared);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let task = tokio::spawn(async move {
        loop {
            let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
                return;
            };
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, say: back off, do not spin.
                    tracing::warn!(error = %e, "HTTP listener cannot accept");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let (router, tls) = (router.clone(), tls.clone());
            tokio::spawn(async move {
                let _permit = permit;
                let service = TowerToHyperService::new(router);
                let builder = auto::Builder::new(TokioExecutor::new());
                let served = match tls {
                    None => {
                        builder
                            .serve_connection(TokioIo::new(stream), service)
                            .await
                    }
                    Some(acceptor) => {
                        let Ok(Ok(stream)) =
                            tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
                        else {
                            return;
                        };
                        builder
                            .serve_connection(TokioIo::new(stream), service)
                            .await
                    }
                };
                if let Err(e) = served {
                    tracing::debug!(error = %e, "HTTP connection ended with an error");
                }
            });
        }
    });
    Ok((local_addr, Background(task)))
}

/// `GET /.well-known/jwks.json`: the same JWK Set as `GetJwks`.
async fn jwks(State(shared): State<Shared>, request: HeaderMap) -> Response {
    let body = shared.authority.jwks_json();
    let digest = digest::digest(&digest::SHA256, body.as_bytes());
    let etag: String = digest.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let etag = format!("\"{etag}\"");
    let cache = format!("public, max-age={}", JWKS_MAX_AGE.as_secs());
    let matches = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim() == etag || t.trim() == "*" || t.trim() == format!("W/{etag}"))
        });
    let headers = [
        (header::ETAG, etag),
        (header::CACHE_CONTROL, cache),
        (header::CONTENT_TYPE, "application/json".to_owned()),
    ];
    if matches {
        (StatusCode::NOT_MODIFIED, headers).into_response()
    } else {
        (headers, body).into_response()
    }
}

/// `GET /.well-known/oauth-authorization-server`: RFC 8414 metadata, the
/// fields that apply to a gRPC token service.
async fn metadata(State(shared): State<Shared>, request: HeaderMap) -> Response {
    let host = request
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map_or_else(|| shared.local_addr.to_string(), str::to_owned);
    let jwks: serde_json::Value =
        serde_json::from_str(&shared.authority.jwks_json()).unwrap_or_default();
    let mut algorithms: Vec<String> = jwks["keys"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|k| k["alg"].as_str().map(str::to_owned))
        .collect();
    algorithms.sort();
    algorithms.dedup();
    let body = serde_json::json!({
        "issuer": shared.issuer,
        "jwks_uri": format!("{}://{host}/.well-known/jwks.json", shared.scheme),
        "grant_types_supported": ["password", "client_credentials", "refresh_token"],
        "token_endpoint_auth_methods_supported": ["client_secret_post", "tls_client_auth"],
        "tls_client_certificate_bound_access_tokens": true,
        "access_token_signing_alg_values_supported": algorithms,
        "service_documentation": "gRPC: tessera.v1.TokenService (Issue, Refresh, Revoke, Introspect, GetJwks)",
    });
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body.to_string(),
    )
        .into_response()
}

/// `GET /readyz`: 200 when gRPC health reports SERVING, else 503 and why.
async fn readyz(State(shared): State<Shared>) -> Response {
    match shared.readiness.why_not() {
        None => (StatusCode::OK, "ready\n".to_owned()).into_response(),
        Some(reasons) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reasons}\n"),
        )
            .into_response(),
    }
}
