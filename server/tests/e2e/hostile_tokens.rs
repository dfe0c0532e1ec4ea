//! Hostile tokens (RFC 8725), one corpus run against every verifier Tessera
//! ships: `tessera_token` directly, the server's Introspect (as the token
//! asked about, and as the caller's bearer), and the client crate's
//! `JwksVerifier` and `IntrospectionVerifier`. Each case names one defect,
//! and each run also checks a control token that passes, so every rejection
//! is for the defect named. Verification does not depend on the backend, so
//! these run on SQLite.

use std::time::Duration;

use aws_lc_rs::{
    rand::SystemRandom,
    signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair},
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm as JwtAlgorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tessera_client::verify::{Verifier, VerifyError};
use tessera_server::{Algorithm, Clock, Kek};
use tessera_token::{SigningKey, VerifyRules, VerifyingKey};
use tonic::Code;

use crate::helpers::{Backend, TestApp, TestDatabase, spawn_app};

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn b64_json(value: &Value) -> String {
    b64(value.to_string().as_bytes())
}

/// A real token, the kid of the key that signed it, and the decoded claims.
struct Sample {
    token: String,
    kid: String,
    claims: Value,
}

async fn sample(app: &TestApp) -> Sample {
    app.add_user("alice", "pw", &["read"]).await;
    let token = app.login("alice", "pw").await.unwrap().access_token;
    let kid = jsonwebtoken::decode_header(&token).unwrap().kid.unwrap();
    let claims = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(token.split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap();
    Sample { token, kid, claims }
}

/// The server's real signing key, opened the way a replica opens it.
async fn real_key(app: &TestApp, db: &TestDatabase) -> SigningKey {
    let stored = app.store.signing_keys().await.unwrap().pop().unwrap();
    let kek = Kek::from_base64(&db.kek).unwrap();
    let pkcs8 = kek
        .open(&stored.encrypted_private_key, &stored.kid)
        .unwrap();
    SigningKey::from_pkcs8(&stored.kid, Algorithm::Es256, &pkcs8).unwrap()
}

/// `header.claims` signed with `key`, whatever the header says.
fn sign_as(key: &SigningKey, header: &Value, claims: &Value) -> String {
    let input = format!("{}.{}", b64_json(header), b64_json(claims));
    let signature = key.sign_raw(input.as_bytes()).unwrap();
    format!("{input}.{signature}")
}

/// Runs every case through every verifier, and the control token too.
async fn assert_every_verifier_rejects(app: &TestApp, control: &str, cases: &[(&str, String)]) {
    let bearer = app.introspector_token().await;
    let jwks: Vec<VerifyingKey> = serde_json::from_str::<Value>(&app.jwks().await).unwrap()["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| VerifyingKey::from_jwk_json(&k.to_string()).unwrap())
        .collect();
    let rules = VerifyRules {
        issuer: app.settings.tokens.issuer.clone(),
        audience: Some(app.settings.tokens.default_audience.as_str().to_owned()),
        leeway: app.settings.tokens.leeway,
        max_lifetime: app.settings.tokens.access_token_max_lifetime,
    };
    let now = app.clock.now().as_secs();
    let direct = |token: &str| {
        tessera_token::parse(token).and_then(|t| {
            let key = jwks
                .iter()
                .find(|k| k.kid() == t.kid())
                .ok_or(tessera_token::Rejected::UnknownKey)?;
            t.verify(key, &rules, now)
        })
    };
    let jwks_verifier = app.jwks_verifier(|_| {});
    let introspection_verifier = app
        .introspection_verifier(|c| c.negative_ttl = Duration::ZERO)
        .await;

    // The control passes everywhere.
    assert!(direct(control).is_ok(), "control rejected by tessera_token");
    assert!(
        app.introspect_with(&bearer, control).await.unwrap().active,
        "control rejected by Introspect"
    );
    assert!(jwks_verifier.verify(control).await.is_ok());
    assert!(introspection_verifier.verify(control).await.is_ok());

    for (name, token) in cases {
        assert!(direct(token).is_err(), "{name}: accepted by tessera_token");
        let answer = app
            .introspect_with(&bearer, token)
            .await
            .unwrap_or_else(|s| panic!("{name}: {s:?}"));
        assert_eq!(answer, Default::default(), "{name}: accepted by Introspect");
        let as_bearer = app.introspect_with(token, &bearer).await.unwrap_err();
        assert_eq!(as_bearer.code(), Code::Unauthenticated, "{name} as bearer");
        for (verifier, which) in [
            (&jwks_verifier as &dyn Verifier, "JwksVerifier"),
            (&introspection_verifier, "IntrospectionVerifier"),
        ] {
            assert!(
                matches!(verifier.verify(token).await, Err(VerifyError::Inactive)),
                "{name}: accepted by {which}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_mangled_tokens_are_rejected_by_every_verifier() {
    let (app, _db) = spawn_app(Backend::Sqlite).await;
    let Sample { token, kid, claims } = sample(&app).await;
    let [header, payload, signature]: [&str; 3] =
        token.split('.').collect::<Vec<_>>().try_into().unwrap();
    let mut cases: Vec<(&str, String)> = Vec::new();

    for alg in ["none", "None", "NONE", "nOnE"] {
        let h = b64_json(&json!({"alg": alg, "typ": "at+jwt", "kid": kid}));
        cases.push(("alg none, no signature", format!("{h}.{payload}.")));
        cases.push((
            "alg none, with signature",
            format!("{h}.{payload}.{signature}"),
        ));
    }

    // Key confusion: HS256 keyed with the public key, in the forms an
    // attacker could take from the JWKS.
    let jwks: Value = serde_json::from_str(&app.jwks().await).unwrap();
    let jwk = &jwks["keys"][0];
    let mut point = vec![4u8];
    point.extend(URL_SAFE_NO_PAD.decode(jwk["x"].as_str().unwrap()).unwrap());
    point.extend(URL_SAFE_NO_PAD.decode(jwk["y"].as_str().unwrap()).unwrap());
    for secret in [jwk.to_string().into_bytes(), point] {
        let mut h = Header::new(JwtAlgorithm::HS256);
        h.typ = Some("at+jwt".into());
        h.kid = Some(kid.clone());
        cases.push((
            "HS256 keyed with the public key",
            jsonwebtoken::encode(&h, &claims, &EncodingKey::from_secret(&secret)).unwrap(),
        ));
    }

    // Another key under the same kid, and keys the token brings itself.
    let attacker_pkcs8 =
        EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
            .unwrap();
    let attacker_pair =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, attacker_pkcs8.as_ref())
            .unwrap();
    let attacker = SigningKey::from_pkcs8(&kid, Algorithm::Es256, attacker_pkcs8.as_ref()).unwrap();
    let point = attacker_pair.public_key().as_ref();
    let attacker_jwk = json!({
        "kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256",
        "x": b64(&point[1..33]), "y": b64(&point[33..]),
    });
    let sign_with_header = |extra: Value| {
        let mut h = json!({"alg": "ES256", "typ": "at+jwt", "kid": kid});
        for (k, v) in extra.as_object().unwrap() {
            h[k] = v.clone();
        }
        sign_as(&attacker, &h, &claims)
    };
    cases.push((
        "another key under the same kid",
        sign_with_header(json!({})),
    ));
    cases.push((
        "embedded jwk",
        sign_with_header(json!({"jwk": attacker_jwk})),
    ));
    cases.push((
        "jku",
        sign_with_header(json!({"jku": "https://attacker.example/jwks"})),
    ));
    cases.push((
        "x5u",
        sign_with_header(json!({"x5u": "https://attacker.example/cert"})),
    ));
    cases.push(("x5c", sign_with_header(json!({"x5c": ["MIIB"]}))));
    cases.push((
        "unknown kid",
        sign_with_header(json!({"kid": "no-such-key"})),
    ));
    cases.push((
        "path traversal kid",
        sign_with_header(json!({"kid": "../../../../etc/passwd"})),
    ));
    cases.push(("missing kid", {
        let h = b64_json(&json!({"alg": "ES256", "typ": "at+jwt"}));
        format!("{h}.{payload}.{signature}")
    }));

    // The real signature kept, the payload changed.
    let mut elevated = claims.clone();
    elevated["scope"] = json!("read admin");
    cases.push((
        "payload swapped under a kept signature",
        format!("{header}.{}.{signature}", b64_json(&elevated)),
    ));
    cases.push((
        "header swapped under a kept signature",
        format!(
            "{}.{payload}.{signature}",
            b64_json(&json!({"alg": "ES256", "typ": "at+jwt", "kid": kid, "x": 1}))
        ),
    ));

    cases.push(("stripped signature", format!("{header}.{payload}.")));
    let mut sig = URL_SAFE_NO_PAD.decode(signature).unwrap();
    sig[10] ^= 0x01;
    cases.push((
        "bit-flipped signature",
        format!("{header}.{payload}.{}", b64(&sig)),
    ));
    cases.push(("two segments", format!("{header}.{payload}")));
    cases.push(("four segments", format!("{token}.{signature}")));
    cases.push(("padded header", format!("{header}==.{payload}.{signature}")));
    cases.push((
        "padded payload",
        format!("{header}.{payload}==.{signature}"),
    ));
    cases.push(("padded signature", format!("{token}==")));
    // Only meaningful for a token that has a `-` or `_` (about 6% of ES256
    // signatures have neither), so draw tokens until one does.
    let mut with_url_safe_chars = token.clone();
    while !with_url_safe_chars.contains(['-', '_']) {
        with_url_safe_chars = app.login("alice", "pw").await.unwrap().access_token;
    }
    cases.push((
        "standard base64 alphabet",
        with_url_safe_chars.replace('-', "+").replace('_', "/"),
    ));
    cases.push((
        "non-JSON header",
        format!("{}.{payload}.{signature}", b64(b"not json")),
    ));
    cases.push((
        "JSON array header",
        format!("{}.{payload}.{signature}", b64(b"[1,2]")),
    ));
    cases.push(("empty string segments", "..".into()));
    cases.push((
        "whitespace inside",
        format!("{header} .{payload}.{signature}"),
    ));

    assert_every_verifier_rejects(&app, &token, &cases).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_signed_by_the_real_key_with_bad_headers_or_claims_are_rejected_by_every_verifier() {
    let (app, db) = spawn_app(Backend::Sqlite).await;
    let Sample { kid, claims, .. } = sample(&app).await;
    let key = real_key(&app, &db).await;
    let now = app.clock.now().as_secs();
    let sign = |header: Value, claims: &Value| sign_as(&key, &header, claims);
    let good_header = json!({"alg": "ES256", "typ": "at+jwt", "kid": kid});
    let with = |k: &str, v: Value| {
        let mut c = claims.clone();
        c[k] = v;
        c
    };
    let without = |k: &str| {
        let mut c = claims.clone();
        c.as_object_mut().unwrap().remove(k);
        c
    };
    let header_with = |k: &str, v: Value| {
        let mut h = good_header.clone();
        h[k] = v;
        h
    };

    // Control: the real key with good claims.
    let control = sign(good_header.clone(), &claims);

    let mut cases: Vec<(&str, String)> = vec![
        ("typ JWT", sign(header_with("typ", json!("JWT")), &claims)),
        ("no typ", sign(json!({"alg": "ES256", "kid": kid}), &claims)),
        (
            "crit header",
            sign(header_with("crit", json!(["exp"])), &claims),
        ),
        (
            "alg named in another case",
            sign(header_with("alg", json!("es256")), &claims),
        ),
        (
            "wrong issuer",
            sign(
                good_header.clone(),
                &with("iss", json!("https://evil.example")),
            ),
        ),
        (
            "issuer as a list",
            sign(good_header.clone(), &with("iss", json!(["tessera"]))),
        ),
        (
            "expired beyond leeway",
            sign(good_header.clone(), &with("exp", json!(now - 6))),
        ),
        (
            "issued in the future",
            sign(good_header.clone(), &with("iat", json!(now + 60))),
        ),
        (
            "not yet valid",
            sign(good_header.clone(), &with("nbf", json!(now + 60))),
        ),
        (
            "lifetime longer than the maximum",
            sign(good_header.clone(), &{
                let mut c = with("iat", json!(now));
                c["exp"] = json!(now + 24 * 3600 + 1);
                c
            }),
        ),
        (
            "exp before iat",
            sign(good_header.clone(), &{
                let mut c = with("iat", json!(now));
                c["exp"] = json!(now - 1);
                c
            }),
        ),
        (
            "lifetime overflowing i64",
            sign(good_header.clone(), &{
                let mut c = with("iat", json!(-1));
                c["exp"] = json!(i64::MAX);
                c
            }),
        ),
        (
            "aud a number",
            sign(good_header.clone(), &with("aud", json!(42))),
        ),
        (
            "exp a string",
            sign(
                good_header.clone(),
                &with("exp", json!(format!("{}", now + 60))),
            ),
        ),
        (
            "scope a list",
            sign(good_header.clone(), &with("scope", json!(["read"]))),
        ),
    ];
    for claim in [
        "iss",
        "sub",
        "aud",
        "exp",
        "iat",
        "nbf",
        "jti",
        "client_id",
        "scope",
        "sid",
    ] {
        cases.push((claim, sign(good_header.clone(), &without(claim))));
    }
    assert_every_verifier_rejects(&app, &control, &cases).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_token_is_not_accepted_as_an_access_token() {
    let (app, _db) = spawn_app(Backend::Sqlite).await;
    app.add_user("alice", "pw", &["read", "tessera:introspect"])
        .await;
    let tokens = app.login("alice", "pw").await.unwrap();
    let as_bearer = app
        .introspect_with(&tokens.refresh_token, &tokens.access_token)
        .await
        .unwrap_err();
    assert_eq!(as_bearer.code(), Code::Unauthenticated);
    // The access token of the same login does work as a bearer.
    assert!(
        app.introspect_with(&tokens.access_token, &tokens.access_token)
            .await
            .unwrap()
            .active
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_tokens_are_rejected_before_decoding() {
    let (app, _db) = spawn_app(Backend::Sqlite).await;
    let bearer = app.introspector_token().await;
    let huge = format!(
        "{}.{}.{}",
        "a".repeat(4096),
        "b".repeat(4096),
        "c".repeat(10)
    );
    let status = app.introspect_with(&bearer, &huge).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = app.introspect_with(&huge, "x").await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_over_64_kib_are_refused() {
    let (app, _db) = spawn_app(Backend::Sqlite).await;
    let mut request = crate::helpers::password_grant("alice", "pw");
    request.scopes = vec!["s".repeat(100); 700];
    let status = app.issue(request).await.unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_from_another_tessera_are_inactive() {
    let (app, _db) = spawn_app(Backend::Sqlite).await;
    let (other, _other_db) = spawn_app(Backend::Sqlite).await;
    other.add_user("alice", "pw", &["read"]).await;
    let foreign = other.login("alice", "pw").await.unwrap().access_token;
    let bearer = app.introspector_token().await;
    assert!(!app.introspect_with(&bearer, &foreign).await.unwrap().active);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_with_an_access_token_says_it_wants_a_refresh_token() {
    let (app, _db) = spawn_app(Backend::Sqlite).await;
    app.add_user("alice", "pw", &["read"]).await;
    let tokens = app.login("alice", "pw").await.unwrap();
    let status = app
        .client
        .clone()
        .refresh(tessera::pb::RefreshRequest {
            refresh_token: tokens.access_token,
            scopes: Vec::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("tsr_"), "{status:?}");
    // A refresh token that merely does not exist is still just refused.
    let unknown = app
        .client
        .clone()
        .refresh(tessera::pb::RefreshRequest {
            refresh_token: "tsr_unknown".into(),
            scopes: Vec::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::Unauthenticated);
}
