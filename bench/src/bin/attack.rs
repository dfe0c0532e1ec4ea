//! Attacks a running Tessera the way the security review did, and prints
//! what the server did with them. Not a test: a measuring tool for the
//! figures in the README and the issue notes.
//!
//! ```sh
//! attack cancelled --addr 127.0.0.1:50051 --pid PID --user alice --password pw
//! attack lockout   --addr 127.0.0.1:50051 --user alice --password pw
//! ```

use std::{net::IpAddr, time::Duration};

use tessera::pb::{
    IssueRequest, PasswordGrant, issue_request::Grant, token_service_client::TokenServiceClient,
};
use tokio::time::Instant;
use tonic::{Code, Request, transport::Endpoint};

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_owned())
}

fn login(user: &str, password: &str) -> IssueRequest {
    IssueRequest {
        grant: Some(Grant::Password(PasswordGrant {
            username: user.into(),
            password: password.into(),
        })),
        scopes: Vec::new(),
        audience: String::new(),
    }
}

/// Resident and peak memory (MiB) and thread count of process `pid`.
fn process_stats(pid: &str) -> (f64, f64, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |field: &str| {
        status
            .lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let threads = std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, Iterator::count);
    (kib("VmRSS:") / 1024.0, kib("VmHWM:") / 1024.0, threads)
}

async fn client_from(
    addr: &str,
    local: Option<IpAddr>,
) -> TokenServiceClient<tonic::transport::Channel> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .local_address(local);
    TokenServiceClient::new(endpoint.connect().await.expect("connect"))
}

/// Logins abandoned by their callers (a short deadline): how much hashing
/// work and memory does the server keep?
async fn cancelled(addr: &str, pid: &str, user: &str, password: &str) {
    let count: usize = arg("--count", "120").parse().unwrap();
    let deadline = Duration::from_millis(arg("--deadline-ms", "30").parse().unwrap());
    let seconds: u64 = arg("--seconds", "0").parse().unwrap();
    let client = client_from(addr, None).await;
    let (rss0, _, threads0) = process_stats(pid);
    let started = Instant::now();
    let mut rounds = 0;
    let mut peak_threads = threads0;
    let mut peak_rss = rss0;
    loop {
        let calls: Vec<_> = (0..count)
            .map(|_| {
                let mut client = client.clone();
                let mut request = Request::new(login(user, password));
                request.set_timeout(deadline);
                tokio::spawn(async move { client.issue(request).await.map(|_| ()) })
            })
            .collect();
        for call in calls {
            let _ = call.await;
        }
        rounds += 1;
        let (rss, _, threads) = process_stats(pid);
        peak_rss = peak_rss.max(rss);
        peak_threads = peak_threads.max(threads);
        if started.elapsed().as_secs() >= seconds {
            break;
        }
    }
    // Work the server kept doing after every caller gave up.
    for _ in 0..40 {
        let (rss, _, threads) = process_stats(pid);
        peak_rss = peak_rss.max(rss);
        peak_threads = peak_threads.max(threads);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (rss_after, hwm, threads_after) = process_stats(pid);
    println!(
        "cancelled logins: {rounds} round(s) of {count} with a {deadline:?} deadline; \
         RSS {rss0:.0} MiB before, peak sampled {peak_rss:.0} MiB (VmHWM {hwm:.0} MiB), \
         {rss_after:.0} MiB 2 s after; threads {threads0} before, peak {peak_threads}, {threads_after} after"
    );
}

/// An attacker keeps wrong-password logins in flight against one account
/// from 127.0.0.1; the real user logs in from 127.0.0.2.
async fn lockout(addr: &str, user: &str, password: &str) {
    let in_flight: usize = arg("--in-flight", "600").parse().unwrap();
    let seconds: u64 = arg("--seconds", "8").parse().unwrap();
    let attacker = client_from(addr, Some("127.0.0.1".parse().unwrap())).await;
    let real = client_from(addr, Some("127.0.0.2".parse().unwrap())).await;
    let stop = Instant::now() + Duration::from_secs(seconds);
    let guesses: Vec<_> = (0..in_flight)
        .map(|i| {
            let mut client = attacker.clone();
            let user = user.to_owned();
            tokio::spawn(async move {
                let (mut evaluated, mut throttled) = (0u64, 0u64);
                while Instant::now() < stop {
                    match client.issue(login(&user, &format!("guess-{i}"))).await {
                        Err(s) if s.code() == Code::Unauthenticated => evaluated += 1,
                        Err(s) if s.code() == Code::ResourceExhausted => {
                            throttled += 1;
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        _ => {}
                    }
                }
                (evaluated, throttled)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (mut ok, mut tries) = (0, 0);
    while Instant::now() + Duration::from_millis(500) < stop {
        tries += 1;
        if real.clone().issue(login(user, password)).await.is_ok() {
            ok += 1;
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let (mut evaluated, mut throttled) = (0, 0);
    for guess in guesses {
        let (e, t) = guess.await.unwrap();
        evaluated += e;
        throttled += t;
    }
    #[allow(clippy::cast_precision_loss)]
    let rate = evaluated as f64 / seconds as f64;
    println!(
        "lockout: attacker kept {in_flight} wrong-password logins in flight for {seconds} s: \
         {evaluated} guesses evaluated ({rate:.1}/s), {throttled} throttled; \
         the real user from another address logged in {ok} of {tries} times"
    );
}

#[tokio::main]
async fn main() {
    let addr = arg("--addr", "127.0.0.1:50051");
    let user = arg("--user", "alice");
    let password = arg("--password", "pw");
    match std::env::args().nth(1).as_deref() {
        Some("cancelled") => cancelled(&addr, &arg("--pid", "0"), &user, &password).await,
        Some("lockout") => lockout(&addr, &user, &password).await,
        _ => {
            eprintln!("usage: attack cancelled|lockout --addr A --user U --password P [--pid PID]");
        }
    }
}
