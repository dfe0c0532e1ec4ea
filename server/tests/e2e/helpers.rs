//! The harness: [`spawn_app`] gives every test its own Tessera over its own
//! database; settings are built in code, so no `TESSERA_*` variable in the
//! environment changes a test.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use secrecy::{ExposeSecret, SecretString};
use sqlx::{Connection, Executor, PgConnection};
use tempfile::TempDir;
use tessera::pb::{
    ClientCredentialsGrant, IntrospectRequest, IntrospectResponse, IssueRequest, IssueResponse,
    PasswordGrant, RefreshRequest, RefreshResponse, RevokeRequest, issue_request::Grant,
    token_service_client::TokenServiceClient,
};
use tessera_client::{
    AuthInterceptor, Credentials, SourceConfig, TokenSource, Transport,
    verify::{IntrospectionConfig, IntrospectionVerifier, JwksConfig, JwksVerifier},
};
use tessera_server::{
    Admin, Application, Audience, ClientId, Clock, Kek, ManualClock, NewClientCredential, Password,
    ScopeSet, Settings, Store, Username, open_admin, open_store, random_id,
};
use tokio::{sync::oneshot, task::JoinHandle};
use tonic::{
    Request, Status,
    transport::{Channel, Endpoint},
};

/// Which database a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    /// A fresh database on the test PostgreSQL server.
    Postgres,
    /// A SQLite file in a temporary folder.
    Sqlite,
}

/// Generates one `#[tokio::test]` per backend for each named
/// `async fn name(backend: Backend)`, as `name::postgres` and `name::sqlite`.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    super::$name($crate::helpers::Backend::Postgres).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$name($crate::helpers::Backend::Sqlite).await;
                }
            }
        )*
    };
}
pub(crate) use on_both_backends;

/// A database for one test, kept alive (and for SQLite, on disk) as long as
/// this value lives. Several apps may share it (replicas, restarts).
pub(crate) struct TestDatabase {
    /// Which backend.
    pub(crate) backend: Backend,
    /// Connection URL.
    pub(crate) url: String,
    /// Key-encryption key every app on this database uses.
    pub(crate) kek: SecretString,
    /// Data folder (SQLite file; also where an app would put a generated KEK).
    pub(crate) dir: TempDir,
}

impl TestDatabase {
    /// A new, empty database.
    pub(crate) async fn new(backend: Backend) -> Self {
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

impl Drop for TestDatabase {
    /// A PostgreSQL database is dropped with its test (connections still
    /// open to it are cut), so a run's databases do not pile up on disk;
    /// best effort, as a failed drop only costs space.
    fn drop(&mut self) {
        if self.backend != Backend::Postgres {
            return;
        }
        let name = self.url.rsplit('/').next().unwrap_or_default().to_owned();
        let dropper = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async {
                let mut admin = PgConnection::connect(&postgres_admin_url()).await.ok()?;
                admin
                    .execute(format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#).as_str())
                    .await
                    .ok()
            })
        });
        let _ = dropper.join();
    }
}

impl TestDatabase {
    /// PostgreSQL only: cuts every connection to this database off and
    /// refuses new ones (a real outage, for this database alone), or lets
    /// them in again.
    pub(crate) async fn set_reachable(&self, reachable: bool) {
        assert_eq!(
            self.backend,
            Backend::Postgres,
            "an outage needs PostgreSQL"
        );
        let name = self.url.rsplit('/').next().unwrap().to_owned();
        let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(&postgres_admin_url())
            .await
            .unwrap();
        sqlx::query(&format!(
            r#"ALTER DATABASE "{name}" ALLOW_CONNECTIONS {reachable}"#
        ))
        .execute(&mut admin)
        .await
        .unwrap();
        if !reachable {
            sqlx::query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
            )
            .bind(&name)
            .execute(&mut admin)
            .await
            .unwrap();
        }
    }

    /// A new, empty SQLite database in `dir` (which the caller keeps alive).
    pub(crate) fn sqlite_in(dir: &std::path::Path) -> Self {
        Self {
            backend: Backend::Sqlite,
            url: format!("sqlite://{}?mode=rwc", dir.join("tessera.db").display()),
            kek: Kek::generate_base64(),
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }
}

/// The admin URL of the test PostgreSQL server.
pub(crate) fn postgres_admin_url() -> String {
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
        random_id().to_lowercase().replace(['-', '_'], "")
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
pub(crate) struct TestApp {
    /// Where it listens.
    pub(crate) addr: SocketAddr,
    /// Where its HTTP listener is, when `settings.http_addr` asked for one.
    pub(crate) http_addr: Option<SocketAddr>,
    /// A client connected to it.
    pub(crate) client: TokenServiceClient<Channel>,
    /// Its clock; advance it to cross expiries and grace windows.
    pub(crate) clock: ManualClock,
    /// Its settings.
    pub(crate) settings: Settings,
    /// Its store, for looking behind the API.
    pub(crate) store: Arc<dyn Store>,
    /// Administration, as the `tessera user` and `tessera client` commands do it.
    pub(crate) admin: Admin,
    /// How the client crate's parts reach it (plaintext, until `use_tls`).
    transport: Transport,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<()>>,
}

/// The settings every test app starts from, on `db`: the defaults, an
/// ephemeral port, a small pool and a fast revocation poll.
pub(crate) fn settings_for(db: &TestDatabase) -> Settings {
    let mut settings = Settings::new(db.dir.path());
    settings.database_url = SecretString::from(db.url.clone());
    settings.key_encryption_key = Some(db.kek.clone());
    settings.listen_addr = "127.0.0.1:0".parse().unwrap();
    settings.database_max_connections = 4;
    settings.follow.poll_interval = Duration::from_millis(200);
    settings.revocation_stale_after = Duration::from_secs(5);
    // Tests use short passwords for brevity; the rule has its own test.
    settings.password_min_length = 1;
    settings
}

/// A Tessera on a fresh database.
pub(crate) async fn spawn_app(backend: Backend) -> (TestApp, TestDatabase) {
    spawn_app_with(backend, |_| {}).await
}

/// A Tessera on a fresh database, with settings changed by `configure`.
pub(crate) async fn spawn_app_with(
    backend: Backend,
    configure: impl FnOnce(&mut Settings),
) -> (TestApp, TestDatabase) {
    let db = TestDatabase::new(backend).await;
    let app = spawn_app_on(&db, configure).await;
    (app, db)
}

/// A Tessera on an existing database (a second replica, or a restart), with
/// settings changed by `configure`.
pub(crate) async fn spawn_app_on(
    db: &TestDatabase,
    configure: impl FnOnce(&mut Settings),
) -> TestApp {
    let mut settings = settings_for(db);
    configure(&mut settings);
    settings.validate().expect("valid settings");
    let clock = ManualClock::starting_now();
    let app = Application::build(settings.clone(), Arc::new(clock.clone()) as Arc<dyn Clock>)
        .await
        .expect("the application starts");
    let addr = app.local_addr();
    let http_addr = app.http_addr();
    let (tx, rx) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        app.run_until(async {
            let _ = rx.await;
        })
        .await
        .expect("the server runs");
    });
    let store = open_store(&settings).await.expect("open store");
    let admin = open_admin(&settings, Arc::new(clock.clone()))
        .await
        .expect("open admin");
    // Lazily: a TLS app's tests connect their own clients.
    let client = TokenServiceClient::new(
        Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_lazy(),
    );
    TestApp {
        addr,
        http_addr,
        client,
        clock,
        settings,
        store,
        admin,
        transport: Transport::default(),
        shutdown: Some(tx),
        server: Some(server),
    }
}

impl TestApp {
    /// Adds a user the way `tessera user add` does; returns their `sub`.
    pub(crate) async fn add_user(&self, name: &str, password: &str, scopes: &[&str]) -> String {
        self.admin
            .add_user(
                Username::parse(name).unwrap(),
                &Password::parse(SecretString::from(password)).unwrap(),
                ScopeSet::parse_list(scopes).unwrap(),
                Vec::new(),
                ScopeSet::default(),
            )
            .await
            .expect("add user")
    }

    /// Disables a user the way `tessera user disable` does.
    pub(crate) async fn disable_user(&self, name: &str) {
        self.admin
            .disable_user(&Username::parse(name).unwrap())
            .await
            .expect("disable user");
    }

    /// Adds a client the way `tessera client add` does; returns its secret.
    pub(crate) async fn add_client(&self, id: &str, scopes: &[&str], audiences: &[&str]) -> String {
        self.add_client_with(id, scopes, audiences, NewClientCredential::Secret)
            .await
            .expect("a secret client has a secret")
    }

    /// Adds a client that authenticates with `credential`; its secret, if any.
    pub(crate) async fn add_client_with(
        &self,
        id: &str,
        scopes: &[&str],
        audiences: &[&str],
        credential: NewClientCredential,
    ) -> Option<String> {
        self.admin
            .add_client(
                ClientId::parse(id).unwrap(),
                ScopeSet::parse_list(scopes).unwrap(),
                audiences
                    .iter()
                    .map(|a| Audience::parse(a).unwrap())
                    .collect(),
                ScopeSet::default(),
                credential,
            )
            .await
            .expect("add client")
            .map(|secret| secret.expose_secret().to_owned())
    }

    /// Issue with a password grant.
    pub(crate) async fn login(
        &self,
        username: &str,
        password: &str,
    ) -> Result<IssueResponse, Status> {
        self.issue(password_grant(username, password)).await
    }

    /// Issue with any request.
    pub(crate) async fn issue(&self, request: IssueRequest) -> Result<IssueResponse, Status> {
        self.client
            .clone()
            .issue(request)
            .await
            .map(tonic::Response::into_inner)
    }

    /// Refresh with the presented token's scopes.
    pub(crate) async fn refresh(&self, refresh_token: &str) -> Result<RefreshResponse, Status> {
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
    pub(crate) async fn revoke(&self, token: &str) -> Result<(), Status> {
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
    pub(crate) async fn jwks(&self) -> String {
        self.client
            .clone()
            .get_jwks(tessera::pb::GetJwksRequest {})
            .await
            .expect("GetJwks")
            .into_inner()
            .jwks_json
    }

    /// A bearer token allowed to introspect, from a new client.
    pub(crate) async fn introspector_token(&self) -> String {
        let id = format!("introspector-{}", random_id());
        let secret = self.add_client(&id, &["tessera:introspect"], &[]).await;
        self.issue(client_grant(&id, &secret))
            .await
            .expect("introspector token")
            .access_token
    }

    /// Introspect `token` with `bearer`.
    pub(crate) async fn introspect_with(
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

    /// A client whose connections come from `local` (another loopback
    /// address is another peer to the server).
    pub(crate) async fn client_from(&self, local: &str) -> TokenServiceClient<Channel> {
        let channel = self
            .endpoint()
            .local_address(Some(local.parse().unwrap()))
            .connect()
            .await
            .unwrap();
        TokenServiceClient::new(channel)
    }

    /// From now on, talks to the app over TLS trusting `ca_pem`: its
    /// `client`, and the client crate parts the helpers build.
    pub(crate) fn use_tls(&mut self, ca_pem: &str) {
        self.client = self.tls_client(ca_pem, None);
        self.transport = Transport::Tls(tessera_client::ClientTls::new().with_ca_pem(ca_pem));
    }

    /// The endpoint the client crate's parts dial: `https://localhost`
    /// once `use_tls` was called.
    fn client_endpoint(&self) -> Endpoint {
        match self.transport {
            Transport::Tls(_) => {
                Endpoint::from_shared(format!("https://localhost:{}", self.addr.port())).unwrap()
            }
            Transport::Plaintext(_) => self.endpoint(),
        }
    }

    /// A client over TLS trusting `ca_pem`, presenting `identity` if given.
    pub(crate) fn tls_client(
        &self,
        ca_pem: &str,
        identity: Option<&crate::pki::Leaf>,
    ) -> TokenServiceClient<Channel> {
        TokenServiceClient::new(self.tls_channel(ca_pem, identity))
    }

    /// A lazily connecting TLS channel to `https://localhost:<port>`.
    pub(crate) fn tls_channel(&self, ca_pem: &str, identity: Option<&crate::pki::Leaf>) -> Channel {
        let mut tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(ca_pem))
            .domain_name("localhost");
        if let Some(leaf) = identity {
            tls = tls.identity(tonic::transport::Identity::from_pem(
                &leaf.cert_pem,
                &leaf.key_pem,
            ));
        }
        Endpoint::from_shared(format!("https://localhost:{}", self.addr.port()))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect_lazy()
    }

    /// The server's address as a client endpoint.
    pub(crate) fn endpoint(&self) -> Endpoint {
        Endpoint::from_shared(format!("http://{}", self.addr)).unwrap()
    }

    /// A client crate [`IntrospectionVerifier`] that authenticates to this
    /// Tessera with its own client credentials, as a microservice would.
    pub(crate) async fn introspection_verifier(
        &self,
        configure: impl FnOnce(&mut IntrospectionConfig),
    ) -> IntrospectionVerifier {
        let mut config = IntrospectionConfig::new(self.settings.tokens.default_audience.as_str());
        configure(&mut config);
        let id = format!("verifier-{}", random_id());
        let secret = self.add_client(&id, &["tessera:introspect"], &[]).await;
        let credentials = Credentials::ClientCredentials {
            client_id: id,
            client_secret: SecretString::from(secret),
        };
        let own = TokenSource::connect(
            &self.client_endpoint(),
            &self.transport,
            credentials,
            SourceConfig::default(),
        )
        .unwrap();
        own.ready().await.unwrap();
        let auth = AuthInterceptor::new(&own, &self.client_endpoint(), &self.transport).unwrap();
        IntrospectionVerifier::connect(&self.client_endpoint(), &self.transport, auth, config)
            .unwrap()
    }

    /// A client crate [`JwksVerifier`] for this Tessera's issuer and its
    /// default audience.
    pub(crate) fn jwks_verifier(&self, config: impl FnOnce(&mut JwksConfig)) -> JwksVerifier {
        let mut jwks = JwksConfig::new(
            self.settings.tokens.issuer.clone(),
            self.settings.tokens.default_audience.as_str(),
        );
        jwks.max_lifetime = self.settings.tokens.access_token_max_lifetime;
        jwks.min_refetch = Duration::from_millis(10);
        config(&mut jwks);
        JwksVerifier::connect(&self.client_endpoint(), &self.transport, &jwks).unwrap()
    }

    /// Stops the server gracefully and waits for it.
    pub(crate) async fn stop(mut self) {
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
pub(crate) fn password_grant(username: &str, password: &str) -> IssueRequest {
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
pub(crate) fn client_grant(client_id: &str, secret: &str) -> IssueRequest {
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
pub(crate) async fn eventually<F, Fut>(within: Duration, mut check: F) -> Option<Duration>
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
