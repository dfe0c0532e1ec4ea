//! The `tessera` binary as an operator runs it: admin commands, `serve`,
//! and shutdown on SIGTERM. Uses the embedded SQLite default in a temp folder.

use std::{
    io::{BufRead, BufReader, Write},
    process::{Child, Command, Output, Stdio},
    time::Duration,
};

use secrecy::ExposeSecret;
use tessera::pb::{
    ClientCredentialsGrant, IssueRequest, PasswordGrant, issue_request::Grant,
    token_service_client::TokenServiceClient,
};
use tokio::time::Instant;

use crate::helpers::client_grant;

pub(crate) fn tessera(data_dir: &std::path::Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tessera"));
    command
        .env("TESSERA_DATA_DIR", data_dir)
        .env_remove("TESSERA_DATABASE_URL")
        .env_remove("TESSERA_KEY_ENCRYPTION_KEY")
        .env("RUST_LOG", "info");
    command
}

fn run_with_stdin(command: &mut Command, stdin: &str) -> Output {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// A `tessera serve` process, killed when dropped, so a test that fails
/// leaves no server behind.
pub(crate) struct Server(Child);

impl std::ops::Deref for Server {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Server {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `tessera serve` on a free port; returns it and the address it logged.
fn serve(data_dir: &std::path::Path) -> (Server, String) {
    let mut command = tessera(data_dir);
    command.args(["serve", "--listen-addr", "127.0.0.1:0"]);
    serve_with(command)
}

/// Starts a prepared `serve` command; returns it and the address it logged.
fn serve_with(command: Command) -> (Server, String) {
    let (child, addr, _) = serve_logging(command);
    (child, addr)
}

/// Starts a prepared `serve` command; returns it, the address it logged,
/// and every log line before that.
pub(crate) fn serve_logging(command: Command) -> (Server, String, Vec<String>) {
    let (child, addr, before, _) = serve_watched(command);
    (child, addr, before)
}

/// As [`serve_logging`], and every later log line through a channel.
fn serve_watched(
    mut command: Command,
) -> (
    Server,
    String,
    Vec<String>,
    std::sync::mpsc::Receiver<String>,
) {
    let mut child = command
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // Drain the log from the start so the server never blocks on a full
    // pipe, and a server that never says it serves fails the test.
    let lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in lines {
            let line = line.unwrap_or_default();
            eprintln!("server: {line}");
            let _ = tx.send(line);
        }
    });
    let mut before = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let addr = loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let line = rx
            .recv_timeout(left)
            .unwrap_or_else(|e| panic!("serve did not say it serves ({e:?}): {before:#?}"));
        if let Some((_, rest)) = line.split_once("serving tessera.v1.TokenService addr=") {
            break rest
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_owned();
        }
        before.push(line);
    };
    (Server(child), addr, before, rx)
}

/// Waits (up to `within`) for a log line containing `needle`; returns it.
fn await_line(log: &std::sync::mpsc::Receiver<String>, needle: &str, within: Duration) -> String {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        // Checked on every line: a chatty server must not keep this waiting.
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match log.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return line,
            Ok(_) if !left.is_zero() => {}
            _ => panic!("no log line with {needle:?} within {within:?}"),
        }
    }
}

fn issue(grant: Grant) -> IssueRequest {
    IssueRequest {
        grant: Some(grant),
        scopes: Vec::new(),
        audience: String::new(),
    }
}

#[tokio::test]
async fn an_operator_adds_principals_serves_and_stops_with_sigterm() {
    let dir = tempfile::tempdir().unwrap();

    let client = tessera(dir.path())
        .args(["client", "add", "billing", "--scope", "invoices:read"])
        .output()
        .unwrap();
    assert!(
        client.status.success(),
        "{}",
        String::from_utf8_lossy(&client.stderr)
    );
    let stdout = String::from_utf8(client.stdout).unwrap();
    let secret = stdout.lines().last().unwrap().to_owned();
    assert!(
        secret.starts_with("tsc_") && !secret.contains(' '),
        "last line is not the secret: {stdout:?}"
    );
    assert!(
        !String::from_utf8_lossy(&client.stderr).contains(&secret),
        "secret logged"
    );

    let user = run_with_stdin(
        tessera(dir.path()).args(["user", "add", "alice", "--scope", "read"]),
        "hunter2 with spaces\n",
    );
    assert!(
        user.status.success(),
        "{}",
        String::from_utf8_lossy(&user.stderr)
    );
    assert!(!String::from_utf8_lossy(&user.stderr).contains("hunter2"));

    let duplicate = run_with_stdin(
        tessera(dir.path()).args(["user", "add", "alice", "--scope", "read"]),
        "another long password\n",
    );
    assert!(!duplicate.status.success());
    assert!(String::from_utf8_lossy(&duplicate.stderr).contains("already exists"));

    let (mut server, addr) = serve(dir.path());

    // The embedded default generated its key-encryption key privately.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("key-encryption-key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    let mut api = api_at(&addr).await;
    let tokens = api
        .issue(issue(Grant::Password(PasswordGrant {
            username: "alice".into(),
            password: "hunter2 with spaces".into(),
        })))
        .await
        .unwrap()
        .into_inner();
    assert!(!tokens.refresh_token.is_empty());
    let service = api
        .issue(issue(Grant::ClientCredentials(ClientCredentialsGrant {
            client_id: "billing".into(),
            client_secret: secret,
        })))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(service.scopes, ["invoices:read"]);

    let terminated = Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .unwrap();
    assert!(terminated.success());
    let started = Instant::now();
    let status = loop {
        if let Some(status) = server.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "serve ignored SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "serve exited with {status}");
}

#[test]
fn keys_rotate_publishes_a_key_that_signs_later_and_keys_list_shows_it() {
    let dir = tempfile::tempdir().unwrap();
    let rotate = tessera(dir.path())
        .args(["keys", "rotate", "--activate-in", "1h"])
        .output()
        .unwrap();
    assert!(
        rotate.status.success(),
        "{}",
        String::from_utf8_lossy(&rotate.stderr)
    );
    let list = tessera(dir.path()).args(["keys", "list"]).output().unwrap();
    let list = String::from_utf8(list.stdout).unwrap();
    assert!(list.contains("signing"), "{list}");
    assert!(list.contains("next (published)"), "{list}");
}

#[test]
fn serve_on_postgres_without_a_key_encryption_key_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let output = tessera(dir.path())
        .args(["serve", "--listen-addr", "127.0.0.1:0"])
        .env(
            "TESSERA_DATABASE_URL",
            "postgres://nobody:secret-password@127.0.0.1:1/none",
        )
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("TESSERA_KEY_ENCRYPTION_KEY"), "{stderr}");
    assert!(
        !stderr.contains("secret-password"),
        "database password leaked: {stderr}"
    );
}

#[test]
fn user_add_refuses_a_password_shorter_than_the_minimum() {
    let dir = tempfile::tempdir().unwrap();
    let output = run_with_stdin(
        tessera(dir.path()).args(["user", "add", "alice", "--scope", "read"]),
        "short\n",
    );
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("shorter than 8"), "{stderr}");
}

#[test]
fn user_add_refuses_a_password_over_1024_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let output = run_with_stdin(
        tessera(dir.path()).args(["user", "add", "alice", "--scope", "read"]),
        &format!("{}\n", "x".repeat(1025)),
    );
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("1024"));
}

/// CPU seconds (user + system) process `pid` has used.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces) in parentheses.
    let fields: Vec<&str> = stat.rsplit_once(") ").unwrap().1.split(' ').collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

#[tokio::test]
async fn out_of_file_descriptors_the_server_neither_spins_nor_stops_serving() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = Command::new("bash");
    command
        .args(["-c", "ulimit -n 256 && exec \"$0\" \"$@\""])
        .arg(env!("CARGO_BIN_EXE_tessera"))
        .env("TESSERA_DATA_DIR", dir.path())
        .args([
            "serve",
            "--listen-addr",
            "127.0.0.1:0",
            "--handshake-timeout",
            "2s",
        ])
        .env_remove("TESSERA_DATABASE_URL")
        .env_remove("TESSERA_KEY_ENCRYPTION_KEY")
        .env("RUST_LOG", "info");
    let (mut server, addr) = serve_with(command);
    let pid = server.id();

    // More silent connections than the server has file descriptors.
    let mut silent = Vec::new();
    for _ in 0..400 {
        if let Ok(Ok(socket)) = tokio::time::timeout(
            Duration::from_millis(200),
            tokio::net::TcpStream::connect(&addr),
        )
        .await
        {
            silent.push(socket);
        }
    }
    let cpu_before = cpu_seconds(pid);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cpu = cpu_seconds(pid) - cpu_before;
    assert!(
        cpu < 0.5,
        "the server used {cpu:.2} s of CPU in 2 s while saturated"
    );

    // The silent ones are closed at the handshake timeout, and calls work.
    let served = async {
        loop {
            if let Ok(mut client) = TokenServiceClient::connect(format!("http://{addr}")).await
                && client
                    .get_jwks(tessera::pb::GetJwksRequest {})
                    .await
                    .is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), served)
        .await
        .expect("the server stopped serving after its file descriptors ran out");
    drop(silent);
    server.kill().unwrap();
    server.wait().unwrap();
}

#[test]
fn keys_rotate_keeps_the_deployments_algorithm_unless_told_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let rotate = |alg_env: &str, extra: &[&str]| {
        let output = tessera(dir.path())
            .args(["keys", "rotate", "--activate-in", "1h"])
            .args(extra)
            .env("TESSERA_SIGNING_ALG", alg_env)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    };
    // The first key of the installation follows TESSERA_SIGNING_ALG...
    assert!(rotate("EdDSA", &[]).contains("added EdDSA key"));
    // ...later rotations keep the deployment's, whatever the shell says.
    assert!(rotate("ES256", &[]).contains("added EdDSA key"));
    assert!(rotate("ES256", &["--alg", "RS256"]).contains("added RS256 key"));
    let list = tessera(dir.path()).args(["keys", "list"]).output().unwrap();
    let list = String::from_utf8(list.stdout).unwrap();
    assert_eq!(list.matches("EdDSA").count(), 3, "{list}");
    assert_eq!(list.matches("RS256").count(), 1, "{list}");
}

#[cfg(unix)]
#[test]
fn an_existing_data_folder_and_its_files_are_made_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let output = run_with_stdin(
        tessera(&data).args(["user", "add", "alice", "--scope", "read"]),
        "correct horse battery\n",
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700);
    for entry in std::fs::read_dir(&data).unwrap() {
        let path = entry.unwrap().path();
        assert_eq!(mode(&path), 0o600, "{}", path.display());
    }
    assert!(String::from_utf8_lossy(&output.stderr).contains("made private"));
}

#[test]
fn plaintext_on_a_non_loopback_address_is_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = tessera(dir.path());
    command.args(["serve", "--listen-addr", "0.0.0.0:0"]);
    let (mut server, _, log) = serve_logging(command);
    server.kill().unwrap();
    server.wait().unwrap();
    assert!(
        log.iter()
            .any(|l| l.contains("WARN") && l.contains("plaintext on a non-loopback address")),
        "{log:#?}"
    );
    // On loopback, no such warning.
    let mut command = tessera(dir.path());
    command.args(["serve", "--listen-addr", "127.0.0.1:0"]);
    let (mut server, _, log) = serve_logging(command);
    server.kill().unwrap();
    server.wait().unwrap();
    assert!(!log.iter().any(|l| l.contains("non-loopback")), "{log:#?}");
}

/// What a failed command printed on stderr, checked to be one line of
/// `error: ...` with no backtrace, even with `RUST_BACKTRACE=1`.
fn one_line_error(output: &Output) -> String {
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    // Log lines (timestamped) aside.
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.starts_with(|c: char| c.is_ascii_digit()))
        .collect();
    assert_eq!(errors.len(), 1, "more than one line: {stderr}");
    assert!(errors[0].starts_with("error: "), "{stderr}");
    assert!(
        !stderr.contains("backtrace") && !stderr.contains("Caused by"),
        "{stderr}"
    );
    errors[0].to_owned()
}

#[test]
fn command_errors_are_one_line_without_a_backtrace_and_say_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let add = || {
        let mut command = tessera(dir.path());
        command
            .env("RUST_BACKTRACE", "1")
            .args(["user", "add", "alice", "--scope", "read"]);
        command
    };
    assert!(
        run_with_stdin(&mut add(), "a long password\n")
            .status
            .success()
    );
    let duplicate = one_line_error(&run_with_stdin(&mut add(), "a long password\n"));
    assert!(
        duplicate.contains("alice")
            && duplicate.contains("already exists")
            && duplicate.contains("tessera user set-password alice"),
        "says what to do instead: {duplicate}"
    );
    let empty = one_line_error(&run_with_stdin(&mut add(), "\n"));
    assert_eq!(empty.matches("password is empty").count(), 1, "{empty}");

    // An empty database started without migrating says what to run.
    let fresh = tempfile::tempdir().unwrap();
    let unmigrated = one_line_error(
        &tessera(fresh.path())
            .env("RUST_BACKTRACE", "1")
            .args(["serve", "--no-migrate", "--listen-addr", "127.0.0.1:0"])
            .output()
            .unwrap(),
    );
    assert!(unmigrated.contains("tessera migrate"), "{unmigrated}");
}

#[test]
fn an_unusable_data_folder_or_key_file_is_named_by_every_command() {
    let dir = tempfile::tempdir().unwrap();
    // A path under a regular file cannot be a folder, even for root.
    let file = dir.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let unusable = file.join("data");
    for command in [
        &["serve", "--listen-addr", "127.0.0.1:0"][..],
        &["migrate"],
        &["user", "list"],
        &["keys", "rotate"],
    ] {
        let error = one_line_error(&tessera(&unusable).args(command).output().unwrap());
        assert!(
            error.contains(&format!("data folder {}", unusable.display())),
            "{command:?}: {error}"
        );
    }
    // A damaged generated key-encryption key: its path and what to do.
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("key-encryption-key"), "not a key").unwrap();
    let error = one_line_error(
        &tessera(&data)
            .args(["serve", "--listen-addr", "127.0.0.1:0"])
            .output()
            .unwrap(),
    );
    assert!(
        error.contains(&data.join("key-encryption-key").display().to_string())
            && error.contains("backup"),
        "{error}"
    );
}

#[test]
fn a_busy_port_is_named_and_nothing_reports_ready() {
    let dir = tempfile::tempdir().unwrap();
    let (mut first, addr) = serve(dir.path());
    let other = tempfile::tempdir().unwrap();
    let second = tessera(other.path())
        .args(["serve", "--listen-addr", &addr])
        .output()
        .unwrap();
    let _ = first.kill();
    let _ = first.wait();
    let error = one_line_error(&second);
    assert!(
        error.contains(&format!("cannot listen on {addr}")),
        "{error}"
    );
    assert!(
        !String::from_utf8_lossy(&second.stderr).contains("reporting SERVING"),
        "a replica that could not bind said it was ready"
    );
}

#[test]
fn an_unreachable_postgresql_is_named_with_the_reason_and_no_password() {
    // Port 1 on loopback: nothing listens there.
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let output = tessera(dir.path())
        .env(
            "TESSERA_DATABASE_URL",
            "postgres://tessera:s3cret-pw@127.0.0.1:1/tessera",
        )
        .env(
            "TESSERA_KEY_ENCRYPTION_KEY",
            tessera_server::Kek::generate_base64().expose_secret(),
        )
        .arg("migrate")
        .output()
        .unwrap();
    let error = one_line_error(&output);
    assert!(
        error.contains("PostgreSQL at 127.0.0.1:1") && error.contains("refused"),
        "{error}"
    );
    assert!(!String::from_utf8_lossy(&output.stderr).contains("s3cret-pw"));
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "a refused connection took {:?}",
        started.elapsed()
    );
}

/// How long after a change to a client its new tokens are good: the change
/// revokes its tokens issued up to 400 ms later (a replica may issue from
/// its in-memory copy that long), kept to the second.
const PAST_A_CLIENT_CHANGE: Duration = Duration::from_millis(1500);

/// A gRPC client of the server at `addr`.
async fn api_at(addr: &str) -> TokenServiceClient<tonic::transport::Channel> {
    TokenServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
}

/// An access token for client `id`, which must get one.
async fn client_token(
    api: &mut TokenServiceClient<tonic::transport::Channel>,
    id: &str,
    secret: &str,
) -> String {
    api.issue(client_grant(id, secret))
        .await
        .unwrap()
        .into_inner()
        .access_token
}

/// Runs an admin command that must succeed; returns its stdout.
fn admin(dir: &std::path::Path, args: &[&str]) -> String {
    let output = tessera(dir).args(args).output().unwrap();
    assert!(
        output.status.success(),
        "tessera {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// Waits (up to 5 s) until Introspect says `active` of `token`.
async fn introspects(
    api: &mut TokenServiceClient<tonic::transport::Channel>,
    bearer: &str,
    token: &str,
    active: bool,
) {
    let started = Instant::now();
    loop {
        let mut request = tonic::Request::new(tessera::pb::IntrospectRequest {
            token: token.to_owned(),
            token_type_hint: 0,
        });
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {bearer}").parse().unwrap());
        if api.introspect(request).await.unwrap().into_inner().active == active {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "still active={} after 5 s",
            !active
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Adds the client `inspector`, allowed to call Introspect; its secret.
fn add_inspector(dir: &std::path::Path) -> String {
    client_secret_of(&admin(
        dir,
        &[
            "client",
            "add",
            "inspector",
            "--scope",
            "tessera:introspect",
        ],
    ))
}

fn client_secret_of(stdout: &str) -> String {
    stdout.lines().last().unwrap().to_owned()
}

#[tokio::test]
async fn an_operator_disables_and_enables_clients_and_users_lists_them_and_revokes_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let billing = client_secret_of(&admin(
        d,
        &["client", "add", "billing", "--scope", "invoices:read"],
    ));
    let inspector = add_inspector(d);
    assert!(
        run_with_stdin(
            tessera(d).args(["user", "add", "alice", "--scope", "read"]),
            "a long password\n"
        )
        .status
        .success()
    );
    let (mut server, addr) = serve(d);
    let mut api = api_at(&addr).await;
    let bearer = client_token(&mut api, "inspector", &inspector).await;
    let token = client_token(&mut api, "billing", &billing).await;
    introspects(&mut api, &bearer, &token, true).await;

    // A leaked secret: disable the client. Its tokens die on the running
    // server, and it gets no more.
    let said = admin(d, &["client", "disable", "billing"]);
    assert!(said.contains("disabled client billing"), "{said}");
    introspects(&mut api, &bearer, &token, false).await;
    let refused = api
        .issue(client_grant("billing", &billing))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    let list = admin(d, &["client", "list"]);
    let row = list.lines().find(|l| l.starts_with("billing")).unwrap();
    assert!(
        row.contains("disabled") && row.contains("invoices:read"),
        "{list}"
    );
    assert!(!list.contains(&billing), "a secret in the list");

    // Enabled again: new tokens work, the revoked one stays revoked.
    admin(d, &["client", "enable", "billing"]);
    tokio::time::sleep(PAST_A_CLIENT_CHANGE).await;
    let again = client_token(&mut api, "billing", &billing).await;
    introspects(&mut api, &bearer, &again, true).await;
    introspects(&mut api, &bearer, &token, false).await;

    // Operator revocation of one token, by jti.
    let jti = jti_of(&again);
    admin(d, &["revoke", "--jti", &jti]);
    introspects(&mut api, &bearer, &again, false).await;

    // A user's session, revoked by sid: refresh fails, access token dies.
    let login = api
        .issue(issue(Grant::Password(PasswordGrant {
            username: "alice".into(),
            password: "a long password".into(),
        })))
        .await
        .unwrap()
        .into_inner();
    introspects(&mut api, &bearer, &login.access_token, true).await;
    admin(d, &["revoke", "--session", &sid_of(&login.access_token)]);
    introspects(&mut api, &bearer, &login.access_token, false).await;
    let refresh = api
        .refresh(tessera::pb::RefreshRequest {
            refresh_token: login.refresh_token,
            scopes: Vec::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(refresh.code(), tonic::Code::Unauthenticated);

    // Users: disable, list, enable.
    admin(d, &["user", "disable", "alice"]);
    let users = admin(d, &["user", "list"]);
    let row = users.lines().find(|l| l.starts_with("alice")).unwrap();
    assert!(row.contains("disabled"), "{users}");
    admin(d, &["user", "enable", "alice"]);
    assert!(
        admin(d, &["user", "list"])
            .lines()
            .any(|l| l.starts_with("alice") && l.contains(" enabled "))
    );

    // A client token's one-off session is revoked through the log too.
    let one_off = client_token(&mut api, "billing", &billing).await;
    admin(d, &["revoke", "--session", &sid_of(&one_off)]);
    introspects(&mut api, &bearer, &one_off, false).await;

    // Ids are base64url and may begin with '-': still taken as values.
    admin(d, &["revoke", "--session", "-dashed-session-id"]);
    admin(d, &["revoke", "--jti", "-dashed-jti"]);

    // Mistakes name the thing and what to do.
    let unknown = tessera(d)
        .args(["client", "disable", "nobody"])
        .output()
        .unwrap();
    let error = one_line_error(&unknown);
    assert!(
        error.contains("no client nobody") && error.contains("client list"),
        "{error}"
    );
    let two = tessera(d)
        .args(["revoke", "--jti", "a", "--session", "b"])
        .output()
        .unwrap();
    assert!(!two.status.success());

    let _ = server.kill();
    let _ = server.wait();
}

/// A claim of a token, read without verifying (the test made the token).
fn claim_of(token: &str, name: &str) -> String {
    claims_of(token)[name].as_str().unwrap().to_owned()
}

fn jti_of(token: &str) -> String {
    claim_of(token, "jti")
}

fn sid_of(token: &str) -> String {
    claim_of(token, "sid")
}

#[tokio::test]
async fn audit_events_are_json_lines_with_their_fields_and_never_a_secret() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let secret = client_secret_of(&admin(d, &["client", "add", "billing", "--scope", "read"]));
    let password = "a long password";
    assert!(
        run_with_stdin(
            tessera(d).args(["user", "add", "alice", "--scope", "read"]),
            &format!("{password}\n")
        )
        .status
        .success()
    );
    let log_path = d.join("serve.log");
    let mut server = Server(
        tessera(d)
            .args(["serve", "--listen-addr", "127.0.0.1:0"])
            .env("TESSERA_LOG_FORMAT", "json")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log_path).unwrap())
            .spawn()
            .unwrap(),
    );
    let started = Instant::now();
    let addr = loop {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        if let Some(line) = log
            .lines()
            .find(|l| l.contains("serving tessera.v1.TokenService"))
        {
            let line: serde_json::Value = serde_json::from_str(line).unwrap();
            break line["addr"].as_str().unwrap().to_owned();
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "serve did not start: {log}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut api = api_at(&addr).await;
    let login = |password: &str| {
        issue(Grant::Password(PasswordGrant {
            username: "alice".into(),
            password: password.into(),
        }))
    };
    let tokens = api.issue(login(password)).await.unwrap().into_inner();
    api.issue(login("wrong password")).await.unwrap_err();
    let refreshed = api
        .refresh(tessera::pb::RefreshRequest {
            refresh_token: tokens.refresh_token.clone(),
            scopes: Vec::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let service = api
        .issue(issue(Grant::ClientCredentials(ClientCredentialsGrant {
            client_id: "billing".into(),
            client_secret: secret.clone(),
        })))
        .await
        .unwrap()
        .into_inner();
    for token in [&service.access_token, &refreshed.refresh_token] {
        api.revoke(tessera::pb::RevokeRequest {
            token: token.clone(),
            token_type_hint: 0,
        })
        .await
        .unwrap();
    }
    let disable = tessera(d)
        .env("TESSERA_LOG_FORMAT", "json")
        .args(["client", "disable", "billing"])
        .output()
        .unwrap();
    assert!(disable.status.success());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = server.kill();
    let _ = server.wait();

    let log =
        std::fs::read_to_string(&log_path).unwrap() + &String::from_utf8_lossy(&disable.stderr);
    for secret in [
        password,
        secret.as_str(),
        &tokens.access_token,
        &tokens.refresh_token,
        &refreshed.refresh_token,
        &service.access_token,
    ] {
        assert!(!log.contains(secret), "a secret or token in the log");
    }
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let event = |name: &str| -> serde_json::Value {
        lines
            .iter()
            .find(|l| l["target"] == "tessera::audit" && l["event"] == name)
            .unwrap_or_else(|| panic!("no {name} event in:\n{log}"))
            .clone()
    };
    let sid = sid_of(&tokens.access_token);
    let succeeded = event("login_succeeded");
    assert_eq!(succeeded["sid"], sid.as_str());
    assert_eq!(succeeded["peer"], "127.0.0.1");
    assert_eq!(succeeded["jti"], jti_of(&tokens.access_token).as_str());
    assert_eq!(event("login_failed")["peer"], "127.0.0.1");
    assert_eq!(event("token_refreshed")["sid"], sid.as_str());
    assert_eq!(
        event("token_revoked")["jti"],
        jti_of(&service.access_token).as_str()
    );
    assert_eq!(event("token_revoked")["client_id"], "billing");
    assert_eq!(event("session_revoked")["sid"], sid.as_str());
    assert_eq!(event("client_disabled")["sub"], "billing");
    assert!(event("key_activated")["kid"].is_string());
}

#[test]
fn health_exits_zero_only_for_a_serving_server_and_config_redacts_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let (mut server, addr) = serve(dir.path());
    let ok = tessera(dir.path())
        .args(["health", "--addr", &addr])
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("SERVING"));
    let _ = server.kill();
    let _ = server.wait();
    let down = tessera(dir.path())
        .args(["health", "--addr", &addr])
        .output()
        .unwrap();
    let error = one_line_error(&down);
    assert!(
        error.contains(&addr) && error.contains("not ready"),
        "{error}"
    );

    let kek = tessera_server::Kek::generate_base64();
    let config = tessera(dir.path())
        .env(
            "TESSERA_DATABASE_URL",
            "postgres://tessera:db-pass-123@db.internal:5432/tessera",
        )
        .env("TESSERA_KEY_ENCRYPTION_KEY", kek.expose_secret())
        .env("TESSERA_ACCESS_TOKEN_TTL", "7m")
        .arg("config")
        .output()
        .unwrap();
    assert!(config.status.success());
    let out = String::from_utf8_lossy(&config.stdout);
    assert!(
        out.contains("postgres://tessera:****@db.internal:5432/tessera"),
        "{out}"
    );
    assert!(
        out.contains("420s"),
        "the TTL from the environment is not shown: {out}"
    );
    assert!(
        !out.contains("db-pass-123") && !out.contains(kek.expose_secret()),
        "{out}"
    );
}

#[tokio::test]
async fn a_rotated_client_secret_overlaps_with_the_old_one_until_the_overlap_ends() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let old = client_secret_of(&admin(d, &["client", "add", "billing", "--scope", "read"]));
    let inspector = add_inspector(d);
    let (mut server, addr) = serve(d);
    let mut api = api_at(&addr).await;
    let bearer = client_token(&mut api, "inspector", &inspector).await;
    let grant = |secret: &str| {
        issue(Grant::ClientCredentials(ClientCredentialsGrant {
            client_id: "billing".into(),
            client_secret: secret.into(),
        }))
    };
    let said = admin(
        d,
        &["client", "rotate-secret", "billing", "--overlap", "2s"],
    );
    let new = client_secret_of(&said);
    assert!(new.starts_with("tsc_") && new != old, "{said}");
    // Both work during the overlap...
    api.issue(grant(&new)).await.unwrap();
    api.issue(grant(&old)).await.unwrap();
    // ...then only the new one.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(
        api.issue(grant(&old)).await.unwrap_err().code(),
        tonic::Code::Unauthenticated
    );
    // No overlap, for a leaked secret: the new secret works at once, and
    // the old one stops on every replica within 400 ms (a replica may
    // still honour it from its in-memory copy until it re-reads it).
    let newest = client_secret_of(&admin(
        d,
        &["client", "rotate-secret", "billing", "--overlap", "0s"],
    ));
    api.issue(grant(&newest)).await.unwrap();
    let started = Instant::now();
    while api.issue(grant(&new)).await.is_ok() {
        assert!(
            started.elapsed() < Duration::from_millis(600),
            "the old secret still works"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The client's tokens were not revoked by the rotation.
    let token = api.issue(grant(&newest)).await.unwrap().into_inner();
    introspects(&mut api, &bearer, &token.access_token, true).await;
    let unknown = tessera(d)
        .args(["client", "rotate-secret", "nobody"])
        .output()
        .unwrap();
    assert!(one_line_error(&unknown).contains("no client nobody"));
    let _ = server.kill();
    let _ = server.wait();
}

#[tokio::test]
async fn set_password_set_scopes_and_delete_end_the_old_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let inspector = add_inspector(d);
    let billing = client_secret_of(&admin(d, &["client", "add", "billing", "--scope", "read"]));
    let add = run_with_stdin(
        tessera(d).args([
            "user", "add", "alice", "--scope", "read", "--scope", "write",
        ]),
        "first password\n",
    );
    assert!(add.status.success());
    let (mut server, addr) = serve(d);
    let mut api = api_at(&addr).await;
    let login = |password: &str| {
        issue(Grant::Password(PasswordGrant {
            username: "alice".into(),
            password: password.into(),
        }))
    };
    let bearer = client_token(&mut api, "inspector", &inspector).await;

    let before = api
        .issue(login("first password"))
        .await
        .unwrap()
        .into_inner();
    let set = run_with_stdin(
        tessera(d).args(["user", "set-password", "alice"]),
        "second password\n",
    );
    assert!(
        set.status.success(),
        "{}",
        String::from_utf8_lossy(&set.stderr)
    );
    introspects(&mut api, &bearer, &before.access_token, false).await;
    assert!(api.issue(login("first password")).await.is_err());
    let after = api
        .issue(login("second password"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after.scopes, ["read", "write"]);
    let short = run_with_stdin(
        tessera(d).args(["user", "set-password", "alice"]),
        "short\n",
    );
    assert!(one_line_error(&short).contains("shorter than 8"));

    admin(d, &["user", "set-scopes", "alice", "--scope", "read"]);
    introspects(&mut api, &bearer, &after.access_token, false).await;
    let refused = api
        .refresh(tessera::pb::RefreshRequest {
            refresh_token: after.refresh_token,
            scopes: Vec::new(),
        })
        .await;
    assert!(
        refused.is_err(),
        "a session from before set-scopes still refreshes"
    );
    let narrowed = api
        .issue(login("second password"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(narrowed.scopes, ["read"]);

    admin(d, &["user", "delete", "alice"]);
    introspects(&mut api, &bearer, &narrowed.access_token, false).await;
    assert_eq!(
        api.issue(login("second password"))
            .await
            .unwrap_err()
            .code(),
        tonic::Code::Unauthenticated
    );
    assert!(!admin(d, &["user", "list"]).contains("alice"));
    let again = tessera(d)
        .args(["user", "delete", "alice"])
        .output()
        .unwrap();
    assert!(one_line_error(&again).contains("no user named alice"));

    let token = client_token(&mut api, "billing", &billing).await;
    admin(d, &["client", "delete", "billing"]);
    introspects(&mut api, &bearer, &token, false).await;
    assert!(api.issue(client_grant("billing", &billing)).await.is_err());
    assert!(!admin(d, &["client", "list"]).contains("billing"));
    let _ = server.kill();
    let _ = server.wait();
}

/// The `kid` in a token's header.
fn kid_of(token: &str) -> String {
    jwt_part(token, 0)["kid"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_retired_key_stops_signing_and_a_revoked_key_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let inspector = add_inspector(d);
    let (mut server, addr) = serve(d);
    let mut api = api_at(&addr).await;
    let issue_token = || {
        issue(Grant::ClientCredentials(ClientCredentialsGrant {
            client_id: "inspector".into(),
            client_secret: inspector.clone(),
        }))
    };
    let first = api
        .issue(issue_token())
        .await
        .unwrap()
        .into_inner()
        .access_token;
    let first_kid = kid_of(&first);

    // Retire: a new key signs at once; the old one's tokens stay good.
    let said = admin(d, &["keys", "retire", &first_kid]);
    assert!(said.contains(&format!("retired key {first_kid}")), "{said}");
    let signer = api.clone();
    let signed_by_another = async |kid: &str| {
        let started = Instant::now();
        loop {
            let token = signer
                .clone()
                .issue(issue_token())
                .await
                .unwrap()
                .into_inner()
                .access_token;
            if kid_of(&token) != kid {
                return token;
            }
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "key {kid} still signs"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let second = signed_by_another(&first_kid).await;
    introspects(&mut api, &second, &first, true).await;

    // Revoke the new signer: its tokens are refused and it is unpublished;
    // yet another key signs.
    let second_kid = kid_of(&second);
    admin(d, &["keys", "revoke", &second_kid]);
    let bearer = signed_by_another(&second_kid).await;
    introspects(&mut api, &bearer, &second, false).await;
    introspects(&mut api, &bearer, &first, true).await;
    let jwks = api
        .get_jwks(tessera::pb::GetJwksRequest {})
        .await
        .unwrap()
        .into_inner()
        .jwks_json;
    assert!(
        !jwks.contains(&second_kid) && jwks.contains(&first_kid),
        "{jwks}"
    );
    let list = admin(d, &["keys", "list"]);
    assert!(!list.contains(&second_kid), "{list}");
    let unknown = tessera(d)
        .args(["keys", "revoke", "nope"])
        .output()
        .unwrap();
    assert!(one_line_error(&unknown).contains("no key nope"));
    let _ = server.kill();
    let _ = server.wait();
}

#[test]
fn the_key_encryption_key_is_read_from_a_file_and_its_flag_is_not_advertised() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    admin(d, &["keys", "rotate"]);
    let generated = d.join("key-encryption-key");
    let with_file = |path: &std::path::Path| {
        tessera(d)
            .env("TESSERA_KEY_ENCRYPTION_KEY_FILE", path)
            .args(["keys", "rotate"])
            .output()
            .unwrap()
    };
    assert!(with_file(&generated).status.success());
    // Another key in the file: it cannot open the stored keys, so it is used.
    let other = d.join("other-kek");
    std::fs::write(
        &other,
        tessera_server::Kek::generate_base64().expose_secret(),
    )
    .unwrap();
    assert!(!with_file(&other).status.success());
    let missing = one_line_error(&with_file(&d.join("missing")));
    assert!(
        missing.contains("TESSERA_KEY_ENCRYPTION_KEY_FILE") && missing.contains("missing"),
        "{missing}"
    );
    let help = help_of(&["keys", "rotate"]);
    assert!(help.contains("--key-encryption-key-file"));
    assert!(!help.contains("--key-encryption-key <"), "{help}");
}

fn help_of(command: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let output = tessera(dir.path())
        .args(command)
        .arg("--help")
        .output()
        .unwrap();
    assert!(output.status.success());
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn each_command_shows_only_the_options_it_uses_its_own_first() {
    let serving = [
        "--listen-addr",
        "--tls-cert <",
        "--max-connections <",
        "--http-addr",
    ];
    let store = ["--database-url", "--data-dir", "--key-encryption-key-file"];
    // Server options on `serve` (and `config`, which prints them) only.
    for command in [&["serve"][..], &["config"]] {
        let help = help_of(command);
        for flag in serving.iter().chain(&store) {
            assert!(help.contains(flag), "{command:?} lacks {flag}:\n{help}");
        }
    }
    for command in [
        &["user", "add"][..],
        &["user", "list"],
        &["client", "add"],
        &["keys", "rotate"],
        &["revoke"],
        &["migrate"],
    ] {
        let help = help_of(command);
        for flag in &serving {
            assert!(!help.contains(flag), "{command:?} shows {flag}:\n{help}");
        }
        for flag in &store {
            assert!(help.contains(flag), "{command:?} lacks {flag}:\n{help}");
        }
    }
    // Password hashing where passwords are set, not for clients.
    assert!(help_of(&["user", "set-password"]).contains("--argon2-memory-kib"));
    assert!(!help_of(&["client", "add"]).contains("--argon2-memory-kib"));
    // `health` talks to a server: no database at all.
    let health = help_of(&["health"]);
    for flag in store.iter().chain(&["--issuer", "--tls-cert <"]) {
        assert!(!health.contains(flag), "health shows {flag}:\n{health}");
    }
    // A command's own options come before the shared settings.
    let add = help_of(&["user", "add"]);
    assert!(
        add.find("--scope").unwrap() < add.find("--database-url").unwrap(),
        "{add}"
    );
    // The settings still work before the subcommand of a group.
    let dir = tempfile::tempdir().unwrap();
    let listed = tessera(dir.path())
        .env_remove("TESSERA_DATA_DIR")
        .args(["user", "--data-dir"])
        .arg(dir.path())
        .arg("list")
        .output()
        .unwrap();
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    assert!(dir.path().join("tessera.db").exists());
}

#[tokio::test]
async fn roles_are_assigned_with_role_and_replaced_with_set_roles() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let add = run_with_stdin(
        tessera(d).args(["user", "add", "bob", "--scope", "read", "--role", "admin"]),
        "a long password\n",
    );
    assert!(
        add.status.success(),
        "{}",
        String::from_utf8_lossy(&add.stderr)
    );
    let (mut server, addr) = serve(d);
    let mut api = api_at(&addr).await;
    let login = || {
        issue(Grant::Password(PasswordGrant {
            username: "bob".into(),
            password: "a long password".into(),
        }))
    };
    let roles_of = |token: &str| claims_of(token)["roles"].clone();
    let first = api.issue(login()).await.unwrap().into_inner().access_token;
    assert_eq!(roles_of(&first), serde_json::json!(["admin"]));
    admin(d, &["user", "set-roles", "bob", "--role", "auditor"]);
    let second = api.issue(login()).await.unwrap().into_inner().access_token;
    assert_eq!(roles_of(&second), serde_json::json!(["auditor"]));
    assert!(admin(d, &["user", "list"]).contains("read [auditor]"));
    admin(d, &["user", "set-roles", "bob"]);
    let third = api.issue(login()).await.unwrap().into_inner().access_token;
    assert!(roles_of(&third).is_null(), "no roles: the claim is omitted");
    let _ = server.kill();
    let _ = server.wait();
}

#[tokio::test]
async fn a_clients_scopes_and_roles_are_replaced_and_its_old_tokens_end() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let inspector = add_inspector(d);
    let secret = client_secret_of(&admin(
        d,
        &[
            "client", "add", "billing", "--scope", "read", "--role", "clerk",
        ],
    ));
    let (mut server, addr) = serve(d);
    let mut api = api_at(&addr).await;
    let bearer = client_token(&mut api, "inspector", &inspector).await;
    let old = api
        .issue(client_grant("billing", &secret))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        claims_of(&old.access_token)["roles"],
        serde_json::json!(["clerk"])
    );
    introspects(&mut api, &bearer, &old.access_token, true).await;

    let said = admin(d, &["client", "set-roles", "billing", "--role", "auditor"]);
    assert!(said.contains("auditor"), "{said}");
    let listed = admin(d, &["client", "list"]);
    assert!(listed.contains("[auditor]"), "{listed}");
    admin(
        d,
        &[
            "client",
            "set-scopes",
            "billing",
            "--scope",
            "read",
            "--scope",
            "write",
        ],
    );
    introspects(&mut api, &bearer, &old.access_token, false).await;
    tokio::time::sleep(PAST_A_CLIENT_CHANGE).await;
    let new = api
        .issue(client_grant("billing", &secret))
        .await
        .unwrap()
        .into_inner();
    let claims = claims_of(&new.access_token);
    assert_eq!(claims["roles"], serde_json::json!(["auditor"]));
    assert_eq!(claims["scope"], "read write");
    introspects(&mut api, &bearer, &new.access_token, true).await;

    let unknown = tessera(d)
        .args(["client", "set-roles", "nobody", "--role", "x"])
        .output()
        .unwrap();
    assert!(one_line_error(&unknown).contains("no client nobody"));
    let _ = server.kill();
    let _ = server.wait();
}

/// The claims of a JWT, read without verifying (the test made the token).
fn claims_of(token: &str) -> serde_json::Value {
    jwt_part(token, 1)
}

/// Part `index` of a JWT (0 header, 1 claims) as JSON.
fn jwt_part(token: &str, index: usize) -> serde_json::Value {
    use base64::Engine;
    let part = token.split('.').nth(index).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_logs_losing_its_database_and_being_back() {
    let db = crate::helpers::TestDatabase::new(crate::helpers::Backend::Postgres).await;
    let dir = tempfile::tempdir().unwrap();
    let mut command = tessera(dir.path());
    command
        .env("TESSERA_DATABASE_URL", &db.url)
        .env("TESSERA_KEY_ENCRYPTION_KEY", db.kek.expose_secret())
        .args([
            "serve",
            "--listen-addr",
            "127.0.0.1:0",
            "--revocation-stale-after",
            "2s",
        ]);
    let (mut server, _, before, log) = serve_watched(command);
    if !before
        .iter()
        .any(|l| l.contains("ready: reporting SERVING"))
    {
        await_line(&log, "ready: reporting SERVING", Duration::from_secs(10));
    }

    db.set_reachable(false).await;
    let lost = await_line(
        &log,
        "cannot read the revocation log",
        Duration::from_secs(10),
    );
    assert!(lost.contains("WARN"), "{lost}");
    let down = await_line(
        &log,
        "not ready: reporting NOT_SERVING",
        Duration::from_secs(10),
    );
    assert!(down.contains("revocation"), "the reason is named: {down}");

    db.set_reachable(true).await;
    let back = await_line(
        &log,
        "the revocation log is readable again",
        Duration::from_secs(20),
    );
    assert!(back.contains("down_for_ms="), "{back}");
    await_line(
        &log,
        "ready again: reporting SERVING",
        Duration::from_secs(10),
    );
    let _ = server.kill();
    let _ = server.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_issued_around_a_client_disable_outlives_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_owned();
    let secret = client_secret_of(&admin(&d, &["client", "add", "billing", "--scope", "read"]));
    let inspector = add_inspector(&d);
    let (mut server, addr) = serve(&d);
    let mut api = api_at(&addr).await;
    let bearer = client_token(&mut api, "inspector", &inspector).await;
    // Logins in a tight loop, before, during and after the disable, until
    // they have been refused for 300 ms.
    let hammer = {
        let mut api = api.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let mut issued = Vec::new();
            let mut refused_since: Option<Instant> = None;
            loop {
                match api.issue(client_grant("billing", &secret)).await {
                    Ok(answer) => {
                        issued.push(answer.into_inner().access_token);
                        refused_since = None;
                    }
                    Err(_) => {
                        if refused_since.get_or_insert_with(Instant::now).elapsed()
                            > Duration::from_millis(300)
                        {
                            return issued;
                        }
                    }
                }
                assert!(
                    started.elapsed() < Duration::from_secs(10),
                    "logins still succeed"
                );
            }
        })
    };
    // The disable lands late in a second, so a token a replica still
    // issues from its in-memory copy carries the next second's `iat`.
    loop {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_millis();
        if ms >= 900 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::task::spawn_blocking(move || admin(&d, &["client", "disable", "billing"]))
        .await
        .unwrap();
    let issued = hammer.await.unwrap();
    assert!(!issued.is_empty());
    for token in &issued {
        introspects(&mut api, &bearer, token, false).await;
    }
    let _ = server.kill();
    let _ = server.wait();
}

#[test]
fn migrations_are_logged_when_applied_and_not_when_current() {
    let dir = tempfile::tempdir().unwrap();
    let first = tessera(dir.path()).arg("migrate").output().unwrap();
    assert!(first.status.success());
    let log = String::from_utf8_lossy(&first.stderr);
    let line = log
        .lines()
        .find(|l| l.contains("applied database migrations"))
        .unwrap_or_else(|| panic!("no migration line:\n{log}"));
    assert!(line.contains("from=0") && line.contains("1 init"), "{line}");
    let again = tessera(dir.path()).arg("migrate").output().unwrap();
    assert!(again.status.success());
    assert!(
        !String::from_utf8_lossy(&again.stderr).contains("applied database migrations"),
        "nothing was applied the second time"
    );
}

#[tokio::test]
async fn an_unreadable_revocation_row_is_named_so_it_can_be_fixed() {
    use sqlx::Connection;
    let dir = tempfile::tempdir().unwrap();
    assert!(
        tessera(dir.path())
            .arg("migrate")
            .output()
            .unwrap()
            .status
            .success()
    );
    let url = format!("sqlite://{}", dir.path().join("tessera.db").display());
    let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO revocation_log (kind, value, at, expires_at) \
         VALUES ('bogus', 'x', 1, 9999999999) RETURNING id",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();
    // Failing closed is right (a revocation it cannot read might be one
    // that matters); the message says which row.
    let error = one_line_error(
        &tessera(dir.path())
            .args(["serve", "--listen-addr", "127.0.0.1:0"])
            .output()
            .unwrap(),
    );
    assert!(
        error.contains(&format!("revocation_log row id {id}")) && error.contains("bogus"),
        "{error}"
    );
}
