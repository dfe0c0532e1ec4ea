//! The client crate's events reach OpenTelemetry through the global meter
//! provider. A test binary of its own: the provider is process-global and
//! must be set before the first event, which no other test may race.
//!
//! The failures are real: the sources and verifiers dial a port nothing
//! listens on.

use std::time::Duration;

use opentelemetry_sdk::metrics::SdkMeterProvider;
use prometheus::{Encoder, TextEncoder};
use secrecy::SecretString;
use tessera_client::{
    Credentials, SourceConfig, TokenSource, Transport,
    verify::{JwksConfig, JwksVerifier, Verifier, VerifyError},
};
use tonic::transport::Endpoint;

/// A base64url JSON part of a hand-made token.
fn part(json: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
}

/// The value of the sample `name{event="..."}` in a text exposition.
fn sample(text: &str, name: &str, event: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.starts_with(&format!("{name}{{")) && l.contains(&format!("event=\"{event}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn token_source_and_verifier_events_are_counted_by_the_global_meter_provider() {
    let registry = prometheus::Registry::new();
    let exporter = opentelemetry_prometheus::exporter()
        .with_registry(registry.clone())
        .without_target_info()
        .build()
        .unwrap();
    opentelemetry::global::set_meter_provider(
        SdkMeterProvider::builder().with_reader(exporter).build(),
    );
    let scrape = || {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&registry.gather(), &mut out)
            .unwrap();
        String::from_utf8(out).unwrap()
    };

    // A port that was free a moment ago: connections are refused.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let endpoint = Endpoint::from_shared(format!("http://{closed}")).unwrap();
    let transport = Transport::default();

    let source = TokenSource::connect(
        &endpoint,
        &transport,
        Credentials::ClientCredentials {
            client_id: "billing".into(),
            client_secret: SecretString::from("secret"),
        },
        SourceConfig {
            min_backoff: Duration::from_millis(10),
            ..SourceConfig::default()
        },
    )
    .unwrap();
    let verifier = JwksVerifier::connect(
        &endpoint,
        &transport,
        &JwksConfig::new("tessera", "tessera"),
    )
    .unwrap();
    // Not a token at all: inactive without a lookup.
    assert!(matches!(
        verifier.verify("garbage").await,
        Err(VerifyError::Inactive)
    ));
    // A well-formed token of an unknown key: a lookup, which fails.
    let unknown_key = format!(
        "{}.{}.{}",
        part(r#"{"typ":"at+jwt","alg":"ES256","kid":"unknown"}"#),
        part(
            r#"{"iss":"tessera","sub":"x","aud":"tessera","exp":4102444800,"iat":1700000000,"jti":"j","client_id":"c","scope":"s"}"#
        ),
        part("signature"),
    );
    assert!(matches!(
        verifier.verify(&unknown_key).await,
        Err(VerifyError::Unavailable(_))
    ));

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = scrape();
        if sample(&text, "tessera_client_token_events_total", "failures") >= 1.0 {
            break text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no failure counted:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(tessera_client::source::SourceMetrics::get(&source.metrics().failures) >= 1);
    assert_eq!(
        sample(&text, "tessera_client_verifications_total", "inactive"),
        1.0,
        "{text}"
    );
    assert_eq!(
        sample(&text, "tessera_client_verifications_total", "lookups"),
        1.0,
        "{text}"
    );
    assert_eq!(
        sample(&text, "tessera_client_verifications_total", "cache_hits"),
        0.0,
        "{text}"
    );
}
