//! The load benchmark: real `tessera serve` processes (release build) on
//! SQLite and PostgreSQL, driven closed-loop at a fixed concurrency over a
//! few HTTP/2 connections, every figure printed as a ratio against a
//! baseline measured in the same run (rounds interleaved, medians with the
//! spread). Server CPU per call is read from `/proc/<pid>/stat`, and the
//! load generator's own (`gen`) the same way: both share the machine, so a
//! workload that costs the generator more lowers its ratio too.
//!
//! Run it with `scripts/bench.sh` (it builds in release and starts a
//! throwaway PostgreSQL); `scripts/bench.sh --only introspect,refresh`
//! runs some sections; `--seconds` and `--rounds` change the windows;
//! `--log info` runs the servers with the default logging (else `warn`);
//! `--perf "record -F 999 -g"` profiles each workload's first window of the
//! server with `perf` into `perf-<workload>.data`.

use std::{
    future::Future,
    io::{BufRead, BufReader, Write},
    path::PathBuf,
    pin::Pin,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use parking_lot::Mutex;
use secrecy::{ExposeSecret, SecretString};
use tessera::pb::{
    ClientCredentialsGrant, GetJwksRequest, IntrospectRequest, IssueRequest, PasswordGrant,
    RefreshRequest, RevokeRequest, issue_request::Grant, token_service_client::TokenServiceClient,
};
use tessera_server::{Kek, connect_store};
use tessera_token::{AccessClaims, Audience, SigningKey};
use tokio::time::Instant;
use tonic::{
    Request,
    metadata::{Ascii, MetadataValue},
    transport::Channel,
};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

/// One call of a workload: given a channel, the calling task's index and
/// the call's sequence number, true when it succeeded.
type Call =
    Arc<dyn Fn(Channel, usize, u64) -> Pin<Box<dyn Future<Output = bool> + Send>> + Send + Sync>;

/// Alice's password.
const PASSWORD: &str = "correct horse battery";

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_owned())
}

/// The run's shape, from the command line.
struct Plan {
    seconds: f64,
    rounds: usize,
    concurrency: usize,
    connections: usize,
    only: Vec<String>,
    /// The signing algorithm of the Introspect section's server.
    alg: String,
    /// `perf` arguments (`--perf "record -F 999 -g"`): each workload's first
    /// window is profiled into `perf-<workload>.data`.
    perf: Option<String>,
}

impl Plan {
    fn wants(&self, section: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|s| s == section)
    }
}

// ---------------------------------------------------------------- servers

/// A `tessera serve` child process and what it needs.
struct Server {
    child: Child,
    addr: String,
    data: tempfile::TempDir,
    url: String,
    kek: String,
    secret: String,
    /// The CA (PEM) to trust when the server speaks TLS.
    ca: Option<String>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tessera_bin() -> PathBuf {
    std::env::current_exe().unwrap().with_file_name("tessera")
}

fn tessera(data: &std::path::Path, url: &str, kek: &str) -> Command {
    let mut command = Command::new(tessera_bin());
    command
        .env("TESSERA_DATA_DIR", data)
        .env("TESSERA_DATABASE_URL", url)
        .env("TESSERA_KEY_ENCRYPTION_KEY", kek)
        // `--log info` measures with the service's default logging.
        .env(
            "RUST_LOG",
            arg("--log", "warn,tessera_server::startup=info"),
        );
    command
}

fn run(command: &mut Command, stdin: &str) -> String {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run tessera");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Drops the PostgreSQL database at `url` (its servers stopped), so runs
/// against a cluster of one's own do not pile databases up.
async fn drop_database(admin: &str, url: &str) {
    use sqlx::{Connection, Executor};
    let name = url.rsplit('/').next().unwrap();
    let mut conn = sqlx::PgConnection::connect(admin).await.unwrap();
    conn.execute(format!(r#"DROP DATABASE "{name}" WITH (FORCE)"#).as_str())
        .await
        .unwrap();
}

/// A fresh database URL: a new PostgreSQL database, or a SQLite file.
async fn database(postgres: Option<&str>, data: &std::path::Path) -> String {
    match postgres {
        None => format!("sqlite://{}?mode=rwc", data.join("tessera.db").display()),
        Some(admin) => {
            use sqlx::{Connection, Executor};
            let name = format!(
                "bench_{}",
                tessera_server::random_id()
                    .to_lowercase()
                    .replace(['-', '_'], "")
            );
            let mut conn = sqlx::PgConnection::connect(admin).await.unwrap();
            conn.execute(format!(r#"CREATE DATABASE "{name}""#).as_str())
                .await
                .unwrap();
            let base = admin.rsplit_once('/').unwrap().0;
            format!("{base}/{name}")
        }
    }
}

impl Server {
    /// A server on a fresh database with a client `bench` (allowed to
    /// introspect) and a user `alice`; `env` sets more of its settings.
    async fn start(postgres: Option<&str>, env: &[(&str, &str)]) -> Self {
        let data = tempfile::tempdir().unwrap();
        let url = database(postgres, data.path()).await;
        let kek = Kek::generate_base64().expose_secret().to_owned();
        let secret = run(
            tessera(data.path(), &url, &kek).args([
                "client",
                "add",
                "bench",
                "--scope",
                "tessera:introspect",
                "--scope",
                "read",
            ]),
            "",
        )
        .lines()
        .last()
        .unwrap()
        .to_owned();
        run(
            tessera(data.path(), &url, &kek).args(["user", "add", "alice", "--scope", "read"]),
            &format!("{PASSWORD}\n"),
        );
        Self::serve(data, url, kek, secret, env)
    }

    /// Another replica on the same database.
    fn replica(&self) -> Self {
        let data = tempfile::tempdir().unwrap();
        Self::serve(
            data,
            self.url.clone(),
            self.kek.clone(),
            self.secret.clone(),
            &[],
        )
    }

    fn serve(
        data: tempfile::TempDir,
        url: String,
        kek: String,
        secret: String,
        env: &[(&str, &str)],
    ) -> Self {
        let mut command = tessera(data.path(), &url, &kek);
        command.args(["serve", "--listen-addr", "127.0.0.1:0"]);
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut said = Vec::new();
        let addr = loop {
            let Some(Ok(line)) = lines.next() else {
                panic!("tessera serve exited:\n{}", said.join("\n"));
            };
            said.push(line.clone());
            if let Some((_, rest)) = line.split_once("serving tessera.v1.TokenService addr=") {
                break rest.split_whitespace().next().unwrap().to_owned();
            }
        };
        std::thread::spawn(move || lines.for_each(drop));
        Self {
            child,
            addr,
            data,
            url,
            kek,
            secret,
            ca: None,
        }
    }

    fn data_dir(&self) -> &std::path::Path {
        self.data.path()
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    async fn channels(&self, n: usize) -> Vec<Channel> {
        let mut channels = Vec::new();
        for _ in 0..n {
            let endpoint = match &self.ca {
                None => Channel::from_shared(format!("http://{}", self.addr)).unwrap(),
                Some(ca) => Channel::from_shared(format!("https://{}", self.addr))
                    .unwrap()
                    .tls_config(
                        tonic::transport::ClientTlsConfig::new()
                            .ca_certificate(tonic::transport::Certificate::from_pem(ca)),
                    )
                    .unwrap(),
            };
            channels.push(endpoint.connect().await.unwrap());
        }
        channels
    }

    async fn client(&self) -> TokenServiceClient<Channel> {
        TokenServiceClient::new(self.channels(1).await.remove(0))
    }

    async fn client_token(&self) -> String {
        self.client()
            .await
            .issue(client_grant("bench", &self.secret))
            .await
            .unwrap()
            .into_inner()
            .access_token
    }

    /// The server's current signing key, opened as a replica opens it.
    async fn signing_key(&self) -> SigningKey {
        let store = connect_store(&self.url, 1, false).await.unwrap();
        let stored = store.signing_keys().await.unwrap().pop().unwrap();
        let kek = Kek::from_base64(&SecretString::from(self.kek.clone())).unwrap();
        let pkcs8 = kek
            .open(&stored.encrypted_private_key, &stored.kid)
            .unwrap();
        SigningKey::from_pkcs8(&stored.kid, stored.alg.parse().unwrap(), &pkcs8).unwrap()
    }
}

fn client_grant(id: &str, secret: &str) -> IssueRequest {
    IssueRequest {
        grant: Some(Grant::ClientCredentials(ClientCredentialsGrant {
            client_id: id.into(),
            client_secret: secret.into(),
        })),
        scopes: Vec::new(),
        audience: String::new(),
    }
}

/// An `authorization` value, made once and cloned per call (as a client
/// library holding its token does).
fn authorization(bearer: &str) -> MetadataValue<Ascii> {
    format!("Bearer {bearer}").parse().unwrap()
}

fn password_grant() -> IssueRequest {
    IssueRequest {
        grant: Some(Grant::Password(PasswordGrant {
            username: "alice".into(),
            password: PASSWORD.into(),
        })),
        scopes: Vec::new(),
        audience: String::new(),
    }
}

fn introspect(authorization: &MetadataValue<Ascii>, token: &str) -> Request<IntrospectRequest> {
    let mut request = Request::new(IntrospectRequest {
        token: token.to_owned(),
        token_type_hint: 0,
    });
    request
        .metadata_mut()
        .insert("authorization", authorization.clone());
    request
}

async fn introspect_active(channel: Channel, request: Request<IntrospectRequest>) -> bool {
    TokenServiceClient::new(channel)
        .introspect(request)
        .await
        .is_ok_and(|r| r.into_inner().active)
}

/// CPU seconds process `pid` has used.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let Some((_, rest)) = stat.rsplit_once(") ") else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// Resident memory of process `pid`, MiB.
fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

// ---------------------------------------------------------------- load

/// One measured window. Only successful calls count towards throughput;
/// every call's latency is kept.
#[derive(Debug, Clone, Default)]
struct Sample {
    calls: u64,
    errors: u64,
    seconds: f64,
    server_cpu: f64,
    /// This process's CPU over the window: the load generator's cost.
    generator_cpu: f64,
    latencies_us: Vec<u32>,
}

impl Sample {
    fn rps(&self) -> f64 {
        self.calls as f64 / self.seconds
    }
    fn cpu_us_per_call(&self) -> f64 {
        self.server_cpu * 1e6 / self.calls.max(1) as f64
    }
    fn generator_us_per_call(&self) -> f64 {
        self.generator_cpu * 1e6 / self.calls.max(1) as f64
    }
    fn percentile_ms(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return 0.0;
        }
        let mut v = self.latencies_us.clone();
        v.sort_unstable();
        let i = ((v.len() as f64 - 1.0) * p).round() as usize;
        f64::from(v[i]) / 1000.0
    }
}

/// Runs `call` closed-loop from `concurrency` tasks over `channels` for
/// `seconds`, measuring `pid`'s CPU.
async fn drive(
    channels: &[Channel],
    concurrency: usize,
    seconds: f64,
    pid: u32,
    call: &Call,
) -> Sample {
    let counter = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let cpu_before = cpu_seconds(pid);
    let generator_before = cpu_seconds(std::process::id());
    let started = Instant::now();
    let stop = started + Duration::from_secs_f64(seconds);
    let tasks: Vec<_> = (0..concurrency)
        .map(|t| {
            let channel = channels[t % channels.len()].clone();
            let (call, counter, errors) =
                (Arc::clone(call), Arc::clone(&counter), Arc::clone(&errors));
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(4096);
                while Instant::now() < stop {
                    let n = counter.fetch_add(1, Ordering::Relaxed);
                    let at = Instant::now();
                    if !call(channel.clone(), t, n).await {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                    latencies.push(u32::try_from(at.elapsed().as_micros()).unwrap_or(u32::MAX));
                }
                latencies
            })
        })
        .collect();
    let mut latencies_us = Vec::new();
    for task in tasks {
        latencies_us.extend(task.await.unwrap());
    }
    let seconds = started.elapsed().as_secs_f64();
    let errors = errors.load(Ordering::Relaxed);
    Sample {
        calls: latencies_us.len() as u64 - errors,
        errors,
        seconds,
        server_cpu: cpu_seconds(pid) - cpu_before,
        generator_cpu: cpu_seconds(std::process::id()) - generator_before,
        latencies_us,
    }
}

/// The median; NaN (printed as such) for a figure not measured.
fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The least and the greatest of `v`.
fn bounds(v: &[f64]) -> (f64, f64) {
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (lo, hi)
}

/// Per-round figures of one workload.
#[derive(Default)]
struct Series {
    rps: Vec<f64>,
    cpu: Vec<f64>,
    generator_cpu: Vec<f64>,
    p50: Vec<f64>,
    p99: Vec<f64>,
    errors: u64,
}

impl Series {
    fn push(&mut self, s: &Sample) {
        self.rps.push(s.rps());
        self.cpu.push(s.cpu_us_per_call());
        self.generator_cpu.push(s.generator_us_per_call());
        self.p50.push(s.percentile_ms(0.5));
        self.p99.push(s.percentile_ms(0.99));
        self.errors += s.errors;
    }
    fn rps(&self) -> f64 {
        median(&self.rps)
    }
    fn spread(v: &[f64], decimals: usize) -> String {
        let (lo, hi) = bounds(v);
        format!("[{lo:.decimals$}..{hi:.decimals$}]")
    }
}

/// Interleaves `workloads` over `rounds`, rotating the order each round.
/// `between` runs before each round, while no load runs: an in-process
/// baseline measured there is interleaved with the windows it is set against.
async fn interleave(
    plan: &Plan,
    channels: &[Channel],
    pid: u32,
    workloads: &[(&str, Call)],
    between: &mut dyn FnMut(),
) -> Vec<Series> {
    let mut series: Vec<Series> = workloads.iter().map(|_| Series::default()).collect();
    for round in 0..plan.rounds {
        between();
        for k in 0..workloads.len() {
            let i = (k + round) % workloads.len();
            let profiler = match (&plan.perf, round) {
                (Some(perf), 0) => profile(perf, pid, workloads[i].0, plan.seconds),
                _ => None,
            };
            let sample = drive(
                channels,
                plan.concurrency,
                plan.seconds,
                pid,
                &workloads[i].1,
            )
            .await;
            series[i].push(&sample);
            if let Some(mut profiler) = profiler {
                let _ = profiler.wait();
            }
        }
    }
    series
}

/// Runs `perf <arguments> -p <pid> -o perf-<workload>.data` for one window.
fn profile(arguments: &str, pid: u32, workload: &str, seconds: f64) -> Option<Child> {
    let started = Command::new("perf")
        .args(arguments.split_whitespace())
        .args([
            "-p",
            &pid.to_string(),
            "-o",
            &format!("perf-{workload}.data"),
        ])
        .args(["--", "sleep", &seconds.to_string()])
        .stderr(Stdio::null())
        .spawn();
    started
        .inspect_err(|e| eprintln!("perf could not be run: {e}"))
        .ok()
}

fn line(name: &str, s: &Series, baseline: Option<(&str, &Series)>) {
    let ratio = baseline.map_or(String::new(), |(b, base)| {
        let ratios: Vec<f64> = s.rps.iter().zip(&base.rps).map(|(a, b)| a / b).collect();
        let (lo, hi) = bounds(&ratios);
        format!("  = {:.2}x {b} [{lo:.2}..{hi:.2}]", median(&ratios))
    });
    println!(
        "  {name:<44} {:>8.0} rps {:<16} cpu {:>6.1} us/call (gen {:>5.1})  p99 {:>6.2} ms{}{ratio}",
        s.rps(),
        Series::spread(&s.rps, 0),
        median(&s.cpu),
        median(&s.generator_cpu),
        median(&s.p99),
        if s.errors > 0 {
            format!("  ({} errors)", s.errors)
        } else {
            String::new()
        },
    );
}

// ---------------------------------------------------------------- workloads

fn health() -> Call {
    Arc::new(|channel, _, _| {
        Box::pin(async move {
            HealthClient::new(channel)
                .check(HealthCheckRequest::default())
                .await
                .is_ok()
        })
    })
}

fn introspect_cycled(bearer: &str, tokens: Arc<Vec<String>>) -> Call {
    let authorization = authorization(bearer);
    Arc::new(move |channel, _, n| {
        let token = &tokens[usize::try_from(n).unwrap() % tokens.len()];
        Box::pin(introspect_active(
            channel,
            introspect(&authorization, token),
        ))
    })
}

fn issue_client(secret: String) -> Call {
    Arc::new(move |channel, _, _| {
        let request = client_grant("bench", &secret);
        Box::pin(async move {
            TokenServiceClient::new(channel)
                .issue(request)
                .await
                .is_ok()
        })
    })
}

fn get_jwks() -> Call {
    Arc::new(|channel, _, _| {
        Box::pin(async move {
            TokenServiceClient::new(channel)
                .get_jwks(GetJwksRequest {})
                .await
                .is_ok_and(|r| r.get_ref().jwks_json.contains("\"keys\""))
        })
    })
}

fn issue_password() -> Call {
    Arc::new(|channel, _, _| {
        Box::pin(async move {
            TokenServiceClient::new(channel)
                .issue(password_grant())
                .await
                .is_ok()
        })
    })
}

/// Revokes each of `victims` once, in turn.
fn revoke(victims: Arc<Vec<String>>) -> Call {
    let next = Arc::new(AtomicU64::new(0));
    Arc::new(move |channel, _, _| {
        let i = usize::try_from(next.fetch_add(1, Ordering::Relaxed)).unwrap();
        let token = victims[i % victims.len()].clone();
        Box::pin(async move {
            TokenServiceClient::new(channel)
                .revoke(RevokeRequest {
                    token,
                    token_type_hint: 0,
                })
                .await
                .is_ok()
        })
    })
}

/// Each task rotates its own session's refresh token.
fn refresh(slots: Arc<Vec<Mutex<String>>>) -> Call {
    Arc::new(move |channel, task, _| {
        let slots = Arc::clone(&slots);
        Box::pin(async move {
            let token = slots[task].lock().clone();
            match TokenServiceClient::new(channel)
                .refresh(RefreshRequest {
                    refresh_token: token,
                    scopes: Vec::new(),
                })
                .await
            {
                Ok(answer) => {
                    *slots[task].lock() = answer.into_inner().refresh_token;
                    true
                }
                Err(_) => false,
            }
        })
    })
}

/// Seconds since the Unix epoch, by this machine's clock.
fn unix_now() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap()
}

/// Tokens signed with the server's own key, never seen by it.
fn mint(key: &SigningKey, n: usize) -> Vec<String> {
    let now = unix_now();
    (0..n)
        .map(|i| {
            key.sign(&AccessClaims {
                iss: "tessera".into(),
                sub: "bench".into(),
                aud: Audience::One("tessera".into()),
                exp: now + 600,
                iat: now,
                nbf: now,
                jti: format!("bench-{i}-{}", tessera_server::random_id()),
                client_id: "bench".into(),
                scope: "read".into(),
                sid: format!("s{i}"),
                cnf: None,
                roles: Vec::new(),
            })
            .unwrap()
        })
        .collect()
}

/// Checks one token's signature with the server's published key, in this
/// process: the "one signature verification" of a new token's CPU budget.
/// The signature alone: reading the token's header and claims is counted
/// against the server, not in its budget.
struct Verifier {
    token: String,
    key: tessera_token::VerifyingKey,
}

impl Verifier {
    async fn new(server: &Server, token: String) -> Self {
        let jwks = server
            .client()
            .await
            .get_jwks(GetJwksRequest {})
            .await
            .unwrap()
            .into_inner()
            .jwks_json;
        let set: serde_json::Value = serde_json::from_str(&jwks).unwrap();
        let key = tessera_token::VerifyingKey::from_jwk_json(&set["keys"][0].to_string()).unwrap();
        Self { token, key }
    }

    /// CPU microseconds one signature check takes, over half a second of
    /// them on this thread (its own CPU time, so time other processes take
    /// from it is not counted).
    fn cpu_us(&self) -> f64 {
        let (signed, signature) = self.token.rsplit_once('.').unwrap();
        let (started, cpu_started) = (Instant::now(), thread_cpu_ns());
        let mut n = 0u32;
        while started.elapsed() < Duration::from_millis(500) {
            for _ in 0..100 {
                assert!(self.key.verifies(signed.as_bytes(), signature));
            }
            n += 100;
        }
        (thread_cpu_ns() - cpu_started) as f64 / 1e3 / f64::from(n)
    }
}

/// Nanoseconds this thread has been on a CPU (the scheduler's own count).
fn thread_cpu_ns() -> u64 {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap();
    stat.split_whitespace().next().unwrap().parse().unwrap()
}

// ---------------------------------------------------------------- sections

async fn section_introspect(plan: &Plan) {
    println!(
        "\n== Introspect and Issue (SQLite, {}), c={} over {} connections",
        plan.alg, plan.concurrency, plan.connections
    );
    let server = Server::start(None, &[("TESSERA_SIGNING_ALG", &plan.alg)]).await;
    let channels = server.channels(plan.connections).await;
    let bearer = server.client_token().await;
    let mut cycled = Vec::new();
    for _ in 0..1000 {
        cycled.push(server.client_token().await);
    }
    let key = server.signing_key().await;
    // Enough never-seen tokens for every round (about 30,000 a second at most).
    let fresh = Arc::new(mint(&key, (plan.seconds * 40_000.0) as usize * plan.rounds));
    let fresh_at = Arc::new(AtomicU64::new(0));
    let introspect_new: Call = {
        let (authorization, fresh, fresh_at) = (
            authorization(&bearer),
            Arc::clone(&fresh),
            Arc::clone(&fresh_at),
        );
        Arc::new(move |channel, _, _| {
            let i = usize::try_from(fresh_at.fetch_add(1, Ordering::Relaxed)).unwrap();
            let request = introspect(&authorization, &fresh[i % fresh.len()]);
            Box::pin(introspect_active(channel, request))
        })
    };
    // One ES256 verification in this process, for the CPU budget: measured
    // before each round, in this thread's CPU time as the server's is.
    let verifier = Verifier::new(&server, fresh[0].clone()).await;
    let mut verify_us = Vec::new();
    let series = interleave(
        plan,
        &channels,
        server.pid(),
        &[
            ("health", health()),
            ("cycled", introspect_cycled(&bearer, Arc::new(cycled))),
            ("new", introspect_new),
            ("issue", issue_client(server.secret.clone())),
            ("jwks", get_jwks()),
        ],
        &mut || verify_us.push(verifier.cpu_us()),
    )
    .await;
    let [health, cycled, new, issue, jwks] = <[Series; 5]>::try_from(series).ok().unwrap();
    line("grpc.health.v1.Health/Check (baseline)", &health, None);
    line(
        "Introspect, 1,000 tokens cycled",
        &cycled,
        Some(("health", &health)),
    );
    line(
        "Introspect, every token new",
        &new,
        Some(("health", &health)),
    );
    // Within each round: the new token's CPU against that round's budget.
    let ratios: Vec<f64> = (new.cpu.iter().zip(&health.cpu).zip(&verify_us))
        .map(|((new, health), verify)| new / (verify + health))
        .collect();
    let (lo, hi) = bounds(&ratios);
    println!(
        "  {:<44} server cpu {:.1} us/call = {:.2}x [{lo:.2}..{hi:.2}] (one signature check {:.1} us {} + one health check {:.1} us)",
        "  every token new, cpu per call",
        median(&new.cpu),
        median(&ratios),
        median(&verify_us),
        Series::spread(&verify_us, 1),
        median(&health.cpu),
    );
    line(
        "Issue, client credentials",
        &issue,
        Some(("health", &health)),
    );
    line("GetJwks", &jwks, Some(("health", &health)));
    println!("  server RSS after: {:.0} MiB", rss_mib(server.pid()));
}

/// `n` password logins, one at a time: sessions whose refresh tokens the
/// refresh workload rotates.
async fn sessions(server: &Server, n: usize) -> Arc<Vec<Mutex<String>>> {
    let mut client = server.client().await;
    let mut slots = Vec::new();
    for _ in 0..n {
        let tokens = client.issue(password_grant()).await.unwrap().into_inner();
        slots.push(Mutex::new(tokens.refresh_token));
    }
    Arc::new(slots)
}

/// pgbench's single-row UPDATE at `concurrency` for `seconds`: tps.
fn pgbench(url: &str, script: &std::path::Path, concurrency: usize, seconds: f64) -> f64 {
    let out = Command::new("pgbench")
        .args(["-n", "-j", "2", "-c", &concurrency.to_string()])
        .args(["-T", &format!("{}", seconds.ceil() as u64)])
        .arg("-f")
        .arg(script)
        .arg(url)
        .output()
        .expect("pgbench (apt-get install postgresql-contrib or postgresql-client) is needed");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "pgbench said: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
}

async fn section_writes(plan: &Plan, postgres: Option<&str>) {
    println!(
        "\n== Issue and Refresh, c={} over {} connections",
        plan.concurrency, plan.connections
    );
    if let Some(postgres) = postgres {
        refresh_postgres(plan, postgres).await;
    }
    // SQLite: Refresh latency at the same concurrency.
    let server = Server::start(None, &[]).await;
    let channels = server.channels(plan.connections).await;
    let slots = sessions(&server, plan.concurrency).await;
    // Each Revoke a token not revoked before (about 15,000 a second at most).
    let victims = Arc::new(mint(
        &server.signing_key().await,
        (plan.seconds * 15_000.0) as usize * plan.rounds,
    ));
    let series = interleave(
        plan,
        &channels,
        server.pid(),
        &[("refresh", refresh(slots)), ("revoke", revoke(victims))],
        &mut || {},
    )
    .await;
    line("Refresh, SQLite", &series[0], None);
    println!(
        "  {:<44} p50 {:.2} ms  p99 {:.2} ms (target: p99 < 20 ms)",
        "  Refresh, SQLite latency",
        median(&series[0].p50),
        median(&series[0].p99)
    );
    line("Revoke, access tokens, SQLite", &series[1], None);
    println!("  server RSS after: {:.0} MiB", rss_mib(server.pid()));
}

/// PostgreSQL: Refresh against pgbench's single-row UPDATE on the same
/// cluster, at the same concurrency.
async fn refresh_postgres(plan: &Plan, postgres: &str) {
    let server = Server::start(Some(postgres), &[]).await;
    let channels = server.channels(plan.connections).await;
    let slots = sessions(&server, plan.concurrency).await;
    let url = server.url.clone();
    {
        use sqlx::{Connection, Executor};
        let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
        conn.execute(
            "CREATE TABLE bench_rows (id int PRIMARY KEY, n bigint NOT NULL); \
             INSERT INTO bench_rows SELECT g, 0 FROM generate_series(1, 10000) g",
        )
        .await
        .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("update.sql");
    std::fs::write(
        &script,
        "\\set id random(1, 10000)\nUPDATE bench_rows SET n = n + 1 WHERE id = :id;\n",
    )
    .unwrap();
    let (mut pg_tps, mut refresh_pg, mut issue_pg) =
        (Vec::new(), Series::default(), Series::default());
    for round in 0..plan.rounds {
        for k in 0..3 {
            match (k + round) % 3 {
                0 => pg_tps.push(pgbench(&url, &script, plan.concurrency, plan.seconds)),
                1 => refresh_pg.push(
                    &drive(
                        &channels,
                        plan.concurrency,
                        plan.seconds,
                        server.pid(),
                        &refresh(Arc::clone(&slots)),
                    )
                    .await,
                ),
                _ => issue_pg.push(
                    &drive(
                        &channels,
                        plan.concurrency,
                        plan.seconds,
                        server.pid(),
                        &issue_client(server.secret.clone()),
                    )
                    .await,
                ),
            }
        }
    }
    let pgbench_series = Series {
        rps: pg_tps,
        ..Series::default()
    };
    line(
        "pgbench single-row UPDATE (baseline)",
        &pgbench_series,
        None,
    );
    line(
        "Refresh, PostgreSQL",
        &refresh_pg,
        Some(("pgbench", &pgbench_series)),
    );
    line("Issue, client credentials, PostgreSQL", &issue_pg, None);
    println!(
        "  server RSS after Issue and Refresh load: {:.0} MiB",
        rss_mib(server.pid())
    );
    drop((channels, server));
    drop_database(postgres, &url).await;
}

/// Argon2 verifications per second on `threads` threads, in this process,
/// with the parameters of `hash` (a PHC string).
fn raw_argon2(hash: &str, threads: usize, seconds: f64) -> f64 {
    use argon2::{PasswordHash, PasswordVerifier};
    let stop = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let done: u64 = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let parsed = PasswordHash::new(hash).unwrap();
                    let mut n = 0u64;
                    while Instant::now() < stop {
                        argon2::Argon2::default()
                            .verify_password(PASSWORD.as_bytes(), &parsed)
                            .unwrap();
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).sum()
    });
    done as f64 / started.elapsed().as_secs_f64()
}

async fn section_password(plan: &Plan) {
    let workers = std::thread::available_parallelism().map_or(1, |n| (usize::from(n) / 2).max(1));
    println!(
        "\n== Password Issue (SQLite), c={} from one address, {workers} hashing worker(s) (the default)",
        plan.concurrency
    );
    let server = Server::start(None, &[]).await;
    let channels = server.channels(plan.connections).await;
    let probe_channel = server.channels(1).await;
    let bearer = server.client_token().await;
    let token = server.client_token().await;
    let hash: String = {
        use sqlx::Connection;
        let url = format!(
            "sqlite://{}",
            server.data_dir().join("tessera.db").display()
        );
        let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
        sqlx::query_scalar("SELECT password_hash FROM users WHERE username = 'alice'")
            .fetch_one(&mut conn)
            .await
            .unwrap()
    };
    let probe = introspect_cycled(&bearer, Arc::new(vec![token]));
    let logins = issue_password();
    let (mut raw, mut storm, mut quiet, mut during) = (
        Vec::new(),
        Series::default(),
        Series::default(),
        Series::default(),
    );
    for round in 0..plan.rounds {
        for k in 0..3 {
            match (k + round) % 3 {
                0 => raw.push(raw_argon2(&hash, workers, plan.seconds)),
                1 => {
                    quiet.push(&drive(&probe_channel, 4, plan.seconds, server.pid(), &probe).await);
                }
                _ => {
                    let (mut logins, mut probed) = tokio::join!(
                        drive(
                            &channels,
                            plan.concurrency,
                            plan.seconds,
                            server.pid(),
                            &logins
                        ),
                        drive(&probe_channel, 4, plan.seconds, server.pid(), &probe),
                    );
                    // Two loads in one window: neither's CPU a call is its own.
                    for sample in [&mut logins, &mut probed] {
                        (sample.server_cpu, sample.generator_cpu) = (f64::NAN, f64::NAN);
                    }
                    storm.push(&logins);
                    during.push(&probed);
                }
            }
        }
    }
    let raw = Series {
        rps: raw,
        ..Series::default()
    };
    line(
        "raw argon2 verifications, in-process (baseline)",
        &raw,
        None,
    );
    line("Issue, password", &storm, Some(("raw argon2", &raw)));
    line("Introspect c=4, quiet", &quiet, None);
    line("Introspect c=4, during the login storm", &during, None);
    println!(
        "  {:<44} p99 {:.2} ms vs {:.2} ms quiet = {:.2}x (target <= 2x)",
        "  Introspect p99 during the storm",
        median(&during.p99),
        median(&quiet.p99),
        median(&during.p99) / median(&quiet.p99)
    );
    println!(
        "  server RSS after the storms: {:.0} MiB (bound: 64 MiB + {workers} x 19 MiB)",
        rss_mib(server.pid())
    );
}

/// Appends `n` token revocations straight to the log (as `tessera` would,
/// from other replicas), expiring in an hour.
async fn revoke_in_bulk(url: &str, n: usize, tag: &str) {
    use sqlx::{Connection, Executor};
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    conn.execute(
        format!(
            "INSERT INTO revocation_log (kind, value, at, expires_at) \
             SELECT 'jti', '{tag}-' || g, extract(epoch from now())::bigint, \
                    extract(epoch from now())::bigint + 3600 \
             FROM generate_series(1, {n}) g"
        )
        .as_str(),
    )
    .await
    .unwrap();
}

async fn section_revocation(plan: &Plan, postgres: &str) {
    println!("\n== Revocation and memory (PostgreSQL, two replicas)");
    let a = Server::start(Some(postgres), &[]).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    println!(
        "  {:<44} {:.0} MiB (target < 64 MiB)",
        "replica RSS, idle",
        rss_mib(a.pid())
    );
    let key = a.signing_key().await;
    let bearer = a.client_token().await;
    let authorization = authorization(&bearer);

    // A revocation made on A, in force on B.
    let b = a.replica();
    let mut on_a = a.client().await;
    let mut on_b = b.client().await;
    let victims = mint(&key, 200);
    let mut lags = Vec::new();
    for token in &victims {
        assert!(
            on_b.introspect(introspect(&authorization, token))
                .await
                .unwrap()
                .into_inner()
                .active
        );
        on_a.revoke(RevokeRequest {
            token: token.clone(),
            token_type_hint: 0,
        })
        .await
        .unwrap();
        let revoked = Instant::now();
        while on_b
            .introspect(introspect(&authorization, token))
            .await
            .unwrap()
            .into_inner()
            .active
        {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        lags.push(revoked.elapsed().as_secs_f64() * 1000.0);
    }
    lags.sort_by(f64::total_cmp);
    println!(
        "  {:<44} p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms over {} (target p99 <= 100 ms)",
        "revoked on A, inactive on B",
        lags[lags.len() / 2],
        lags[lags.len() * 99 / 100],
        lags[lags.len() - 1],
        lags.len()
    );

    // Introspect on B while 50 revocations a second arrive, written to the
    // log one per transaction as other replicas would (PostgreSQL notifies
    // B of each): what B pays to follow them, without A's cost of serving
    // Revoke on the same two cores.
    let channels = b.channels(plan.connections).await;
    let workload = introspect_cycled(&bearer, Arc::new(mint(&key, 1000)));
    let (mut quiet, mut busy) = (Series::default(), Series::default());
    for round in 0..plan.rounds {
        for k in 0..2 {
            if (k + round) % 2 == 0 {
                quiet.push(
                    &drive(
                        &channels,
                        plan.concurrency,
                        plan.seconds,
                        b.pid(),
                        &workload,
                    )
                    .await,
                );
            } else {
                let url = a.url.clone();
                let revoker = tokio::spawn(async move {
                    use sqlx::Connection;
                    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
                    let mut tick = tokio::time::interval(Duration::from_millis(20));
                    for n in 0u64.. {
                        tick.tick().await;
                        sqlx::query(
                            "INSERT INTO revocation_log (kind, value, at, expires_at) \
                             VALUES ('jti', $1, extract(epoch from now())::bigint, \
                                     extract(epoch from now())::bigint + 3600)",
                        )
                        .bind(format!("steady-{round}-{n}"))
                        .execute(&mut conn)
                        .await
                        .unwrap();
                    }
                });
                busy.push(
                    &drive(
                        &channels,
                        plan.concurrency,
                        plan.seconds,
                        b.pid(),
                        &workload,
                    )
                    .await,
                );
                revoker.abort();
            }
        }
    }
    line("Introspect on B, quiet", &quiet, None);
    line(
        "Introspect on B, 50 revocations/s arriving",
        &busy,
        Some(("quiet", &quiet)),
    );
    println!(
        "  {:<44} p99 {:.2} ms vs {:.2} ms quiet = {:.2}x",
        "",
        median(&busy.p99),
        median(&quiet.p99),
        median(&busy.p99) / median(&quiet.p99)
    );
    drop(b);

    // A million live revocations: a new replica's start, memory, and how
    // fast it follows more.
    revoke_in_bulk(&a.url, 1_000_000, "million").await;
    let started = Instant::now();
    let c = a.replica();
    let ready = started.elapsed();
    println!(
        "  {:<44} ready in {:.2} s, RSS {:.0} MiB (targets < 3 s, < 256 MiB)",
        "replica starting with 1M revocations",
        ready.as_secs_f64(),
        rss_mib(c.pid())
    );
    let channels = c.channels(plan.connections).await;
    let mut on_c = c.client().await;
    // A burst of 100k while Introspect runs at c=4 on C.
    let probe = introspect_cycled(&bearer, Arc::new(mint(&key, 100)));
    let probe_channel = c.channels(1).await;
    let quiet = drive(&probe_channel, 4, plan.seconds, c.pid(), &probe).await;
    let marker = mint(&key, 1).remove(0);
    let (during, followed) = tokio::join!(
        drive(&probe_channel, 4, plan.seconds, c.pid(), &probe),
        async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let began = Instant::now();
            revoke_in_bulk(&a.url, 100_000, "burst").await;
            on_a.revoke(RevokeRequest {
                token: marker.clone(),
                token_type_hint: 0,
            })
            .await
            .unwrap();
            while on_c
                .introspect(introspect(&authorization, &marker))
                .await
                .unwrap()
                .into_inner()
                .active
            {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            began.elapsed()
        }
    );
    println!(
        "  {:<44} 100,001 in {:.2} s = {:.0}/s (target >= 2,000/s); RSS {:.0} MiB",
        "replica C following a burst, 1M held",
        followed.as_secs_f64(),
        100_001.0 / followed.as_secs_f64(),
        rss_mib(c.pid())
    );
    println!(
        "  {:<44} p99 {:.2} ms vs {:.2} ms quiet = {:.2}x (target <= 2x)",
        "Introspect c=4 on C during the burst",
        during.percentile_ms(0.99),
        quiet.percentile_ms(0.99),
        during.percentile_ms(0.99) / quiet.percentile_ms(0.99)
    );
    drop(channels);
    let url = a.url.clone();
    drop((a, c));
    drop_database(postgres, &url).await;
}

/// Introspect over TLS against plaintext: two servers alike but for TLS
/// (certificates from scripts/dev-certs.sh), interleaved.
async fn section_tls(plan: &Plan) {
    println!(
        "\n== Introspect over TLS (SQLite), c={} over {} connections",
        plan.concurrency, plan.connections
    );
    let certs = tempfile::tempdir().unwrap();
    let made = Command::new("scripts/dev-certs.sh")
        .arg(certs.path())
        .output()
        .expect("scripts/dev-certs.sh (run from the repository root; needs openssl)");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let path = |f: &str| certs.path().join(f).display().to_string();
    let (cert, key) = (path("server.crt"), path("server.key"));
    let mut tls = Server::start(
        None,
        &[
            ("TESSERA_TLS_CERT", cert.as_str()),
            ("TESSERA_TLS_KEY", key.as_str()),
        ],
    )
    .await;
    tls.ca = Some(std::fs::read_to_string(path("ca.crt")).unwrap());
    let plain = Server::start(None, &[]).await;
    let mut workloads = Vec::new();
    for server in [&plain, &tls] {
        let bearer = server.client_token().await;
        let mut cycled = Vec::new();
        for _ in 0..100 {
            cycled.push(server.client_token().await);
        }
        workloads.push((
            server.channels(plan.connections).await,
            introspect_cycled(&bearer, Arc::new(cycled)),
        ));
    }
    let (mut over_plain, mut over_tls) = (Series::default(), Series::default());
    for round in 0..plan.rounds {
        for k in 0..2 {
            let i = (k + round) % 2;
            let (channels, call) = &workloads[i];
            let pid = if i == 0 { plain.pid() } else { tls.pid() };
            let sample = drive(channels, plan.concurrency, plan.seconds, pid, call).await;
            if i == 0 {
                over_plain.push(&sample);
            } else {
                over_tls.push(&sample);
            }
        }
    }
    line("Introspect, plaintext (baseline)", &over_plain, None);
    line(
        "Introspect, TLS 1.3",
        &over_tls,
        Some(("plaintext", &over_plain)),
    );
}

fn main() {
    let plan = Plan {
        seconds: arg("--seconds", "3").parse().unwrap(),
        rounds: arg("--rounds", "3").parse().unwrap(),
        concurrency: arg("--concurrency", "64").parse().unwrap(),
        alg: arg("--alg", "ES256"),
        perf: Some(arg("--perf", "")).filter(|p| !p.is_empty()),
        connections: arg("--connections", "4").parse().unwrap(),
        only: arg("--only", "")
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        println!(
            "Tessera load benchmark: {} s windows, {} rounds interleaved, medians [min..max]",
            plan.seconds, plan.rounds
        );
        if plan.wants("introspect") {
            section_introspect(&plan).await;
        }
        if plan.wants("password") {
            section_password(&plan).await;
        }
        if plan.wants("tls") {
            section_tls(&plan).await;
        }
        let postgres = std::env::var("TESSERA_BENCH_DATABASE_URL").ok();
        if plan.wants("writes") {
            section_writes(&plan, postgres.as_deref()).await;
        }
        match postgres.as_deref() {
            Some(postgres) => {
                if plan.wants("revocation") {
                    section_revocation(&plan, postgres).await;
                }
            }
            None => println!(
                "\n(TESSERA_BENCH_DATABASE_URL is not set: the PostgreSQL sections were skipped; \
                 scripts/bench.sh starts a cluster)"
            ),
        }
    });
}
