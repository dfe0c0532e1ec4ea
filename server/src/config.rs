//! Typed settings. [`Settings::new`] builds them in code from the defaults
//! below (tests and embedding use it, so no `TESSERA_*` variable in a
//! developer's shell changes them); [`Options`] reads the same settings from
//! flags or `TESSERA_*` environment variables for the binary, with the same
//! defaults.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::Args;
use secrecy::SecretString;
use tessera_token::Algorithm;

use crate::{
    domain::{HashingSettings, MAX_REFRESH_REUSE_GRACE, ThrottleSettings, TokenSettings},
    follow::FollowSettings,
    model::Audience,
    tls::{ClientAuth, TlsSettings},
    transport::ConnectionSettings,
};

/// The defaults, in one place for [`Settings::new`] and [`Options`].
mod defaults {
    use std::time::Duration;

    pub(super) const LISTEN_ADDR: &str = "127.0.0.1:50051";
    pub(super) const DATA_DIR: &str = "./tessera-data";
    pub(super) const DATABASE_MAX_CONNECTIONS: u32 = 10;
    pub(super) const ISSUER: &str = "tessera";
    pub(super) const AUDIENCE: &str = "tessera";
    pub(super) const ACCESS_TOKEN_TTL: Duration = Duration::from_secs(10 * 60);
    pub(super) const ACCESS_TOKEN_MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);
    pub(super) const REFRESH_TOKEN_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
    pub(super) const REFRESH_REUSE_GRACE: Duration = Duration::from_secs(10);
    pub(super) const CLOCK_LEEWAY: Duration = Duration::from_secs(5);
    pub(super) const SIGNING_ALG: &str = "ES256";
    pub(super) const REVOCATION_POLL_INTERVAL: Duration = Duration::from_secs(1);
    pub(super) const REVOCATION_STALE_AFTER: Duration = Duration::from_secs(10);
    pub(super) const KEY_REFRESH_INTERVAL: Duration = Duration::from_secs(60);
    pub(super) const ARGON2_MEMORY_KIB: u32 = 19_456;
    pub(super) const ARGON2_ITERATIONS: u32 = 2;
    pub(super) const ARGON2_PARALLELISM: u32 = 1;
    pub(super) const HASHING_QUEUE: usize = 256;
    pub(super) const PASSWORD_MIN_LENGTH: usize = 8;
    pub(super) const LOGIN_FAILURES_BEFORE_DELAY: u32 = 5;
    pub(super) const LOGIN_MAX_IN_FLIGHT_PER_PEER: usize = 16;
    pub(super) const MAX_CONNECTIONS: usize = 10_000;
    pub(super) const PRUNE_INTERVAL: Duration = Duration::from_secs(10 * 60);
    pub(super) const MAX_CONNECTIONS_PER_ADDRESS: usize = 256;
    pub(super) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
    pub(super) const CONNECTION_IDLE_TIMEOUT: Duration = Duration::from_secs(5 * 60);
    pub(super) const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
}

/// Everything the server and the admin commands are configured with.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `postgres://...` or `sqlite:...`.
    pub database_url: SecretString,
    /// Pool size per replica.
    pub database_max_connections: u32,
    /// Folder of the embedded database and of a generated key-encryption key.
    pub data_dir: PathBuf,
    /// Base64 of 32 bytes; generated into `data_dir` for SQLite when unset.
    pub key_encryption_key: Option<SecretString>,
    /// Address to serve gRPC on.
    pub listen_addr: SocketAddr,
    /// Address of the HTTP listener (JWKS, metadata, probes); off when `None`.
    pub http_addr: Option<SocketAddr>,
    /// Token names and lifetimes.
    pub tokens: TokenSettings,
    /// Algorithm of newly generated keys.
    pub signing_alg: Algorithm,
    /// Argon2id cost and pool bounds.
    pub hashing: HashingSettings,
    /// How credential guessing is slowed.
    pub throttle: ThrottleSettings,
    /// Shortest password `user add` and `user set-password` accept.
    pub password_min_length: usize,
    /// How the revocation log and keys are followed.
    pub follow: FollowSettings,
    /// How old the revocation state may get before Introspect fails closed.
    pub revocation_stale_after: Duration,
    /// Apply pending migrations on start.
    pub migrate: bool,
    /// Longest time one RPC may take.
    pub request_timeout: Duration,
    /// Connection bounds.
    pub connections: ConnectionSettings,
    /// How often expired rows are deleted.
    pub prune_interval: Duration,
    /// TLS for the listeners; plaintext when `None`.
    pub tls: Option<TlsSettings>,
}

/// The embedded SQLite database in `data_dir`.
fn sqlite_url(data_dir: &std::path::Path) -> String {
    format!(
        "sqlite://{}?mode=rwc",
        data_dir.join("tessera.db").display()
    )
}

impl Settings {
    /// The defaults, with the embedded SQLite database in `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        let data_dir = data_dir.into();
        Self {
            database_url: SecretString::from(sqlite_url(&data_dir)),
            database_max_connections: defaults::DATABASE_MAX_CONNECTIONS,
            data_dir,
            key_encryption_key: None,
            listen_addr: defaults::LISTEN_ADDR
                .parse()
                .expect("a valid default address"),
            http_addr: None,
            tokens: TokenSettings {
                issuer: defaults::ISSUER.to_owned(),
                default_audience: Audience::parse(defaults::AUDIENCE)
                    .expect("a valid default audience"),
                access_token_ttl: defaults::ACCESS_TOKEN_TTL,
                access_token_max_lifetime: defaults::ACCESS_TOKEN_MAX_LIFETIME,
                refresh_token_ttl: defaults::REFRESH_TOKEN_TTL,
                refresh_reuse_grace: defaults::REFRESH_REUSE_GRACE,
                leeway: defaults::CLOCK_LEEWAY,
            },
            signing_alg: defaults::SIGNING_ALG
                .parse()
                .expect("a valid default algorithm"),
            hashing: HashingSettings {
                memory_kib: defaults::ARGON2_MEMORY_KIB,
                iterations: defaults::ARGON2_ITERATIONS,
                parallelism: defaults::ARGON2_PARALLELISM,
                max_concurrent: default_hashing_concurrency(),
                max_waiting: defaults::HASHING_QUEUE,
                allow_weak: false,
            },
            throttle: ThrottleSettings::default(),
            password_min_length: defaults::PASSWORD_MIN_LENGTH,
            follow: FollowSettings {
                poll_interval: defaults::REVOCATION_POLL_INTERVAL,
                key_refresh_interval: defaults::KEY_REFRESH_INTERVAL,
            },
            revocation_stale_after: defaults::REVOCATION_STALE_AFTER,
            migrate: true,
            request_timeout: defaults::REQUEST_TIMEOUT,
            connections: ConnectionSettings::default(),
            prune_interval: defaults::PRUNE_INTERVAL,
            tls: None,
        }
    }

    /// How long after a key's successor activates the key must stay
    /// published: its tokens' longest life, the leeway, and how late a
    /// replica may learn of the successor (the key refresh backstop).
    pub fn key_retention(&self) -> Duration {
        self.tokens.key_retention(self.follow.key_refresh_interval)
    }

    /// Checks the settings make sense together.
    pub fn validate(&self) -> Result<(), SettingsError> {
        let invalid = |name: &'static str, reason: &str| {
            Err(SettingsError {
                name,
                reason: reason.to_owned(),
            })
        };
        if self.tokens.issuer.is_empty() {
            return invalid("TESSERA_ISSUER", "must not be empty");
        }
        if self.tokens.access_token_ttl < Duration::from_secs(1) {
            return invalid("TESSERA_ACCESS_TOKEN_TTL", "must be at least 1s");
        }
        if self.tokens.access_token_ttl > self.tokens.access_token_max_lifetime {
            return invalid(
                "TESSERA_ACCESS_TOKEN_TTL",
                "must not exceed TESSERA_ACCESS_TOKEN_MAX_LIFETIME",
            );
        }
        if self.tokens.refresh_token_ttl < Duration::from_secs(1) {
            return invalid("TESSERA_REFRESH_TOKEN_TTL", "must be at least 1s");
        }
        if self.tokens.refresh_reuse_grace > MAX_REFRESH_REUSE_GRACE {
            return invalid(
                "TESSERA_REFRESH_REUSE_GRACE",
                "must be at most 60s: a longer window only helps a thief",
            );
        }
        if let Err(reason) = self.hashing.check() {
            return Err(SettingsError {
                name: "TESSERA_ARGON2_MEMORY_KIB / TESSERA_ARGON2_ITERATIONS",
                reason,
            });
        }
        if self.password_min_length == 0 {
            return invalid("TESSERA_PASSWORD_MIN_LENGTH", "must be at least 1");
        }
        if self.revocation_stale_after <= self.follow.poll_interval {
            return invalid(
                "TESSERA_REVOCATION_STALE_AFTER",
                "must be longer than TESSERA_REVOCATION_POLL_INTERVAL",
            );
        }
        Ok(())
    }
}

/// Half the CPUs (at least one): a login storm must not take every core
/// from Introspect.
fn default_hashing_concurrency() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (usize::from(n) / 2).max(1))
}

/// Where the data is: the database and the key-encryption key.
///
/// Every flag is also read from its `TESSERA_*` environment variable, and is
/// global: given on a command, it applies to its subcommands.
#[derive(Debug, Clone, Args)]
pub(crate) struct StoreOptions {
    /// Database URL: postgres://... selects PostgreSQL; unset, an embedded
    /// SQLite database in the data folder.
    #[arg(
        help_heading = "Database and keys",
        long,
        env = "TESSERA_DATABASE_URL",
        global = true,
        hide_env_values = true
    )]
    database_url: Option<String>,

    /// Connections per replica in the database pool.
    #[arg(help_heading = "Database and keys", long, env = "TESSERA_DATABASE_MAX_CONNECTIONS", default_value_t = defaults::DATABASE_MAX_CONNECTIONS, global = true)]
    database_max_connections: u32,

    /// Folder for the embedded database and generated key-encryption key.
    #[arg(help_heading = "Database and keys", long, env = "TESSERA_DATA_DIR", default_value = defaults::DATA_DIR, global = true)]
    data_dir: PathBuf,

    /// Key-encryption key for private signing keys at rest: base64 of 32
    /// random bytes (`openssl rand -base64 32`). Required with PostgreSQL.
    /// Read from the environment, or from a file with
    /// --key-encryption-key-file; the flag itself is hidden, as a key on a
    /// command line shows in `ps`.
    #[arg(
        help_heading = "Database and keys",
        long,
        env = "TESSERA_KEY_ENCRYPTION_KEY",
        global = true,
        hide = true,
        hide_env_values = true
    )]
    key_encryption_key: Option<String>,

    /// A file holding the key-encryption key (as TESSERA_KEY_ENCRYPTION_KEY
    /// does; a mounted secret, say).
    #[arg(
        help_heading = "Database and keys",
        long,
        env = "TESSERA_KEY_ENCRYPTION_KEY_FILE",
        global = true,
        conflicts_with = "key_encryption_key"
    )]
    key_encryption_key_file: Option<PathBuf>,
}

/// What tokens look like and how long they and their keys live.
///
/// Every flag is also read from its `TESSERA_*` environment variable, and is
/// global: given on a command, it applies to its subcommands.
#[derive(Debug, Clone, Args)]
pub(crate) struct TokenOptions {
    /// Issuer name written in `iss`.
    #[arg(help_heading = "Tokens and keys", long, env = "TESSERA_ISSUER", default_value = defaults::ISSUER, global = true)]
    issuer: String,

    /// Audience written in `aud` when a request names none.
    #[arg(help_heading = "Tokens and keys", long, env = "TESSERA_DEFAULT_AUDIENCE", default_value = defaults::AUDIENCE, global = true)]
    default_audience: String,

    /// Access token lifetime.
    #[arg(help_heading = "Tokens and keys", long, env = "TESSERA_ACCESS_TOKEN_TTL", default_value_t = defaults::ACCESS_TOKEN_TTL.into(), global = true)]
    access_token_ttl: humantime::Duration,

    /// The longest access token lifetime (exp - iat) accepted, whatever the
    /// TTL: keep it above every TTL any replica uses.
    #[arg(help_heading = "Tokens and keys", long, env = "TESSERA_ACCESS_TOKEN_MAX_LIFETIME", default_value_t = defaults::ACCESS_TOKEN_MAX_LIFETIME.into(), global = true)]
    access_token_max_lifetime: humantime::Duration,

    /// Refresh token lifetime (renewed by each rotation).
    #[arg(help_heading = "Tokens and keys", long, env = "TESSERA_REFRESH_TOKEN_TTL", default_value_t = defaults::REFRESH_TOKEN_TTL.into(), global = true)]
    refresh_token_ttl: humantime::Duration,

    /// How long a spent refresh token still works, for a client whose
    /// response was lost; after it, reuse revokes the session.
    #[arg(help_heading = "Tokens and keys", long, env = "TESSERA_REFRESH_REUSE_GRACE", default_value_t = defaults::REFRESH_REUSE_GRACE.into(), global = true)]
    refresh_reuse_grace: humantime::Duration,

    /// Algorithm of new signing keys: ES256, EdDSA or RS256.
    #[arg(help_heading = "Tokens and keys", long, env = "TESSERA_SIGNING_ALG", default_value = defaults::SIGNING_ALG, global = true)]
    signing_alg: Algorithm,

    /// Clock skew tolerated when verifying tokens.
    #[arg(help_heading = "Tokens and keys", long, env = "TESSERA_CLOCK_LEEWAY", default_value_t = defaults::CLOCK_LEEWAY.into(), global = true)]
    clock_leeway: humantime::Duration,

    /// Backstop re-read of signing keys.
    #[arg(help_heading = "Tokens and keys", long, env = "TESSERA_KEY_REFRESH_INTERVAL", default_value_t = defaults::KEY_REFRESH_INTERVAL.into(), global = true)]
    key_refresh_interval: humantime::Duration,
}

/// How passwords are hashed and which are accepted.
///
/// Every flag is also read from its `TESSERA_*` environment variable, and is
/// global: given on a command, it applies to its subcommands.
#[derive(Debug, Clone, Args)]
pub(crate) struct PasswordOptions {
    /// Argon2id memory cost in KiB.
    #[arg(help_heading = "Passwords", long, env = "TESSERA_ARGON2_MEMORY_KIB", default_value_t = defaults::ARGON2_MEMORY_KIB, global = true)]
    argon2_memory_kib: u32,

    /// Argon2id iterations.
    #[arg(help_heading = "Passwords", long, env = "TESSERA_ARGON2_ITERATIONS", default_value_t = defaults::ARGON2_ITERATIONS, global = true)]
    argon2_iterations: u32,

    /// Argon2id parallelism.
    #[arg(help_heading = "Passwords", long, env = "TESSERA_ARGON2_PARALLELISM", default_value_t = defaults::ARGON2_PARALLELISM, global = true)]
    argon2_parallelism: u32,

    /// Accept argon2id parameters below OWASP's floor.
    #[arg(
        help_heading = "Passwords",
        long,
        env = "TESSERA_ARGON2_ALLOW_WEAK",
        global = true
    )]
    argon2_allow_weak: bool,

    /// Shortest password accepted by `user add` and `user set-password`.
    #[arg(help_heading = "Passwords", long, env = "TESSERA_PASSWORD_MIN_LENGTH", default_value_t = defaults::PASSWORD_MIN_LENGTH, global = true)]
    password_min_length: usize,
}

/// How `serve` listens, follows the database and sheds load.
///
/// Every flag is also read from its `TESSERA_*` environment variable, and is
/// global: given on a command, it applies to its subcommands.
#[derive(Debug, Clone, Args)]
pub(crate) struct ServeOptions {
    /// Address to serve gRPC on.
    #[arg(help_heading = "Serving", long, env = "TESSERA_LISTEN_ADDR", default_value = defaults::LISTEN_ADDR, global = true)]
    listen_addr: SocketAddr,

    /// Address to serve HTTP on (the JWKS at /.well-known/jwks.json, RFC
    /// 8414 metadata, /livez, /readyz); unset: no HTTP listener.
    #[arg(
        help_heading = "Serving",
        long,
        env = "TESSERA_HTTP_ADDR",
        global = true
    )]
    http_addr: Option<SocketAddr>,

    /// PEM certificate chain: with --tls-key, every listener speaks TLS
    /// (1.2 and 1.3 only). Re-read when the file changes.
    #[arg(
        help_heading = "Serving",
        long,
        env = "TESSERA_TLS_CERT",
        global = true
    )]
    tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(help_heading = "Serving", long, env = "TESSERA_TLS_KEY", global = true)]
    tls_key: Option<PathBuf>,

    /// PEM bundle of CAs client certificates are verified against (mTLS).
    #[arg(
        help_heading = "Serving",
        long,
        env = "TESSERA_TLS_CLIENT_CA",
        global = true
    )]
    tls_client_ca: Option<PathBuf>,

    /// With a client CA: whether every client must present a certificate.
    #[arg(
        help_heading = "Serving",
        long,
        env = "TESSERA_TLS_CLIENT_AUTH",
        value_enum,
        default_value = "required",
        global = true
    )]
    tls_client_auth: ClientAuth,

    /// Longest time one RPC may take.
    #[arg(help_heading = "Serving", long, env = "TESSERA_REQUEST_TIMEOUT", default_value_t = defaults::REQUEST_TIMEOUT.into(), global = true)]
    request_timeout: humantime::Duration,

    /// Open connections at most (kept under 3/4 of the open-file limit).
    #[arg(help_heading = "Serving", long, env = "TESSERA_MAX_CONNECTIONS", default_value_t = defaults::MAX_CONNECTIONS, global = true)]
    max_connections: usize,

    /// Open connections from one address at most.
    #[arg(help_heading = "Serving", long, env = "TESSERA_MAX_CONNECTIONS_PER_ADDRESS", default_value_t = defaults::MAX_CONNECTIONS_PER_ADDRESS, global = true)]
    max_connections_per_address: usize,

    /// How long a new connection may go without making a call.
    #[arg(help_heading = "Serving", long, env = "TESSERA_HANDSHAKE_TIMEOUT", default_value_t = defaults::HANDSHAKE_TIMEOUT.into(), global = true)]
    handshake_timeout: humantime::Duration,

    /// How long a connection may stay open with no call in flight.
    #[arg(help_heading = "Serving", long, env = "TESSERA_CONNECTION_IDLE_TIMEOUT", default_value_t = defaults::CONNECTION_IDLE_TIMEOUT.into(), global = true)]
    connection_idle_timeout: humantime::Duration,

    /// Password hashes computed at once (default: half the CPUs, at least one).
    #[arg(
        help_heading = "Serving",
        long,
        env = "TESSERA_HASHING_CONCURRENCY",
        global = true
    )]
    hashing_concurrency: Option<usize>,

    /// Logins allowed to wait for hashing before RESOURCE_EXHAUSTED.
    #[arg(help_heading = "Serving", long, env = "TESSERA_HASHING_QUEUE", default_value_t = defaults::HASHING_QUEUE, global = true)]
    hashing_queue: usize,

    /// Failed logins for one account from one address before each further
    /// one doubles a delay (1 s, 2 s, ... 15 min) for that pair.
    #[arg(help_heading = "Serving", long, env = "TESSERA_LOGIN_FAILURES_BEFORE_DELAY", default_value_t = defaults::LOGIN_FAILURES_BEFORE_DELAY, global = true)]
    login_failures_before_delay: u32,

    /// Password logins one address may have hashing or queued for hashing
    /// at once; more wait their turn (up to 16 times this), then are refused.
    #[arg(help_heading = "Serving", long, env = "TESSERA_LOGIN_MAX_IN_FLIGHT_PER_PEER", default_value_t = defaults::LOGIN_MAX_IN_FLIGHT_PER_PEER, global = true)]
    login_max_in_flight_per_peer: usize,

    /// Backstop poll of the revocation log (PostgreSQL also pushes changes).
    #[arg(help_heading = "Serving", long, env = "TESSERA_REVOCATION_POLL_INTERVAL", default_value_t = defaults::REVOCATION_POLL_INTERVAL.into(), global = true)]
    revocation_poll_interval: humantime::Duration,

    /// Fail closed (Introspect UNAVAILABLE, health NOT_SERVING) when the
    /// revocation log could not be read for this long.
    #[arg(help_heading = "Serving", long, env = "TESSERA_REVOCATION_STALE_AFTER", default_value_t = defaults::REVOCATION_STALE_AFTER.into(), global = true)]
    revocation_stale_after: humantime::Duration,

    /// How often expired revocation entries, refresh tokens and sessions are deleted.
    #[arg(help_heading = "Serving", long, env = "TESSERA_PRUNE_INTERVAL", default_value_t = defaults::PRUNE_INTERVAL.into(), global = true)]
    prune_interval: humantime::Duration,
}

/// A setting that does not make sense.
#[derive(Debug, thiserror::Error)]
#[error("invalid setting {name}: {reason}")]
pub struct SettingsError {
    name: &'static str,
    reason: String,
}

/// Every setting: what `serve` and `config` take.
#[derive(Debug, Clone, Args)]
pub struct Options {
    #[command(flatten)]
    store: StoreOptions,
    #[command(flatten)]
    tokens: TokenOptions,
    #[command(flatten)]
    passwords: PasswordOptions,
    #[command(flatten)]
    serving: ServeOptions,
}

/// What the admin commands that change clients, keys and revocations take.
#[derive(Debug, Clone, Args)]
pub(crate) struct AdminOptions {
    #[command(flatten)]
    store: StoreOptions,
    #[command(flatten)]
    tokens: TokenOptions,
}

/// What the user commands take: the admin settings and password hashing.
#[derive(Debug, Clone, Args)]
pub(crate) struct UserOptions {
    #[command(flatten)]
    admin: AdminOptions,
    #[command(flatten)]
    passwords: PasswordOptions,
}

/// Builds validated [`Settings`] from the store options and whichever other
/// groups a command takes; the groups it does not take keep their defaults.
fn settings(
    store: &StoreOptions,
    tokens: Option<&TokenOptions>,
    passwords: Option<&PasswordOptions>,
    serving: Option<&ServeOptions>,
) -> Result<Settings, SettingsError> {
    let mut settings = Settings::new(&store.data_dir);
    store.apply(&mut settings)?;
    if let Some(tokens) = tokens {
        tokens.apply(&mut settings)?;
    }
    if let Some(passwords) = passwords {
        passwords.apply(&mut settings);
    }
    if let Some(serving) = serving {
        serving.apply(&mut settings)?;
    }
    settings.validate()?;
    Ok(settings)
}

impl Options {
    /// Validates the options into [`Settings`].
    pub fn settings(&self) -> Result<Settings, SettingsError> {
        settings(
            &self.store,
            Some(&self.tokens),
            Some(&self.passwords),
            Some(&self.serving),
        )
    }
}

impl AdminOptions {
    /// Validates the options into [`Settings`] (serving settings at their
    /// defaults).
    pub(crate) fn settings(&self) -> Result<Settings, SettingsError> {
        settings(&self.store, Some(&self.tokens), None, None)
    }
}

impl UserOptions {
    /// Validates the options into [`Settings`] (serving settings at their
    /// defaults).
    pub(crate) fn settings(&self) -> Result<Settings, SettingsError> {
        settings(
            &self.admin.store,
            Some(&self.admin.tokens),
            Some(&self.passwords),
            None,
        )
    }
}

impl StoreOptions {
    /// Validates the options into [`Settings`] (all else at its defaults).
    pub(crate) fn settings(&self) -> Result<Settings, SettingsError> {
        settings(self, None, None, None)
    }

    fn apply(&self, settings: &mut Settings) -> Result<(), SettingsError> {
        if let Some(url) = &self.database_url {
            settings.database_url = SecretString::from(url.clone());
        }
        settings.database_max_connections = self.database_max_connections.max(1);
        settings.key_encryption_key =
            match (&self.key_encryption_key, &self.key_encryption_key_file) {
                (Some(key), _) => Some(SecretString::from(key.clone())),
                (None, Some(path)) => Some(SecretString::from(
                    std::fs::read_to_string(path)
                        .map_err(|e| SettingsError {
                            name: "TESSERA_KEY_ENCRYPTION_KEY_FILE",
                            reason: format!("cannot read {}: {e}", path.display()),
                        })?
                        .trim()
                        .to_owned(),
                )),
                (None, None) => None,
            };
        Ok(())
    }
}

impl TokenOptions {
    fn apply(&self, settings: &mut Settings) -> Result<(), SettingsError> {
        settings.tokens = TokenSettings {
            issuer: self.issuer.clone(),
            default_audience: Audience::parse(&self.default_audience).map_err(|e| {
                SettingsError {
                    name: "TESSERA_DEFAULT_AUDIENCE",
                    reason: e.to_string(),
                }
            })?,
            access_token_ttl: self.access_token_ttl.into(),
            access_token_max_lifetime: self.access_token_max_lifetime.into(),
            refresh_token_ttl: self.refresh_token_ttl.into(),
            refresh_reuse_grace: self.refresh_reuse_grace.into(),
            leeway: self.clock_leeway.into(),
        };
        settings.signing_alg = self.signing_alg;
        settings.follow.key_refresh_interval = self.key_refresh_interval.into();
        Ok(())
    }
}

impl PasswordOptions {
    fn apply(&self, settings: &mut Settings) {
        settings.hashing.memory_kib = self.argon2_memory_kib;
        settings.hashing.iterations = self.argon2_iterations;
        settings.hashing.parallelism = self.argon2_parallelism;
        settings.hashing.allow_weak = self.argon2_allow_weak;
        settings.password_min_length = self.password_min_length;
    }
}

impl ServeOptions {
    fn apply(&self, settings: &mut Settings) -> Result<(), SettingsError> {
        settings.listen_addr = self.listen_addr;
        settings.http_addr = self.http_addr;
        settings.hashing.max_concurrent = self
            .hashing_concurrency
            .unwrap_or_else(default_hashing_concurrency);
        settings.hashing.max_waiting = self.hashing_queue;
        settings.throttle = ThrottleSettings {
            failures_before_delay: self.login_failures_before_delay,
            max_in_flight_per_peer: self.login_max_in_flight_per_peer.max(1),
            ..ThrottleSettings::default()
        };
        settings.prune_interval = self.prune_interval.into();
        settings.tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(TlsSettings {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: self.tls_client_ca.clone(),
                client_auth: self.tls_client_auth,
            }),
            (None, None) if self.tls_client_ca.is_some() => {
                return Err(SettingsError {
                    name: "TESSERA_TLS_CLIENT_CA",
                    reason: "needs TESSERA_TLS_CERT and TESSERA_TLS_KEY: client certificates are only asked for over TLS".into(),
                });
            }
            (None, None) => None,
            (Some(_), None) | (None, Some(_)) => {
                return Err(SettingsError {
                    name: "TESSERA_TLS_CERT / TESSERA_TLS_KEY",
                    reason: "set both, or neither".into(),
                });
            }
        };
        settings.connections = ConnectionSettings {
            max_connections: self.max_connections.max(1),
            max_connections_per_address: self.max_connections_per_address.max(1),
            handshake_timeout: self.handshake_timeout.into(),
            idle_timeout: self.connection_idle_timeout.into(),
        };
        settings.follow.poll_interval = self.revocation_poll_interval.into();
        settings.revocation_stale_after = self.revocation_stale_after.into();
        settings.request_timeout = self.request_timeout.into();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use secrecy::ExposeSecret;

    use super::*;

    #[derive(Parser)]
    struct OnlyOptions {
        #[command(flatten)]
        options: Options,
    }

    #[test]
    fn flags_left_at_their_defaults_give_the_settings_built_in_code() {
        // Only meaningful without TESSERA_* variables set, which this test
        // cannot clear for the whole process; skip what the environment sets.
        if std::env::vars().any(|(k, _)| k.starts_with("TESSERA_")) {
            eprintln!("skipped: TESSERA_* variables are set in this environment");
            return;
        }
        let parsed = OnlyOptions::parse_from(["tessera"])
            .options
            .settings()
            .unwrap();
        let built = Settings::new(defaults::DATA_DIR);
        assert_eq!(
            parsed.database_url.expose_secret(),
            built.database_url.expose_secret()
        );
        assert_eq!(
            format!("{:?}", parsed.tokens),
            format!("{:?}", built.tokens)
        );
        assert_eq!(
            format!("{:?}", parsed.hashing),
            format!("{:?}", built.hashing)
        );
        assert_eq!(
            format!("{:?}", parsed.follow),
            format!("{:?}", built.follow)
        );
        assert_eq!(parsed.listen_addr, built.listen_addr);
        assert_eq!(parsed.signing_alg, built.signing_alg);
        assert_eq!(parsed.revocation_stale_after, built.revocation_stale_after);
        assert_eq!(parsed.request_timeout, built.request_timeout);
        assert_eq!(parsed.connections, built.connections);
        assert_eq!(parsed.prune_interval, built.prune_interval);
    }
}
