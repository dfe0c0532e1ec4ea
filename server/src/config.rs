//! Typed settings, read from flags or `TESSERA_*` environment variables by
//! clap, with humantime durations and secrets kept as `SecretString`.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::Args;
use secrecy::SecretString;

use crate::{
    domain::{Audience, HashingSettings, Policy},
    keys::SigningAlg,
    revocation::follower::FollowSettings,
};

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
    /// Token lifetimes and names.
    pub policy: Policy,
    /// Algorithm of newly generated keys.
    pub signing_alg: SigningAlg,
    /// Argon2id cost and pool bounds.
    pub hashing: HashingSettings,
    /// How the revocation log and keys are followed.
    pub follow: FollowSettings,
    /// How old the revocation state may get before Introspect fails closed.
    pub revocation_stale_after: Duration,
    /// Apply pending migrations on start.
    pub migrate: bool,
    /// Longest time one RPC may take.
    pub request_timeout: Duration,
}

fn duration(s: &str) -> Result<Duration, humantime::DurationError> {
    humantime::parse_duration(s)
}

/// Flags shared by every command, each also read from the environment.
#[derive(Debug, Clone, Args)]
pub struct Options {
    /// Database URL: postgres://... selects PostgreSQL; unset, an embedded
    /// SQLite database in the data folder.
    #[arg(
        long,
        env = "TESSERA_DATABASE_URL",
        global = true,
        hide_env_values = true
    )]
    pub database_url: Option<String>,

    /// Connections per replica in the database pool.
    #[arg(
        long,
        env = "TESSERA_DATABASE_MAX_CONNECTIONS",
        default_value_t = 10,
        global = true
    )]
    pub database_max_connections: u32,

    /// Folder for the embedded database and generated key-encryption key.
    #[arg(
        long,
        env = "TESSERA_DATA_DIR",
        default_value = "./tessera-data",
        global = true
    )]
    pub data_dir: PathBuf,

    /// Key-encryption key for private signing keys at rest: base64 of 32
    /// random bytes (`openssl rand -base64 32`). Required with PostgreSQL.
    #[arg(
        long,
        env = "TESSERA_KEY_ENCRYPTION_KEY",
        global = true,
        hide_env_values = true
    )]
    pub key_encryption_key: Option<String>,

    /// Address to serve gRPC on.
    #[arg(
        long,
        env = "TESSERA_LISTEN_ADDR",
        default_value = "127.0.0.1:50051",
        global = true
    )]
    pub listen_addr: SocketAddr,

    /// Issuer name written in `iss`.
    #[arg(long, env = "TESSERA_ISSUER", default_value = "tessera", global = true)]
    pub issuer: String,

    /// Audience written in `aud` when a request names none.
    #[arg(
        long,
        env = "TESSERA_DEFAULT_AUDIENCE",
        default_value = "tessera",
        global = true
    )]
    pub default_audience: String,

    /// Access token lifetime.
    #[arg(long, env = "TESSERA_ACCESS_TOKEN_TTL", default_value = "10m", value_parser = duration, global = true)]
    pub access_token_ttl: Duration,

    /// Refresh token lifetime (renewed by each rotation).
    #[arg(long, env = "TESSERA_REFRESH_TOKEN_TTL", default_value = "30d", value_parser = duration, global = true)]
    pub refresh_token_ttl: Duration,

    /// How long a spent refresh token still works, for a client whose
    /// response was lost; after it, reuse revokes the session.
    #[arg(long, env = "TESSERA_REFRESH_REUSE_GRACE", default_value = "10s", value_parser = duration, global = true)]
    pub refresh_reuse_grace: Duration,

    /// Algorithm of new signing keys: ES256, EdDSA or RS256.
    #[arg(
        long,
        env = "TESSERA_SIGNING_ALG",
        default_value = "ES256",
        global = true
    )]
    pub signing_alg: SigningAlg,

    /// Clock skew tolerated when verifying tokens.
    #[arg(long, env = "TESSERA_CLOCK_LEEWAY", default_value = "5s", value_parser = duration, global = true)]
    pub clock_leeway: Duration,

    /// Backstop poll of the revocation log (PostgreSQL also pushes changes).
    #[arg(long, env = "TESSERA_REVOCATION_POLL_INTERVAL", default_value = "1s", value_parser = duration, global = true)]
    pub revocation_poll_interval: Duration,

    /// Fail closed (Introspect UNAVAILABLE, health NOT_SERVING) when the
    /// revocation log could not be read for this long.
    #[arg(long, env = "TESSERA_REVOCATION_STALE_AFTER", default_value = "10s", value_parser = duration, global = true)]
    pub revocation_stale_after: Duration,

    /// Backstop re-read of signing keys.
    #[arg(long, env = "TESSERA_KEY_REFRESH_INTERVAL", default_value = "60s", value_parser = duration, global = true)]
    pub key_refresh_interval: Duration,

    /// Argon2id memory cost in KiB.
    #[arg(
        long,
        env = "TESSERA_ARGON2_MEMORY_KIB",
        default_value_t = 19_456,
        global = true
    )]
    pub argon2_memory_kib: u32,

    /// Argon2id iterations.
    #[arg(
        long,
        env = "TESSERA_ARGON2_ITERATIONS",
        default_value_t = 2,
        global = true
    )]
    pub argon2_iterations: u32,

    /// Argon2id parallelism.
    #[arg(
        long,
        env = "TESSERA_ARGON2_PARALLELISM",
        default_value_t = 1,
        global = true
    )]
    pub argon2_parallelism: u32,

    /// Password hashes computed at once (default: one per CPU).
    #[arg(long, env = "TESSERA_HASHING_CONCURRENCY", global = true)]
    pub hashing_concurrency: Option<usize>,

    /// Logins allowed to wait for hashing before RESOURCE_EXHAUSTED.
    #[arg(
        long,
        env = "TESSERA_HASHING_QUEUE",
        default_value_t = 256,
        global = true
    )]
    pub hashing_queue: usize,

    /// Longest time one RPC may take.
    #[arg(long, env = "TESSERA_REQUEST_TIMEOUT", default_value = "10s", value_parser = duration, global = true)]
    pub request_timeout: Duration,
}

/// A setting that does not make sense.
#[derive(Debug, thiserror::Error)]
#[error("invalid setting {name}: {reason}")]
pub struct SettingsError {
    name: &'static str,
    reason: String,
}

/// Only the shared options, for building settings without a command.
#[derive(clap::Parser)]
struct OptionsOnly {
    #[command(flatten)]
    options: Options,
}

impl Settings {
    /// The settings `tessera serve` would use (defaults, then `TESSERA_*`
    /// variables) with the embedded database in `data_dir` and an ephemeral
    /// port on 127.0.0.1: for examples and embedding.
    pub fn embedded(data_dir: &std::path::Path) -> Result<Self, SettingsError> {
        let args = [
            "tessera".as_ref(),
            "--listen-addr".as_ref(),
            "127.0.0.1:0".as_ref(),
            "--data-dir".as_ref(),
            data_dir.as_os_str(),
        ];
        let parsed =
            <OptionsOnly as clap::Parser>::try_parse_from(args).map_err(|e| SettingsError {
                name: "arguments",
                reason: e.to_string(),
            })?;
        parsed.options.settings()
    }
}

impl Options {
    /// Validates the options into [`Settings`].
    pub fn settings(&self) -> Result<Settings, SettingsError> {
        let invalid = |name: &'static str, reason: &dyn std::fmt::Display| SettingsError {
            name,
            reason: reason.to_string(),
        };
        let default_audience = Audience::parse(&self.default_audience)
            .map_err(|e| invalid("TESSERA_DEFAULT_AUDIENCE", &e))?;
        if self.issuer.is_empty() {
            return Err(invalid("TESSERA_ISSUER", &"must not be empty"));
        }
        if self.access_token_ttl < Duration::from_secs(1) {
            return Err(invalid("TESSERA_ACCESS_TOKEN_TTL", &"must be at least 1s"));
        }
        if self.refresh_token_ttl < Duration::from_secs(1) {
            return Err(invalid("TESSERA_REFRESH_TOKEN_TTL", &"must be at least 1s"));
        }
        if self.revocation_stale_after <= self.revocation_poll_interval {
            return Err(invalid(
                "TESSERA_REVOCATION_STALE_AFTER",
                &"must be longer than TESSERA_REVOCATION_POLL_INTERVAL",
            ));
        }
        let database_url = match &self.database_url {
            Some(url) => url.clone(),
            None => format!(
                "sqlite://{}?mode=rwc",
                self.data_dir.join("tessera.db").display()
            ),
        };
        let defaults = HashingSettings::default();
        Ok(Settings {
            database_url: SecretString::from(database_url),
            database_max_connections: self.database_max_connections.max(1),
            data_dir: self.data_dir.clone(),
            key_encryption_key: self.key_encryption_key.clone().map(SecretString::from),
            listen_addr: self.listen_addr,
            policy: Policy {
                issuer: self.issuer.clone(),
                default_audience,
                access_token_ttl: self.access_token_ttl,
                refresh_token_ttl: self.refresh_token_ttl,
                refresh_reuse_grace: self.refresh_reuse_grace,
                leeway: self.clock_leeway,
            },
            signing_alg: self.signing_alg,
            hashing: HashingSettings {
                memory_kib: self.argon2_memory_kib,
                iterations: self.argon2_iterations,
                parallelism: self.argon2_parallelism,
                max_concurrent: self.hashing_concurrency.unwrap_or(defaults.max_concurrent),
                max_waiting: self.hashing_queue,
            },
            follow: FollowSettings {
                poll_interval: self.revocation_poll_interval,
                key_refresh_interval: self.key_refresh_interval,
            },
            revocation_stale_after: self.revocation_stale_after,
            migrate: true,
            request_timeout: self.request_timeout,
        })
    }
}
