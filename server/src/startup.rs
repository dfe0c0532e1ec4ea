//! The only place that wires things: store, keys, revocation state, the
//! domain, and the gRPC server with its transport limits.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use secrecy::{ExposeSecret, SecretString};
use tonic::transport::Server;
use tonic_health::{ServingStatus, server::HealthReporter};

use crate::{
    background::Background,
    config::Settings,
    domain::{Admin, Authority, HashError, PasswordHasher},
    follow::{ClockCheck, DatabaseFollower},
    grpc::{self, DeadlineLayer, TokenApi, TokenServiceServer},
    http,
    keys::{self, Kek, KekError, KeyRing},
    model::Clock,
    revocation::RevocationState,
    store::{self, Backend, Store, StoreError},
    telemetry,
    tls::{ServerTls, TlsError},
    transport::{ActivityLayer, Listener},
};

/// How long in-flight calls may finish after a shutdown signal.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest reflection answer: Tessera's and health's descriptors fit many
/// times over.
const REFLECTION_MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// The database could not be opened or migrated.
    #[error("database: {0}")]
    Store(#[from] StoreError),
    /// The key-encryption key is missing or invalid.
    #[error("key-encryption key: {0}")]
    Kek(String),
    /// Keys could not be loaded or generated.
    #[error("signing keys: {0}")]
    Keys(#[from] keys::KeyError),
    /// Password hashing is misconfigured.
    #[error("password hashing: {0}")]
    Hash(#[from] HashError),
    /// TLS material is missing or invalid.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The listening socket could not be opened.
    #[error("cannot listen on {addr}: {source}{hint}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// What to try.
        hint: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file or folder could not be created, read or secured.
    #[error("{what} {}: {source}", path.display())]
    Path {
        /// What it is.
        what: &'static str,
        /// Where.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl From<KekError> for StartupError {
    fn from(e: KekError) -> Self {
        Self::Kek(e.to_string())
    }
}

/// A built, bound, not yet serving Tessera.
#[derive(Debug)]
pub struct Application {
    listener: Listener,
    /// Keeps the certificate watcher running.
    _tls: Option<ServerTls>,
    authority: Arc<Authority>,
    health: HealthReporter,
    request_timeout: Duration,
    /// Where the HTTP listener is, when there is one.
    http_addr: Option<SocketAddr>,
    _background: Vec<Background>,
}

impl Application {
    /// Opens the store (migrating if asked), loads keys and revocation state,
    /// starts following the database, and binds the listener.
    pub async fn build(settings: Settings, clock: Arc<dyn Clock>) -> Result<Self, StartupError> {
        let url = settings.database_url.expose_secret();
        let backend = Backend::of_url(url).ok_or(StoreError::UnsupportedUrl)?;
        // Before connecting: a missing key-encryption key is a configuration
        // error that should not wait on the database.
        let kek = load_kek(&settings, backend)?;
        let store = open_store(&settings).await?;
        if backend == Backend::Sqlite {
            tracing::info!(
                "using the embedded SQLite database: single node only; set TESSERA_DATABASE_URL=postgres://... to run replicas"
            );
        }
        let keys = Arc::new(
            KeyRing::load(
                &*store,
                kek,
                settings.signing_alg,
                settings.key_retention(),
                clock.now(),
            )
            .await?,
        );
        let revocations = Arc::new(RevocationState::new(settings.revocation_stale_after));
        let loading = tokio::time::Instant::now();
        revocations.sync(&*store, clock.now()).await?;
        tracing::info!(
            revocations = revocations.len(),
            ms = loading.elapsed().as_millis(),
            "loaded the revocation log"
        );

        let clock_check = Arc::new(ClockCheck::new(settings.tokens.leeway));
        let follower = DatabaseFollower {
            store: Arc::clone(&store),
            revocations: Arc::clone(&revocations),
            keys: Arc::clone(&keys),
            clock: Arc::clone(&clock),
            clock_check: Arc::clone(&clock_check),
            settings: settings.follow,
        };
        let mut background = vec![Background(tokio::spawn(follower.run()))];

        background.push(Background(tokio::spawn(prune(
            Arc::clone(&store),
            Arc::clone(&clock),
            settings.prune_interval,
        ))));

        let hasher = PasswordHasher::new(&settings.hashing)?;
        let authority = Arc::new(Authority::new(
            Arc::clone(&store),
            keys,
            revocations,
            hasher,
            clock,
            settings.tokens.clone(),
            settings.throttle.clone(),
        ));
        authority.clients().refresh(&*store).await?;
        background.push(Background(tokio::spawn(
            Arc::clone(authority.clients()).follow(store),
        )));

        let tls = settings.tls.as_ref().map(ServerTls::load).transpose()?;
        if tls.is_none() && !settings.listen_addr.ip().is_loopback() {
            tracing::warn!(
                addr = %settings.listen_addr,
                "serving in plaintext on a non-loopback address: passwords, secrets and tokens \
                 cross the network readable. Set TESSERA_TLS_CERT and TESSERA_TLS_KEY, or keep \
                 Tessera behind a TLS-terminating proxy or mesh"
            );
        }
        let listener = Listener::bind(
            settings.listen_addr,
            settings.connections.clone(),
            tls.as_ref().map(|t| t.acceptor().clone()),
        )
        .await
        .map_err(|source| StartupError::Listen {
            addr: settings.listen_addr,
            hint: if source.kind() == std::io::ErrorKind::AddrInUse {
                " (is another `tessera serve` running? choose another with --listen-addr)"
            } else {
                ""
            },
            source,
        })?;
        let readiness = Arc::new(http::Readiness::starting());
        let http_addr = match settings.http_addr {
            None => None,
            Some(addr) => {
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|source| StartupError::Listen {
                        addr,
                        hint: if source.kind() == std::io::ErrorKind::AddrInUse {
                            " (TESSERA_HTTP_ADDR is in use; choose another with --http-addr)"
                        } else {
                            ""
                        },
                        source,
                    })?;
                let (bound, task) = http::serve(
                    listener,
                    tls.as_ref().map(|t| t.acceptor().clone()),
                    Arc::clone(&authority),
                    Arc::clone(&readiness),
                    settings.tokens.issuer.clone(),
                )
                .map_err(|source| StartupError::Listen {
                    addr,
                    hint: "",
                    source,
                })?;
                background.push(task);
                tracing::info!(addr = %bound, tls = tls.is_some(), "serving HTTP (JWKS, metadata, probes)");
                Some(bound)
            }
        };
        // Ready is reported only once the ports are ours.
        let (health, _) = tonic_health::server::health_reporter();
        background.push(Background(tokio::spawn(report_health(
            health.clone(),
            Arc::clone(&authority),
            clock_check,
            settings.follow.poll_interval,
            readiness,
        ))));
        Ok(Self {
            listener,
            _tls: tls,
            authority,
            health,
            request_timeout: settings.request_timeout,
            http_addr,
            _background: background,
        })
    }

    /// The HTTP listener's bound address, when there is one.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` completes, then drains in-flight calls.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), tonic::transport::Error> {
        // Every service gets the token service's message limits: requests
        // are small, and reflection's answers are our own descriptors.
        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(tessera::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .expect("the embedded descriptor sets are valid")
            .max_decoding_message_size(grpc::MAX_REQUEST_BYTES)
            .max_encoding_message_size(REFLECTION_MAX_RESPONSE_BYTES);
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(tessera::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()
            .expect("the embedded descriptor sets are valid")
            .max_decoding_message_size(grpc::MAX_REQUEST_BYTES)
            .max_encoding_message_size(REFLECTION_MAX_RESPONSE_BYTES);
        let health_service = tonic_health::pb::health_server::HealthServer::new(
            tonic_health::server::HealthService::from_health_reporter(self.health),
        )
        .max_decoding_message_size(grpc::MAX_REQUEST_BYTES)
        .max_encoding_message_size(grpc::MAX_REQUEST_BYTES);
        let local_addr = self.listener.local_addr();
        tracing::info!(
            addr = %local_addr,
            tls = self._tls.is_some(),
            "serving tessera.v1.TokenService"
        );

        // Graceful shutdown waits for connections to close, and a client may
        // keep an idle one open forever: in-flight calls get DRAIN_TIMEOUT.
        let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
        let signal = async move {
            shutdown.await;
            let _ = stopping_tx.send(());
        };
        let drain_deadline = async move {
            if stopping_rx.await.is_err() {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(DRAIN_TIMEOUT).await;
        };

        let server = Server::builder()
            // One span per call, joined to the caller's trace (`traceparent`),
            // so the domain's spans nest under it.
            .trace_fn(telemetry::request_span)
            // Bounds that tonic leaves open by default: streams per
            // connection, reset floods (CVE-2023-44487 style), header size,
            // and how long one call may hold resources.
            .max_concurrent_streams(256)
            .http2_max_pending_accept_reset_streams(Some(100))
            .http2_max_local_error_reset_streams(Some(256))
            .http2_max_header_list_size(16 * 1024)
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            // Outermost: counts calls in flight per connection (the idle
            // bound); then one deadline per call, on every service.
            .layer(ActivityLayer)
            .layer(DeadlineLayer::new(self.request_timeout))
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(grpc::token_service(self.authority))
            .serve_with_incoming_shutdown(self.listener.incoming(), signal);
        tokio::select! {
            result = server => result,
            () = drain_deadline => {
                tracing::warn!("connections still open {DRAIN_TIMEOUT:?} after shutdown began; closing them");
                Ok(())
            }
        }
    }
}

/// Opens (and unless told otherwise migrates) the configured store; the
/// admin commands use it too.
pub async fn open_store(settings: &Settings) -> Result<Arc<dyn Store>, StartupError> {
    let url = settings.database_url.expose_secret();
    if Backend::of_url(url) == Some(Backend::Sqlite) {
        prepare_private_dir(&settings.data_dir)?;
        if let Some(path) = sqlite_path(url) {
            prepare_private_database(&path)?;
        }
    }
    Ok(store::connect(url, settings.database_max_connections, settings.migrate).await?)
}

/// The file a `sqlite:` URL names, if it names one.
fn sqlite_path(url: &str) -> Option<std::path::PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or_default();
    (!path.is_empty() && path != ":memory:").then(|| path.into())
}

/// Creates the data folder with mode 0700, or makes an existing one private.
fn prepare_private_dir(dir: &std::path::Path) -> Result<(), StartupError> {
    let fail = |source| StartupError::Path {
        what: "data folder",
        path: dir.to_owned(),
        source,
    };
    create_private_dir(dir).map_err(fail)?;
    make_private(dir, 0o700).map_err(fail)
}

/// Creates the database file with mode 0600 before SQLite does (its
/// journal files take the database file's mode), or makes existing ones
/// private.
fn prepare_private_database(path: &std::path::Path) -> Result<(), StartupError> {
    let fail = |source| StartupError::Path {
        what: "database file",
        path: path.to_owned(),
        source,
    };
    if !path.exists() {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(false);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        options.open(path).map_err(fail)?;
    }
    for suffix in ["", "-wal", "-shm"] {
        let mut file = path.as_os_str().to_owned();
        file.push(suffix);
        let file = std::path::PathBuf::from(file);
        if file.exists() {
            make_private(&file, 0o600).map_err(fail)?;
        }
    }
    Ok(())
}

/// Removes group and other permissions from `path`, saying so.
#[cfg(unix)]
fn make_private(path: &std::path::Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let current = std::fs::metadata(path)?.permissions().mode() & 0o777;
    if current & 0o077 != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
        tracing::warn!(
            path = %path.display(),
            was = format!("{current:o}"),
            now = format!("{mode:o}"),
            "made private: it holds tokens' state and keys"
        );
    }
    Ok(())
}

#[cfg(not(unix))]
fn make_private(_: &std::path::Path, _: u32) -> std::io::Result<()> {
    Ok(())
}

/// User and client administration of the configured store, as the admin
/// commands (and tests) do it.
pub async fn open_admin(settings: &Settings, clock: Arc<dyn Clock>) -> Result<Admin, StartupError> {
    Ok(Admin::new(
        open_store(settings).await?,
        settings.tokens.clone(),
        settings.hashing.clone(),
        settings.password_min_length,
        clock,
    ))
}

/// The configured key-encryption key; for SQLite without one, a key kept in
/// the data folder (generated with mode 0600 on first use).
pub fn load_kek(settings: &Settings, backend: Backend) -> Result<Kek, StartupError> {
    if let Some(encoded) = &settings.key_encryption_key {
        return Ok(Kek::from_base64(encoded)?);
    }
    if backend == Backend::Postgres {
        return Err(StartupError::Kek(
            "TESSERA_KEY_ENCRYPTION_KEY is required with PostgreSQL, and must be the same on every replica (base64 of 32 random bytes)".into(),
        ));
    }
    // The folder first, so a folder that cannot be used is named as such.
    prepare_private_dir(&settings.data_dir)?;
    let path = settings.data_dir.join("key-encryption-key");
    let fail = |source| StartupError::Path {
        what: "key-encryption key",
        path: path.clone(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(encoded) => {
            make_private(&path, 0o600).map_err(fail)?;
            Kek::from_base64(&SecretString::from(encoded)).map_err(|e| {
                StartupError::Kek(format!(
                    "{}: {e} (it was generated there; restore it from a backup)",
                    path.display()
                ))
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let encoded = Kek::generate_base64();
            write_private_file(&path, encoded.expose_secret()).map_err(fail)?;
            tracing::warn!(
                path = %path.display(),
                "generated a key-encryption key for the embedded database; back it up, or set TESSERA_KEY_ENCRYPTION_KEY"
            );
            Ok(Kek::from_base64(&encoded)?)
        }
        Err(e) => Err(fail(e)),
    }
}

fn create_private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

fn write_private_file(path: &std::path::Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()
}

/// Keeps the health status in step with readiness: SERVING only while a key
/// can sign and the revocation state is fresh.
async fn report_health(
    health: HealthReporter,
    authority: Arc<Authority>,
    clock_check: Arc<ClockCheck>,
    every: Duration,
    readiness: Arc<http::Readiness>,
) {
    let mut last = None;
    let mut tick = tokio::time::interval(every.min(Duration::from_millis(500)));
    loop {
        tick.tick().await;
        let mut reasons = authority.unready_reasons();
        if !clock_check.is_in_step() {
            reasons
                .push("this replica's clock differs from the database's by more than the leeway");
        }
        let ready = reasons.is_empty();
        readiness.set(&reasons);
        if last != Some(ready) {
            let status = if ready {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            match (last, ready) {
                (_, false) => tracing::warn!(
                    reasons = %reasons.join("; "),
                    "not ready: reporting NOT_SERVING, and Introspect fails closed"
                ),
                (Some(false), true) => tracing::info!("ready again: reporting SERVING"),
                (_, true) => tracing::info!("ready: reporting SERVING"),
            }
            health.set_service_status("", status).await;
            health
                .set_service_status(
                    <TokenServiceServer<TokenApi> as tonic::server::NamedService>::NAME,
                    status,
                )
                .await;
            last = Some(ready);
        }
    }
}

/// Rows deleted per pruning statement.
const PRUNE_BATCH: i64 = 1000;

/// Deletes expired rows every `every` (every replica does; the deletes are
/// idempotent), an hour after they expired so no clock skew matters.
async fn prune(store: Arc<dyn Store>, clock: Arc<dyn Clock>, every: Duration) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        tick.tick().await;
        let before = clock.now().minus(Duration::from_secs(3600));
        match store.prune(before, PRUNE_BATCH).await {
            Ok(pruned) if pruned != store::Pruned::default() => tracing::info!(
                revocations = pruned.revocations,
                refresh_tokens = pruned.refresh_tokens,
                sessions = pruned.sessions,
                "pruned expired rows"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot prune expired rows"),
        }
    }
}

/// Completes on Ctrl+C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down");
}
