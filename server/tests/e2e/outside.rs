//! Tessera as clients nobody on the project wrote see it: PyJWT's
//! `PyJWKClient` and jose's `createRemoteJWKSet` verify its tokens through
//! the JWKS URL found in the RFC 8414 metadata, across a key rotation;
//! prometheus_client's parser reads `/metrics`; and the README's grpcurl
//! session runs, twice, from a clean folder.
//!
//! The clients are pinned in `scripts/outside` and installed by
//! `scripts/test.sh`, which sets `TESSERA_OUTSIDE_TOOLS`. Without it these
//! tests fail under CI and are skipped, saying so, elsewhere.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use tessera_server::Clock;
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines},
    process::{Child, ChildStdin, ChildStdout, Command},
};

use crate::{
    cli::{serve_logging, tessera},
    helpers::{Backend, TestApp, TestDatabase, eventually, spawn_app_on},
};

/// Where `scripts/test.sh` installed the outside clients, or `None` (the
/// test is skipped, saying why) outside CI.
fn outside_tools() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("TESSERA_OUTSIDE_TOOLS") {
        return Some(dir.into());
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "TESSERA_OUTSIDE_TOOLS is unset: run the tests with scripts/test.sh, which installs \
         the outside clients (scripts/outside) and sets it"
    );
    eprintln!(
        "skipped: TESSERA_OUTSIDE_TOOLS is unset (scripts/test.sh installs PyJWT, jose, \
         prometheus_client and grpcurl and sets it)"
    );
    None
}

/// A script of this folder's `outside/`.
fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/e2e/outside")
        .join(name)
}

/// An outside verifier process: one token a line in, `ok KID SUB` or
/// `fail REASON` a line out.
struct OutsideVerifier {
    name: &'static str,
    _child: Child,
    stdin: ChildStdin,
    answers: Lines<BufReader<ChildStdout>>,
}

impl OutsideVerifier {
    fn spawn(name: &'static str, mut command: Command) -> Self {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Self {
            name,
            stdin: child.stdin.take().unwrap(),
            answers: BufReader::new(child.stdout.take().unwrap()).lines(),
            _child: child,
        }
    }

    async fn verify(&mut self, token: &str) -> String {
        self.stdin
            .write_all(format!("{token}\n").as_bytes())
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(30), self.answers.next_line())
            .await
            .unwrap_or_else(|_| panic!("{} did not answer in 30 s", self.name))
            .unwrap()
            .unwrap_or_else(|| panic!("{} exited", self.name))
    }
}

/// PyJWKClient and jose, both pointed at the app's metadata document.
fn outside_verifiers(tools: &Path, http: std::net::SocketAddr) -> Vec<OutsideVerifier> {
    let metadata = format!("http://{http}/.well-known/oauth-authorization-server");
    let mut python = Command::new(tools.join("venv/bin/python"));
    python
        .arg(script("verify_pyjwt.py"))
        .args([&metadata, "tessera", "tessera"]);
    let mut node = Command::new("node");
    node.env("NODE_PATH", tools.join("node/node_modules"))
        .arg(script("verify_jose.cjs"))
        .args([&metadata, "tessera", "tessera"]);
    vec![
        OutsideVerifier::spawn("PyJWKClient", python),
        OutsideVerifier::spawn("jose", node),
    ]
}

fn kid_of(token: &str) -> String {
    jsonwebtoken::decode_header(token).unwrap().kid.unwrap()
}

async fn http_app(db: &TestDatabase) -> TestApp {
    spawn_app_on(db, |s| {
        s.http_addr = Some("127.0.0.1:0".parse().unwrap());
        s.follow.key_refresh_interval = Duration::from_millis(100);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pyjwkclient_and_jose_verify_through_the_jwks_url_across_a_key_rotation() {
    let Some(tools) = outside_tools() else { return };
    let db = TestDatabase::new(Backend::Sqlite).await;
    let app = http_app(&db).await;
    let sub = app.add_user("alice", "pw", &["read"]).await;
    let old = app.login("alice", "pw").await.unwrap().access_token;
    let old_kid = kid_of(&old);
    let mut verifiers = outside_verifiers(&tools, app.http_addr.unwrap());
    for v in &mut verifiers {
        assert_eq!(
            v.verify(&old).await,
            format!("ok {old_kid} {sub}"),
            "{}",
            v.name
        );
        // A control: the same token with its signature altered is refused
        // (a character well inside it: the last one carries padding bits).
        let at = old.len() - 10;
        let flipped = if &old[at..=at] == "A" { "B" } else { "A" };
        let tampered = format!("{}{flipped}{}", &old[..at], &old[at + 1..]);
        let said = v.verify(&tampered).await;
        assert!(
            said.starts_with("fail"),
            "{} accepted a forged token: {said}",
            v.name
        );
    }

    // A rotation as `keys rotate --activate-in` makes one: published now,
    // signing two seconds later. Both clients' key caches (1 s) expire
    // before it signs.
    let kek = tessera_server::Kek::from_base64(&db.kek).unwrap();
    let now = app.clock.now();
    let (new_kid, _) = tessera_server::add_key(
        &*app.store,
        &kek,
        tessera_server::Algorithm::Es256,
        now,
        now.plus(Duration::from_secs(2)),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    app.clock.advance(Duration::from_secs(2));
    let signing = eventually(Duration::from_secs(5), || async {
        kid_of(&app.login("alice", "pw").await.unwrap().access_token) == new_kid
    })
    .await;
    assert!(signing.is_some(), "the new key never signed");
    let new = app.login("alice", "pw").await.unwrap().access_token;
    for v in &mut verifiers {
        // No failed verification: tokens of the new key, and of the old
        // one, which stays published until its tokens expire.
        assert_eq!(
            v.verify(&new).await,
            format!("ok {new_kid} {sub}"),
            "{}",
            v.name
        );
        assert_eq!(
            v.verify(&old).await,
            format!("ok {old_kid} {sub}"),
            "{}",
            v.name
        );
    }
}

/// Every sample prometheus_client's parser reads at `url`, as
/// `(name, labels, value)`; panics if the exposition does not parse.
async fn parsed_metrics(tools: &Path, url: &str) -> Vec<(String, serde_json::Value, f64)> {
    let output = Command::new(tools.join("venv/bin/python"))
        .arg(script("parse_metrics.py"))
        .arg(url)
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "prometheus_client cannot parse /metrics: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            let sample: serde_json::Value = serde_json::from_str(line).unwrap();
            (
                sample["name"].as_str().unwrap().to_owned(),
                sample["labels"].clone(),
                sample["value"].as_f64().unwrap(),
            )
        })
        .collect()
}

/// The sum of the samples called `name` whose labels include `labels`.
fn total(samples: &[(String, serde_json::Value, f64)], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|(n, l, _)| n == name && labels.iter().all(|(k, v)| l[*k] == *v))
        .map(|(_, _, value)| value)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_client_parses_the_metrics_and_reads_each_counter_move() {
    let Some(tools) = outside_tools() else { return };
    let db = TestDatabase::new(Backend::Sqlite).await;
    let app = http_app(&db).await;
    let url = format!("http://{}/metrics", app.http_addr.unwrap());
    app.add_user("alice", "pw", &["read"]).await;
    let before = parsed_metrics(&tools, &url).await;

    let tokens = app.login("alice", "pw").await.unwrap();
    assert!(app.login("alice", "wrong").await.is_err());
    let bearer = app.introspector_token().await;
    let answer = app
        .introspect_with(&bearer, &tokens.access_token)
        .await
        .unwrap();
    assert!(answer.active);
    app.refresh(&tokens.refresh_token).await.unwrap();

    let after = parsed_metrics(&tools, &url).await;
    let moved = |name: &str, labels: &[(&str, &str)]| {
        total(&after, name, labels) - total(&before, name, labels)
    };
    // Counters in this process are shared with other tests: at least.
    for (name, labels) in [
        ("tessera_tokens_issued_total", &[("grant", "password")][..]),
        (
            "tessera_tokens_issued_total",
            &[("grant", "client_credentials")],
        ),
        (
            "tessera_auth_failures_total",
            &[("grant", "password"), ("reason", "invalid_credentials")],
        ),
        ("tessera_introspections_total", &[("result", "active")]),
        ("tessera_refreshes_total", &[("outcome", "rotated")]),
        (
            "tessera_rpc_duration_seconds_count",
            &[("method", "Issue"), ("code", "OK")],
        ),
    ] {
        assert!(moved(name, labels) >= 1.0, "{name} {labels:?} did not move");
    }
    // The histogram's buckets are cumulative and end in +Inf == count.
    let issue_ok = [("method", "Issue"), ("code", "OK")];
    assert_eq!(
        total(
            &after,
            "tessera_rpc_duration_seconds_bucket",
            &[("method", "Issue"), ("code", "OK"), ("le", "+Inf")]
        ),
        total(&after, "tessera_rpc_duration_seconds_count", &issue_ok)
    );
}

/// The README's grpcurl session, as its first ```sh block after the heading.
fn readme_session() -> String {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .unwrap();
    let section = &readme[readme.find("## A grpcurl session").unwrap()..];
    let block = &section[section.find("```sh\n").unwrap() + "```sh\n".len()..];
    block[..block.find("\n```").unwrap()].to_owned()
}

#[tokio::test]
async fn the_readme_grpcurl_session_runs_twice_from_a_clean_folder() {
    let Some(tools) = outside_tools() else { return };
    let folder = tempfile::tempdir().unwrap();
    // `serve` as the README starts it, in the folder (./tessera-data).
    let mut serve = tessera(&folder.path().join("tessera-data"));
    serve
        .env_remove("TESSERA_DATA_DIR")
        .current_dir(folder.path())
        .args(["serve", "--listen-addr", "127.0.0.1:0"]);
    let (mut server, addr, _) = serve_logging(serve);
    // `cargo run -q --bin tessera -- ARGS` runs the built binary with ARGS.
    let prelude = format!(
        "set -eo pipefail\n\
         export PATH=\"{}:$PATH\"\n\
         cargo() {{ while [ \"$1\" != -- ]; do shift; done; shift; \"{}\" \"$@\"; }}\n",
        tools.join("venv/bin").display(),
        env!("CARGO_BIN_EXE_tessera"),
    );
    let session = readme_session().replace("127.0.0.1:50051", &addr);
    for run in 1..=2 {
        let output = Command::new("bash")
            .arg("-c")
            .arg(format!("{prelude}{session}"))
            .current_dir(folder.path())
            .env_remove("TESSERA_DATA_DIR")
            .env_remove("TESSERA_DATABASE_URL")
            .env_remove("TESSERA_KEY_ENCRYPTION_KEY")
            .output()
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "run {run} failed:\n{stdout}\n{stderr}"
        );
        // The first Introspect is active, the one after the logout is not
        // (proto3 JSON leaves `active: false` out).
        assert_eq!(
            stdout.matches("\"active\": true").count(),
            1,
            "run {run}:\n{stdout}"
        );
        assert!(stdout.contains("tessera.v1.TokenService"), "{stdout}");
        assert!(stdout.contains("\"status\": \"SERVING\""), "{stdout}");
    }
    let _ = server.kill();
    let _ = server.wait();
}
