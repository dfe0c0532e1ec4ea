//! Overhead of `AuthInterceptor` on unary calls, as a ratio against the same
//! calls without it, measured in one run against a real Tessera on loopback.
//! Three clients share one connection: no token, a prebuilt token header
//! attached by a trivial closure (the cost of carrying any bearer token,
//! which is marked sensitive and so never HPACK-indexed), and
//! `AuthInterceptor`. Rounds rotate between them so machine noise hits all
//! alike; the medians of the per-round times are compared.
//!
//! Run: `cargo bench -p tessera-bench --bench interceptor`

use std::sync::Arc;

use tessera::pb::{GetJwksRequest, token_service_client::TokenServiceClient};
use tessera_client::{AuthInterceptor, Credentials, SourceConfig, TokenSource, Transport};
use tessera_server::{
    Application, ClientId, NewClientCredential, ScopeSet, Settings, SystemClock, open_admin,
};
use tokio::time::Instant;
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
    let mut settings = Settings::new(data.path());
    settings.listen_addr = "127.0.0.1:0".parse()?;
    let app = Application::build(settings.clone(), Arc::new(SystemClock)).await?;
    let endpoint = Endpoint::from_shared(format!("http://{}", app.local_addr()))?;
    tokio::spawn(app.run_until(std::future::pending()));
    let admin = open_admin(&settings, Arc::new(SystemClock)).await?;
    let secret = admin
        .add_client(
            ClientId::parse("bench")?,
            ScopeSet::parse_list(&["read"])?,
            Vec::new(),
            ScopeSet::default(),
            NewClientCredential::Secret,
        )
        .await?
        .expect("a secret client has a secret");

    let credentials = Credentials::ClientCredentials {
        client_id: "bench".into(),
        client_secret: secret,
    };
    let source = TokenSource::connect(
        &endpoint,
        &Transport::default(),
        credentials,
        SourceConfig::default(),
    )?;
    source.ready().await?;
    let auth = AuthInterceptor::new(&source, &endpoint, &Transport::default())?;
    let channel = endpoint.connect().await?;
    let mut plain = TokenServiceClient::new(channel.clone());
    let mut intercepted = TokenServiceClient::with_interceptor(channel.clone(), auth.clone());
    // The same sensitive header, prebuilt and attached by a trivial closure:
    // what carrying any bearer token costs, whoever attaches it.
    let fixed = source.current().expect("a token").header().clone();
    let mut fixed_header =
        TokenServiceClient::with_interceptor(channel, move |mut request: Request<()>| {
            request
                .metadata_mut()
                .insert("authorization", fixed.clone());
            Ok(request)
        });

    // Warm up every path (connection, HPACK tables, allocator).
    for _ in 0..CALLS_PER_ROUND {
        plain.get_jwks(GetJwksRequest {}).await?;
        intercepted.get_jwks(GetJwksRequest {}).await?;
        fixed_header.get_jwks(GetJwksRequest {}).await?;
    }
    let mut per_call = [Vec::new(), Vec::new(), Vec::new()];
    for round in 0..ROUNDS {
        // Rotate the order, so no variant always runs on a warmer machine.
        for k in 0..3 {
            let variant = (round + k) % 3;
            let started = Instant::now();
            for _ in 0..CALLS_PER_ROUND {
                match variant {
                    0 => drop(plain.get_jwks(GetJwksRequest {}).await?),
                    1 => drop(intercepted.get_jwks(GetJwksRequest {}).await?),
                    _ => drop(fixed_header.get_jwks(GetJwksRequest {}).await?),
                }
            }
            per_call[variant].push(started.elapsed().as_secs_f64() / CALLS_PER_ROUND as f64);
        }
    }
    let [without, with, fixed] = per_call.map(median);

    // The interceptor alone: what it adds to each call on the cached path.
    let mut interceptor = auth;
    let n = 1_000_000;
    let started = Instant::now();
    for _ in 0..n {
        std::hint::black_box(interceptor.call(Request::new(()))?);
    }
    let interceptor_alone = started.elapsed().as_secs_f64() / f64::from(n);

    println!("unary GetJwks on loopback, {ROUNDS} rounds x {CALLS_PER_ROUND} calls, medians:");
    println!(
        "  no token:                        {:>8.1} us/call",
        without * 1e6
    );
    println!(
        "  prebuilt token header (closure): {:>8.1} us/call",
        fixed * 1e6
    );
    println!(
        "  AuthInterceptor:                 {:>8.1} us/call",
        with * 1e6
    );
    println!(
        "  AuthInterceptor / prebuilt header: {:.4} ({:+.2}%)  <- the interceptor's own overhead (target: under 2%)",
        with / fixed,
        (with / fixed - 1.0) * 100.0
    );
    println!(
        "  AuthInterceptor / no token:        {:.4} ({:+.2}%)  <- includes sending the token itself",
        with / without,
        (with / without - 1.0) * 100.0
    );
    println!(
        "  interceptor call alone: {:.1} ns = {:.3}% of a call",
        interceptor_alone * 1e9,
        interceptor_alone / without * 100.0
    );
    Ok(())
}
