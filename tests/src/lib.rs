//! End-to-end test harness: every test gets its own Tessera on
//! `127.0.0.1:0` over its own database (a fresh PostgreSQL database, or a
//! SQLite file in a temp folder), through [`spawn_app`].
//!
//! PostgreSQL comes from `TESSERA_TEST_DATABASE_URL` (an admin connection
//! that may create databases); `scripts/test.sh` starts a throwaway cluster
//! and sets it. Without it the PostgreSQL tests fail rather than skip, so a
//! run that silently missed them cannot look green.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use clap::Parser;
use secrecy::{ExposeSecret, SecretString};
use sqlx::{Connection, Executor, PgConnection};
use tempfile::TempDir;
use tessera::pb::{
    ClientCredentialsGrant, IntrospectRequest, IntrospectResponse, IssueRequest, IssueResponse,
    PasswordGrant, RefreshRequest, RefreshResponse, RevokeRequest, issue_request::Grant,
    token_service_client::TokenServiceClient,
};
use tessera_server::{
    clock::{Clock, ManualClock},
    config::{Options, Settings},
    domain::{Audience, ClientId, Password, PasswordHasher, ScopeSet, Username, admin},
    keys::Kek,
    startup::{self, Application},
    store::Store,
};
use tokio::{sync::oneshot, task::JoinHandle};
use tonic::{Request, Status, transport::Channel};

/// Which database a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A fresh database on the test PostgreSQL server.
    Postgres,
    /// A SQLite file in a temporary folder.
    Sqlite,
}

/// Generates one `#[tokio::test]` per backend for each named
/// `async fn name(backend: Backend)`, as `name::postgres` and `name::sqlite`.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    super::$name($crate::Backend::Postgres).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$name($crate::Backend::Sqlite).await;
                }
            }
        )*
    };
}

/// A database for one test, kept alive (and for SQLite, on disk) as long as
/// this value lives. Several apps may share it (replicas, restarts).
pub struct TestDatabase {
    /// Which backend.
    pub backend: Backend,
    /// Connection URL.
    pub url: String,
    /// Key-encryption key every app on this database uses.
    pub kek: SecretString,
    /// Data folder (SQLite file; also where an app would put a generated KEK).
    pub dir: TempDir,
}

impl TestDatabase {
    /// A new, empty database.
    pub async fn new(backend: Backend) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = match backend {
            Backend::Sqlite => {
                format!(
                    "sqlite://{}?mode=rwc",
                    dir.path().join("tessera.db").display()
                )
            }
            Backend::Postgres => create_postgres_database().await,
        };
        Self {
            backend,
            url,
            kek: Kek::generate_base64(),
            dir,
        }
    }
}

/// The admin URL of the test PostgreSQL server.
pub fn postgres_admin_url() -> String {
    std::env::var("TESSERA_TEST_DATABASE_URL").unwrap_or_else(|_| {
        panic!(
            "TESSERA_TEST_DATABASE_URL is not set: run the tests with scripts/test.sh, \
             which starts a throwaway PostgreSQL"
        )
    })
}

async fn create_postgres_database() -> String {
    let admin = postgres_admin_url();
    let name = format!(
        "tessera_test_{}",
        tessera_server::domain::secrets::random_id()
            .to_lowercase()
            .replace(['-', '_'], "")
    );
    let mut conn = PgConnection::connect(&admin)
        .await
        .expect("connect to the test PostgreSQL");
    conn.execute(format!(r#"CREATE DATABASE "{name}""#).as_str())
        .await
        .expect("create a test database");
    conn.close().await.ok();
    let base = admin
        .rsplit_once('/')
        .map_or(admin.as_str(), |(base, _)| base);
    format!("{base}/{name}")
}

/// A running Tessera for one test.
pub struct TestApp {
    /// Where it listens.
    pub addr: SocketAddr,
    /// A client connected to it.
    pub client: TokenServiceClient<Channel>,
    /// Its clock; advance it to cross expiries and grace windows.
    pub clock: ManualClock,
    /// Its settings (as parsed from flags).
    pub settings: Settings,
    /// Its store, for setting up principals like the admin commands do.
    pub store: Arc<dyn Store>,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<()>>,
}

/// Later flags override earlier ones, as they do for `tessera`.
#[derive(Parser)]
#[command(args_override_self = true)]
struct Flags {
    #[command(flatten)]
    options: Options,
}

/// Settings as `tessera` would parse them from these flags, on `db`.
pub fn settings_for(db: &TestDatabase, extra_flags: &[&str]) -> Settings {
    let data_dir = db.dir.path().display().to_string();
    let mut args = vec![
        "tessera",
        "--database-url",
        &db.url,
        "--key-encryption-key",
        db.kek.expose_secret(),
        "--data-dir",
        &data_dir,
        "--listen-addr",
        "127.0.0.1:0",
        "--database-max-connections",
        "4",
        "--revocation-poll-interval",
        "200ms",
        "--revocation-stale-after",
        "5s",
    ];
    args.extend_from_slice(extra_flags);
    Flags::try_parse_from(args)
        .expect("valid flags")
        .options
        .settings()
        .expect("valid settings")
}

/// A Tessera on a fresh database.
pub async fn spawn_app(backend: Backend) -> (TestApp, TestDatabase) {
    let db = TestDatabase::new(backend).await;
    let app = spawn_app_on(&db, &[]).await;
    (app, db)
}

/// A Tessera on an existing database (a second replica, or a restart), with
/// extra flags.
pub async fn spawn_app_on(db: &TestDatabase, extra_flags: &[&str]) -> TestApp {
    let settings = settings_for(db, extra_flags);
    let clock = ManualClock::starting_now();
    let app = Application::build(settings.clone(), Arc::new(clock.clone()) as Arc<dyn Clock>)
        .await
        .expect("the application starts");
    let addr = app.local_addr();
    let (tx, rx) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        app.run_until(async {
            let _ = rx.await;
        })
        .await
        .expect("the server runs");
    });
    let store = startup::open_store(&settings).await.expect("open store");
    let client = TokenServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("connect to the server");
    TestApp {
        addr,
        client,
        clock,
        settings,
        store,
        shutdown: Some(tx),
        server: Some(server),
    }
}

/// Argon2 parameters from the settings (OWASP defaults unless a test says).
fn hasher(settings: &Settings) -> PasswordHasher {
    PasswordHasher::new(&settings.hashing).expect("hasher")
}

impl TestApp {
    /// Adds a user the way `tessera user add` does; returns their `sub`.
    pub async fn add_user(&self, name: &str, password: &str, scopes: &[&str]) -> String {
        admin::add_user(
            &*self.store,
            &hasher(&self.settings),
            Username::parse(name).unwrap(),
            &Password::parse(SecretString::from(password)).unwrap(),
            ScopeSet::parse_list(scopes).unwrap(),
            Vec::new(),
            self.clock.now(),
        )
        .await
        .expect("add user")
    }

    /// Adds a client the way `tessera client add` does; returns its secret.
    pub async fn add_client(&self, id: &str, scopes: &[&str], audiences: &[&str]) -> String {
        admin::add_client(
            &*self.store,
            ClientId::parse(id).unwrap(),
            ScopeSet::parse_list(scopes).unwrap(),
            audiences
                .iter()
                .map(|a| Audience::parse(a).unwrap())
                .collect(),
            self.clock.now(),
        )
        .await
        .expect("add client")
        .expose_secret()
        .to_owned()
    }

    /// Issue with a password grant.
    pub async fn login(&self, username: &str, password: &str) -> Result<IssueResponse, Status> {
        self.issue(password_grant(username, password)).await
    }

    /// Issue with any request.
    pub async fn issue(&self, request: IssueRequest) -> Result<IssueResponse, Status> {
        self.client
            .clone()
            .issue(request)
            .await
            .map(tonic::Response::into_inner)
    }

    /// Refresh with the presented token's scopes.
    pub async fn refresh(&self, refresh_token: &str) -> Result<RefreshResponse, Status> {
        self.client
            .clone()
            .refresh(RefreshRequest {
                refresh_token: refresh_token.into(),
                scopes: Vec::new(),
            })
            .await
            .map(tonic::Response::into_inner)
    }

    /// Revoke without a type hint.
    pub async fn revoke(&self, token: &str) -> Result<(), Status> {
        self.client
            .clone()
            .revoke(RevokeRequest {
                token: token.into(),
                token_type_hint: 0,
            })
            .await
            .map(|_| ())
    }

    /// The JWK Set JSON from GetJwks.
    pub async fn jwks(&self) -> String {
        self.client
            .clone()
            .get_jwks(tessera::pb::GetJwksRequest {})
            .await
            .expect("GetJwks")
            .into_inner()
            .jwks_json
    }

    /// A bearer token allowed to introspect, from a new client.
    pub async fn introspector_token(&self) -> String {
        let id = format!(
            "introspector-{}",
            tessera_server::domain::secrets::random_id()
        );
        let secret = self.add_client(&id, &["tessera:introspect"], &[]).await;
        self.issue(client_grant(&id, &secret))
            .await
            .expect("introspector token")
            .access_token
    }

    /// Introspect `token` with `bearer`.
    pub async fn introspect_with(
        &self,
        bearer: &str,
        token: &str,
    ) -> Result<IntrospectResponse, Status> {
        let mut request = Request::new(IntrospectRequest {
            token: token.to_owned(),
            token_type_hint: 0,
        });
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {bearer}").parse().unwrap());
        self.client
            .clone()
            .introspect(request)
            .await
            .map(tonic::Response::into_inner)
    }

    /// Stops the server gracefully and waits for it.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            tokio::time::timeout(Duration::from_secs(10), server)
                .await
                .expect("the server stops within 10 s")
                .expect("the server task ends cleanly");
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(server) = &self.server {
            server.abort();
        }
    }
}

/// A password grant request with default scopes and audience.
pub fn password_grant(username: &str, password: &str) -> IssueRequest {
    IssueRequest {
        grant: Some(Grant::Password(PasswordGrant {
            username: username.into(),
            password: password.into(),
        })),
        scopes: Vec::new(),
        audience: String::new(),
    }
}

/// A client credentials grant request with default scopes and audience.
pub fn client_grant(client_id: &str, secret: &str) -> IssueRequest {
    IssueRequest {
        grant: Some(Grant::ClientCredentials(ClientCredentialsGrant {
            client_id: client_id.into(),
            client_secret: secret.into(),
        })),
        scopes: Vec::new(),
        audience: String::new(),
    }
}

/// Polls `check` every 10 ms until it holds or `within` passes; returns how
/// long it took. For effects that cross processes or replicas, where there
/// is no notification to wait on.
pub async fn eventually<F, Fut>(within: Duration, mut check: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = tokio::time::Instant::now();
    while start.elapsed() < within {
        if check().await {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}
