//! The HTTP listener, as gateways and probes use it: the JWKS URL with
//! caching headers, RFC 8414 metadata, /livez and /readyz.

use std::{
    io::{Read, Write},
    net::SocketAddr,
};

use jsonwebtoken::{Algorithm, DecodingKey, Validation, jwk::JwkSet};

use crate::helpers::{Backend, TestDatabase, spawn_app_on};

/// A plain HTTP/1.1 GET: status, headers (lower-case names), body.
fn get(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, Vec<(String, String)>, String) {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers, body.to_owned())
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> &'a str {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no {name} header in {headers:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwt_library_verifies_tokens_with_the_jwks_url_and_caching_headers_work() {
    let db = TestDatabase::new(Backend::Sqlite).await;
    let app = spawn_app_on(&db, |s| s.http_addr = Some("127.0.0.1:0".parse().unwrap())).await;
    let http = app.http_addr.expect("an HTTP listener");
    app.add_user("alice", "pw", &["read"]).await;
    let token = app.login("alice", "pw").await.unwrap().access_token;

    let (status, headers, body) = tokio::task::spawn_blocking(move || {
        get(http, "/.well-known/oauth-authorization-server", &[])
    })
    .await
    .unwrap();
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "content-type"), "application/json");
    let metadata: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(metadata["issuer"], "tessera");
    assert_eq!(
        metadata["access_token_signing_alg_values_supported"][0],
        "ES256"
    );
    let jwks_uri = metadata["jwks_uri"].as_str().unwrap().to_owned();
    let path = jwks_uri
        .strip_prefix(&format!("http://{http}"))
        .unwrap_or_else(|| panic!("jwks_uri {jwks_uri} is not on this listener"))
        .to_owned();

    let (status, headers, body) = tokio::task::spawn_blocking(move || get(http, &path, &[]))
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert!(header(&headers, "cache-control").contains("max-age=300"));
    let etag = header(&headers, "etag").to_owned();
    let first_etag = etag.clone();
    // An outside JWT library, given only this document, verifies the token.
    let set: JwkSet = serde_json::from_str(&body).unwrap();
    let kid = jsonwebtoken::decode_header(&token).unwrap().kid.unwrap();
    let jwk = set.find(&kid).expect("the signing key is in the JWKS");
    let mut validation = Validation::new(Algorithm::ES256);
    validation.set_audience(&["tessera"]);
    validation.set_issuer(&["tessera"]);
    let claims = jsonwebtoken::decode::<serde_json::Value>(
        &token,
        &DecodingKey::from_jwk(jwk).unwrap(),
        &validation,
    )
    .unwrap()
    .claims;
    assert_eq!(claims["scope"], "read");

    // A cache revalidating with the ETag gets 304 and no body.
    let (status, _, body) = tokio::task::spawn_blocking(move || {
        get(
            http,
            "/.well-known/jwks.json",
            &[("If-None-Match", &first_etag)],
        )
    })
    .await
    .unwrap();
    assert_eq!((status, body.as_str()), (304, ""));
    let (status, _, _) = tokio::task::spawn_blocking(move || {
        get(
            http,
            "/.well-known/jwks.json",
            &[("If-None-Match", "\"stale\"")],
        )
    })
    .await
    .unwrap();
    assert_eq!(status, 200);

    let probes = tokio::task::spawn_blocking(move || {
        (
            get(http, "/livez", &[]).0,
            get(http, "/readyz", &[]).0,
            get(http, "/nope", &[]).0,
        )
    })
    .await
    .unwrap();
    assert_eq!(probes, (200, 200, 404));
}

/// The sum of the samples of `name` whose labels include `labels`, in a
/// Prometheus text exposition.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_as_prometheus_text_and_move_with_the_calls_that_should_move_them() {
    let db = TestDatabase::new(Backend::Sqlite).await;
    let app = spawn_app_on(&db, |s| s.http_addr = Some("127.0.0.1:0".parse().unwrap())).await;
    let http = app.http_addr.unwrap();
    let scrape = || async move {
        let (status, headers, body) =
            tokio::task::spawn_blocking(move || get(http, "/metrics", &[]))
                .await
                .unwrap();
        assert_eq!(status, 200);
        assert!(header(&headers, "content-type").starts_with("text/plain"));
        body
    };
    app.add_user("alice", "pw", &["read"]).await;
    let before = scrape().await;

    let tokens = app.login("alice", "pw").await.unwrap();
    assert!(app.login("alice", "wrong").await.is_err());
    let bearer = app.introspector_token().await;
    assert!(
        app.introspect_with(&bearer, &tokens.access_token)
            .await
            .unwrap()
            .active
    );
    assert!(
        !app.introspect_with(&bearer, "garbage.garbage.garbage")
            .await
            .unwrap()
            .active
    );
    let refreshed = app.refresh(&tokens.refresh_token).await.unwrap();
    app.client
        .clone()
        .revoke(tessera::pb::RevokeRequest {
            token: refreshed.refresh_token,
            token_type_hint: 0,
        })
        .await
        .unwrap();

    let after = scrape().await;
    // Every line is a comment or `name{labels} value`.
    for line in after
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let value = line.rsplit(' ').next().unwrap();
        assert!(value.parse::<f64>().is_ok(), "not a sample: {line}");
    }
    let moved = |name: &str, labels: &[(&str, &str)]| {
        sample(&after, name, labels) - sample(&before, name, labels)
    };
    assert!(
        moved("tessera_tokens_issued_total", &[("grant", "password")]) >= 1.0,
        "{after}"
    );
    assert!(
        moved(
            "tessera_tokens_issued_total",
            &[("grant", "client_credentials")]
        ) >= 1.0
    );
    assert!(
        moved(
            "tessera_auth_failures_total",
            &[("grant", "password"), ("reason", "invalid_credentials")]
        ) >= 1.0
    );
    assert!(moved("tessera_introspections_total", &[("result", "active")]) >= 1.0);
    assert!(moved("tessera_introspections_total", &[("result", "inactive")]) >= 1.0);
    assert!(moved("tessera_refreshes_total", &[("outcome", "rotated")]) >= 1.0);
    assert!(moved("tessera_revocations_total", &[("kind", "session")]) >= 1.0);
    assert!(
        moved(
            "tessera_rpc_duration_seconds_count",
            &[("method", "Introspect"), ("code", "OK")]
        ) >= 2.0
    );
    assert!(
        moved(
            "tessera_rpc_duration_seconds_count",
            &[("method", "Issue"), ("code", "UNAUTHENTICATED")]
        ) >= 1.0
    );
    // Gauges: the hashing queue (set as logins queue and start).
    assert!(after.contains("\ntessera_hashing_queue_depth{"), "{after}");
    // No user or client names as labels.
    assert!(!after.contains("alice"));
}
