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
