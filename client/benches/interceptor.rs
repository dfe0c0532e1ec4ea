//! Overhead of `AuthInterceptor` on unary calls, as a ratio against the same
//! calls without it, measured in one run against a real Tessera on loopback.
//! Rounds alternate between the two clients so machine noise hits both
//! alike; the medians of the per-round times are compared.
//!
//! Run: `cargo bench -p tessera-client --bench interceptor`

use std::{sync::Arc, time::Instant};

use secrecy::SecretString;
use tessera::pb::{GetJwksRequest, token_service_client::TokenServiceClient};
use tessera_client::{AuthInterceptor, Credentials, Plaintext, SourceConfig, TokenSource};
use tessera_server::{
    clock::{Clock, SystemClock},
    config::Settings,
    domain::{ClientId, ScopeSet, admin},
    startup::{self, Application},
};
use tonic::{Request, service::Interceptor, transport::Endpoint};

const ROUNDS: usize = 30;
const CALLS_PER_ROUND: usize = 500;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let data = tempfile::tempdir()?;
    let settings = Settings::embedded(data.path())?;
    let app = Application::build(settings.clone(), Arc::new(SystemClock)).await?;
    let endpoint = Endpoint::from_shared(format!("http://{}", app.local_addr()))?;
    tokio::spawn(app.run_until(std::future::pending()));
    let store = startup::open_store(&settings).await?;
    let secret = admin::add_client(
        &*store,
        ClientId::parse("bench")?,
        ScopeSet::parse_list(&["read"])?,
        Vec::new(),
        SystemClock.now(),
    )
    .await?;

    let credentials = Credentials::ClientCredentials {
        client_id: "bench".into(),
        client_secret: SecretString::from(secret),
    };
    let source = TokenSource::connect(
        &endpoint,
        Plaintext::LoopbackOnly,
        credentials,
        SourceConfig::default(),
    )?;
    source.ready().await?;
    let auth = AuthInterceptor::new(&source, &endpoint, Plaintext::LoopbackOnly)?;
    let channel = endpoint.connect().await?;
    let mut plain = TokenServiceClient::new(channel.clone());
    let mut intercepted = TokenServiceClient::with_interceptor(channel, auth.clone());

    // Warm up both paths (connection, HPACK tables, allocator).
    for _ in 0..CALLS_PER_ROUND {
        plain.get_jwks(GetJwksRequest {}).await?;
        intercepted.get_jwks(GetJwksRequest {}).await?;
    }
    let (mut without, mut with) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        // Alternate which goes first, so neither always runs on a warmer machine.
        for first in [round % 2 == 0, round % 2 != 0] {
            let started = Instant::now();
            for _ in 0..CALLS_PER_ROUND {
                if first {
                    plain.get_jwks(GetJwksRequest {}).await?;
                } else {
                    intercepted.get_jwks(GetJwksRequest {}).await?;
                }
            }
            let per_call = started.elapsed().as_secs_f64() / CALLS_PER_ROUND as f64;
            if first {
                without.push(per_call);
            } else {
                with.push(per_call);
            }
        }
    }
    let (without, with) = (median(without), median(with));

    // The interceptor alone: what it adds to each call on the cached path.
    let mut interceptor = auth;
    let n = 1_000_000;
    let started = Instant::now();
    for _ in 0..n {
        std::hint::black_box(interceptor.call(Request::new(()))?);
    }
    let interceptor_alone = started.elapsed().as_secs_f64() / f64::from(n);

    println!("unary GetJwks on loopback, {ROUNDS} rounds x {CALLS_PER_ROUND} calls, medians:");
    println!("  without interceptor: {:>8.1} us/call", without * 1e6);
    println!("  with interceptor:    {:>8.1} us/call", with * 1e6);
    println!(
        "  ratio with/without:  {:>8.4} ({:+.2}%)",
        with / without,
        (with / without - 1.0) * 100.0
    );
    println!(
        "  interceptor alone:   {:>8.1} ns/call = {:.3}% of a call (target: under 2%)",
        interceptor_alone * 1e9,
        interceptor_alone / without * 100.0
    );
    Ok(())
}
