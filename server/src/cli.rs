//! The `tessera` command line: `serve`, `migrate`, `user`, `client`, `keys`,
//! `revoke`.

use std::{
    io::{BufRead, IsTerminal},
    sync::Arc,
    time::Duration,
};

use clap::{Parser, Subcommand};
use secrecy::{ExposeSecret, SecretString};

use tessera_token::Algorithm;

use crate::{
    config::{AdminOptions, Options, Settings, SettingsError, StoreOptions, UserOptions},
    domain::{AdminError, AdminUserChange, NewClientCredential},
    keys::{self, KeyRing, KeyState, key_states},
    model::{
        Audience, ClientId, Clock, InvalidInput, Password, RevocationKind, ScopeSet, SystemClock,
        UnixTime, Username, parse_sha256,
    },
    startup::{self, Application, StartupError},
    store::{Backend, ClientChange, ClientCredential, StoreError},
};

/// Tessera: a gRPC token service.
#[derive(Debug, Parser)]
#[command(name = "tessera", version, about, args_override_self = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Apply pending migrations (unless --no-migrate) and serve gRPC.
    Serve {
        /// Do not apply migrations; the schema must already be current.
        #[arg(long, env = "TESSERA_NO_MIGRATE")]
        no_migrate: bool,
        #[command(flatten)]
        options: Options,
    },
    /// Apply pending migrations and exit.
    Migrate {
        #[command(flatten)]
        options: StoreOptions,
    },
    /// Manage users.
    User {
        #[command(flatten)]
        options: UserOptions,
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Manage clients (service accounts).
    Client {
        #[command(flatten)]
        options: AdminOptions,
        #[command(subcommand)]
        command: ClientCommand,
    },
    /// Manage signing keys.
    Keys {
        #[command(flatten)]
        options: AdminOptions,
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Ask a running server whether it is ready: exit 0 when it reports
    /// SERVING (for probes and scripts), 1 otherwise.
    Health {
        /// The server's gRPC address.
        #[arg(long, env = "TESSERA_LISTEN_ADDR", default_value = "127.0.0.1:50051")]
        addr: String,
        /// Speak TLS, trusting this CA (PEM) for the server's certificate.
        #[arg(long)]
        ca: Option<std::path::PathBuf>,
    },
    /// Print the effective settings (flags, environment and defaults), with
    /// secrets redacted.
    Config {
        #[command(flatten)]
        options: Options,
    },
    /// Revoke tokens now, on every replica (exactly one of the options).
    #[command(group(clap::ArgGroup::new("what").required(true).multiple(false)))]
    Revoke {
        /// Every token of this subject (a user's `sub`, or a client id)
        /// issued until now, and the user's sessions.
        #[arg(long, group = "what", allow_hyphen_values = true)]
        subject: Option<String>,
        /// A session (`sid`): its refresh tokens and access tokens.
        #[arg(long, group = "what", allow_hyphen_values = true)]
        session: Option<String>,
        /// One access token, by its `jti`.
        #[arg(long, group = "what", allow_hyphen_values = true)]
        jti: Option<String>,
        #[command(flatten)]
        options: AdminOptions,
    },
}

#[derive(Debug, Subcommand)]
enum UserCommand {
    /// Add a user. The password is read from stdin (one line) when stdin is
    /// not a terminal, else prompted for.
    Add {
        /// Login name.
        name: String,
        /// A scope the user may be granted (repeatable).
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
        /// An audience the user may ask for besides the default (repeatable).
        #[arg(long = "audience")]
        audiences: Vec<String>,
        /// A role their tokens carry (`roles` claim; repeatable).
        #[arg(long = "role")]
        roles: Vec<String>,
    },
    /// Disable a user and revoke all their tokens.
    Disable {
        /// Login name.
        name: String,
    },
    /// Enable a disabled user again (tokens revoked stay revoked).
    Enable {
        /// Login name.
        name: String,
    },
    /// Set a user's password (read like `user add`'s) and revoke their
    /// sessions and tokens.
    SetPassword {
        /// Login name.
        name: String,
    },
    /// Replace a user's scopes and revoke their sessions and tokens (they
    /// log in again under the new scopes).
    SetScopes {
        /// Login name.
        name: String,
        /// A scope the user may be granted (repeatable).
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
    },
    /// Replace a user's roles and revoke their sessions and tokens.
    SetRoles {
        /// Login name.
        name: String,
        /// A role their tokens carry (repeatable; none: no roles).
        #[arg(long = "role")]
        roles: Vec<String>,
    },
    /// Delete a user, their sessions and tokens.
    Delete {
        /// Login name.
        name: String,
    },
    /// List users: name, sub, scopes, whether disabled.
    List,
}

#[derive(Debug, Subcommand)]
enum ClientCommand {
    /// Add a client; its new secret is printed alone on the last line.
    Add {
        /// Client id.
        id: String,
        /// A scope the client may be granted (repeatable).
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
        /// An audience the client may ask for besides the default (repeatable).
        #[arg(long = "audience")]
        audiences: Vec<String>,
        /// A role its tokens carry (`roles` claim; repeatable).
        #[arg(long = "role")]
        roles: Vec<String>,
        /// Authenticate by a TLS client certificate naming this (a SPIFFE ID
        /// or DNS name) in its subjectAltName, instead of a secret (RFC 8705).
        #[arg(long, conflicts_with = "tls_cert_sha256")]
        tls_subject: Option<String>,
        /// Authenticate by the TLS client certificate with this SHA-256
        /// (hex, as `openssl x509 -noout -fingerprint -sha256` prints it),
        /// instead of a secret (RFC 8705).
        #[arg(long)]
        tls_cert_sha256: Option<String>,
    },
    /// Give a client a new secret, printed alone on the last line; the old
    /// one keeps working until the overlap ends (0s: at once).
    RotateSecret {
        /// Client id.
        id: String,
        /// How long the old secret keeps working.
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        overlap: Duration,
    },
    /// Disable a client and revoke every token it holds.
    Disable {
        /// Client id.
        id: String,
    },
    /// Replace a client's scopes and revoke every token it holds (it gets
    /// new ones under the new scopes).
    SetScopes {
        /// Client id.
        id: String,
        /// A scope the client may be granted (repeatable).
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
    },
    /// Replace a client's roles and revoke every token it holds.
    SetRoles {
        /// Client id.
        id: String,
        /// A role its tokens carry (repeatable; none: no roles).
        #[arg(long = "role")]
        roles: Vec<String>,
    },
    /// Enable a disabled client again (tokens revoked stay revoked).
    Enable {
        /// Client id.
        id: String,
    },
    /// Delete a client and revoke every token it holds.
    Delete {
        /// Client id.
        id: String,
    },
    /// List clients: id, how it authenticates, scopes, whether disabled.
    List,
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Add a new signing key: published at once, signing after --activate-in.
    Rotate {
        /// Delay before the new key signs, so every verifier's cached JWKS
        /// has it by then.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        activate_in: Duration,
        /// Algorithm of the new key (ES256, EdDSA or RS256); by default the
        /// deployment's, that of the newest key. Not TESSERA_SIGNING_ALG,
        /// which only chooses the first key of a new installation.
        #[arg(long)]
        alg: Option<Algorithm>,
    },
    /// List signing keys and where each is in its life.
    List,
    /// Stop signing with a key now: a new key signs from now on, and this
    /// one stays published until the tokens it signed expire. A key not
    /// yet signing is withdrawn.
    Retire {
        /// Key id (`tessera keys list`).
        #[arg(allow_hyphen_values = true)]
        kid: String,
    },
    /// Emergency (a leaked private key): unpublish the key and refuse every
    /// token it signed, on every replica as soon as it re-reads the keys; a
    /// new key signs from now on if this one was signing.
    Revoke {
        /// Key id (`tessera keys list`).
        #[arg(allow_hyphen_values = true)]
        kid: String,
    },
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad settings.
    #[error(transparent)]
    Settings(#[from] SettingsError),
    /// Bad argument.
    #[error("{0}")]
    Input(#[from] InvalidInput),
    /// Start-up failed.
    #[error(transparent)]
    Startup(#[from] StartupError),
    /// An admin command failed.
    #[error(transparent)]
    Admin(#[from] AdminError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Key management failed.
    #[error(transparent)]
    Keys(#[from] keys::KeyError),
    /// Serving failed.
    #[error("server error: {0}")]
    Serve(#[from] tonic::transport::Error),
    /// `tessera health`: the server is not ready, or did not answer.
    #[error("{0} is not ready: {1}")]
    NotServing(String, String),
    /// Reading the password failed.
    #[error("cannot read the password: {0}")]
    Io(#[from] std::io::Error),
}

impl Cli {
    /// Runs the command.
    pub async fn run(self) -> Result<(), CliError> {
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        match self.command {
            Command::Serve {
                no_migrate,
                options,
            } => {
                let mut settings = options.settings()?;
                settings.migrate = !no_migrate;
                let app = Application::build(settings, clock).await?;
                app.run_until(startup::shutdown_signal()).await?;
            }
            Command::Migrate { options } => {
                startup::open_store(&options.settings()?).await?;
                println!("migrations applied");
            }
            Command::User { options, command } => {
                user(command, &options.settings()?, clock).await?;
            }
            Command::Client { options, command } => {
                client(command, &options.settings()?, clock).await?;
            }
            Command::Health { addr, ca } => {
                let status = health(&addr, ca.as_deref()).await?;
                if status != "SERVING" {
                    return Err(CliError::NotServing(addr, status));
                }
                println!("{addr}: {status}");
            }
            Command::Config { options } => {
                let settings = options.settings()?;
                println!(
                    "database_url = {}",
                    redact_url(settings.database_url.expose_secret())
                );
                println!("{settings:#?}");
            }
            Command::Revoke {
                subject,
                session,
                jti,
                options,
            } => {
                let (kind, value, what) = match (subject, session, jti) {
                    (Some(sub), _, _) => (RevocationKind::Subject, sub, "subject"),
                    (_, Some(sid), _) => (RevocationKind::Session, sid, "session"),
                    (_, _, Some(jti)) => (RevocationKind::Token, jti, "access token"),
                    (None, None, None) => unreachable!("clap requires one"),
                };
                if value.trim().is_empty() {
                    return Err(InvalidInput("the value to revoke is empty".into()).into());
                }
                let admin = startup::open_admin(&options.settings()?, clock).await?;
                admin.revoke(kind, &value).await?;
                println!("revoked {what} {value}; every replica denies it once it follows the log");
            }
            Command::Keys { options, command } => {
                keys(command, &options.settings()?, clock.now()).await?;
            }
        }
        Ok(())
    }
}

async fn user(
    command: UserCommand,
    settings: &Settings,
    clock: Arc<dyn Clock>,
) -> Result<(), CliError> {
    match command {
        UserCommand::Add {
            name,
            scopes,
            audiences,
            roles,
        } => {
            let username = Username::parse(&name)?;
            let scopes = ScopeSet::parse_list(&scopes)?;
            let roles = parse_roles(&roles)?;
            let audiences = parse_audiences(&audiences)?;
            let password = Password::parse(read_password(&name)?)?;
            let admin = startup::open_admin(settings, clock).await?;
            let id = admin
                .add_user(username, &password, scopes, audiences, roles)
                .await?;
            println!("created user {name} (sub {id})");
        }
        UserCommand::Disable { name } => {
            let username = Username::parse(&name)?;
            let admin = startup::open_admin(settings, clock).await?;
            admin.disable_user(&username).await?;
            println!("disabled user {name}; their sessions and access tokens are revoked");
        }
        UserCommand::SetPassword { name } => {
            let username = Username::parse(&name)?;
            let password = Password::parse(read_password(&name)?)?;
            startup::open_admin(settings, clock)
                .await?
                .change_user(&username, AdminUserChange::Password(&password))
                .await?;
            println!("set the password of {name}; their sessions and tokens are revoked");
        }
        UserCommand::SetScopes { name, scopes } => {
            let username = Username::parse(&name)?;
            let scopes = ScopeSet::parse_list(&scopes)?;
            let joined = scopes.joined();
            startup::open_admin(settings, clock)
                .await?
                .change_user(&username, AdminUserChange::Scopes(scopes))
                .await?;
            println!("{name} may now be granted: {joined}; their sessions and tokens are revoked");
        }
        UserCommand::SetRoles { name, roles } => {
            let username = Username::parse(&name)?;
            let roles = parse_roles(&roles)?;
            let joined = roles.joined();
            startup::open_admin(settings, clock)
                .await?
                .change_user(&username, AdminUserChange::Roles(roles))
                .await?;
            println!("{name}'s roles are now: {joined}; their sessions and tokens are revoked");
        }
        UserCommand::Delete { name } => {
            let username = Username::parse(&name)?;
            startup::open_admin(settings, clock)
                .await?
                .change_user(&username, AdminUserChange::Delete)
                .await?;
            println!("deleted user {name}; their sessions and tokens are revoked");
        }
        UserCommand::Enable { name } => {
            let username = Username::parse(&name)?;
            startup::open_admin(settings, clock)
                .await?
                .enable_user(&username)
                .await?;
            println!("enabled user {name}");
        }
        UserCommand::List => {
            let users = startup::open_admin(settings, clock).await?.users().await?;
            println!("{:<24} {:<24} {:<9} scopes [roles]", "name", "sub", "state");
            for u in users {
                let state = if u.disabled { "disabled" } else { "enabled" };
                println!(
                    "{:<24} {:<24} {state:<9} {}{}",
                    u.username.as_str(),
                    u.id,
                    u.scopes.joined(),
                    roles_column(&u.roles)
                );
            }
        }
    }
    Ok(())
}

/// Applies `change` to client `id` (which ends its tokens).
async fn change_client(
    settings: &Settings,
    clock: Arc<dyn Clock>,
    id: &str,
    change: ClientChange,
) -> Result<(), CliError> {
    let id = ClientId::parse(id)?;
    startup::open_admin(settings, clock)
        .await?
        .change_client(&id, change)
        .await?;
    Ok(())
}

async fn client(
    command: ClientCommand,
    settings: &Settings,
    clock: Arc<dyn Clock>,
) -> Result<(), CliError> {
    match command {
        ClientCommand::Add {
            id,
            scopes,
            audiences,
            roles,
            tls_subject,
            tls_cert_sha256,
        } => {
            let id = ClientId::parse(&id)?;
            let scopes = ScopeSet::parse_list(&scopes)?;
            let audiences = parse_audiences(&audiences)?;
            let roles = parse_roles(&roles)?;
            let credential = match (tls_subject, tls_cert_sha256) {
                (Some(subject), _) => NewClientCredential::TlsSubject(subject),
                (None, Some(sha256)) => NewClientCredential::TlsCertificate(parse_sha256(&sha256)?),
                (None, None) => NewClientCredential::Secret,
            };
            let admin = startup::open_admin(settings, clock).await?;
            match admin
                .add_client(id.clone(), scopes, audiences, roles, credential.clone())
                .await?
            {
                Some(secret) => {
                    println!(
                        "created client {id}; its secret (shown only now) is on the next line"
                    );
                    println!("{}", secret.expose_secret());
                }
                None => println!(
                    "created client {id}; it authenticates by its TLS client certificate \
                     ({}), with an empty client_secret over mutual TLS",
                    match credential {
                        NewClientCredential::TlsSubject(subject) => format!("subject {subject}"),
                        _ => "SHA-256 pinned".to_owned(),
                    }
                ),
            }
        }
        ClientCommand::RotateSecret { id, overlap } => {
            let id = ClientId::parse(&id)?;
            let secret = startup::open_admin(settings, clock)
                .await?
                .rotate_client_secret(&id, overlap)
                .await?;
            println!(
                "new secret for client {id} on the next line (shown only now); the old one \
                 works for {} more",
                humantime::format_duration(overlap)
            );
            println!("{}", secret.expose_secret());
        }
        ClientCommand::Disable { id } => {
            change_client(settings, clock, &id, ClientChange::Disable).await?;
            println!("disabled client {id}; every token it holds is revoked");
        }
        ClientCommand::Delete { id } => {
            change_client(settings, clock, &id, ClientChange::Delete).await?;
            println!("deleted client {id}; every token it held is revoked");
        }
        ClientCommand::SetScopes { id, scopes } => {
            let scopes = ScopeSet::parse_list(&scopes)?;
            let joined = scopes.joined();
            change_client(settings, clock, &id, ClientChange::Scopes(scopes)).await?;
            println!("{id} may now be granted: {joined}; every token it holds is revoked");
        }
        ClientCommand::SetRoles { id, roles } => {
            let roles = parse_roles(&roles)?;
            let joined = roles.joined();
            change_client(settings, clock, &id, ClientChange::Roles(roles)).await?;
            println!("{id}'s roles are now: {joined}; every token it holds is revoked");
        }
        ClientCommand::Enable { id } => {
            let id = ClientId::parse(&id)?;
            startup::open_admin(settings, clock)
                .await?
                .enable_client(&id)
                .await?;
            println!("enabled client {id}");
        }
        ClientCommand::List => {
            let clients = startup::open_admin(settings, clock)
                .await?
                .clients()
                .await?;
            println!("{:<24} {:<10} {:<9} scopes [roles]", "id", "auth", "state");
            for c in clients {
                let auth = match c.credential {
                    ClientCredential::Secret(_) => "secret",
                    ClientCredential::TlsSubject(_) => "tls-name",
                    ClientCredential::TlsCertificate(_) => "tls-cert",
                };
                let state = if c.disabled { "disabled" } else { "enabled" };
                println!(
                    "{:<24} {auth:<10} {state:<9} {}{}",
                    c.id.as_str(),
                    c.scopes.joined(),
                    roles_column(&c.roles)
                );
            }
        }
    }
    Ok(())
}

/// Roles as `list` shows them after the scopes: ` [a b]`, or nothing.
fn roles_column(roles: &ScopeSet) -> String {
    if roles.is_empty() {
        String::new()
    } else {
        format!(" [{}]", roles.joined())
    }
}

/// Roles, validated as scope names are (an empty list: none).
fn parse_roles(roles: &[String]) -> Result<ScopeSet, InvalidInput> {
    ScopeSet::parse_list(roles)
}

/// The health status the server at `addr` reports, or why it did not answer.
async fn health(addr: &str, ca: Option<&std::path::Path>) -> Result<String, CliError> {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let scheme = if ca.is_some() { "https" } else { "http" };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
        .map_err(|e| InvalidInput::new(format!("address {addr}: {e}")))?
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(3));
    if let Some(ca) = ca {
        let pem = std::fs::read(ca).map_err(|e| {
            InvalidInput::new(format!("cannot read the CA file {}: {e}", ca.display()))
        })?;
        endpoint = endpoint
            .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)))
            .map_err(|e| InvalidInput::new(format!("TLS: {e}")))?;
    }
    let channel = match endpoint.connect().await {
        Ok(channel) => channel,
        Err(e) => {
            // The innermost cause says most ("Connection refused").
            let mut cause: &dyn std::error::Error = &e;
            while let Some(next) = cause.source() {
                cause = next;
            }
            return Ok(format!("no answer ({cause})"));
        }
    };
    Ok(
        match HealthClient::new(channel)
            .check(HealthCheckRequest::default())
            .await
        {
            Ok(answer) => answer.into_inner().status().as_str_name().to_owned(),
            Err(status) => format!("no answer ({})", status.message()),
        },
    )
}

/// A database URL with its password masked.
fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.split_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or_default();
            if userinfo.contains(':') {
                format!("{scheme}://{user}:****@{host}")
            } else {
                url.to_owned()
            }
        }
        None => url.to_owned(),
    }
}

/// Adds a key signing from `activates_at`, sealed under the deployment's
/// key-encryption key, of `alg` or the deployment's algorithm.
async fn new_key(
    store: &Arc<dyn crate::store::Store>,
    settings: &Settings,
    now: UnixTime,
    activates_at: UnixTime,
    alg: Option<Algorithm>,
) -> Result<(String, Algorithm, UnixTime), CliError> {
    let backend =
        Backend::of_url(settings.database_url.expose_secret()).ok_or(StoreError::UnsupportedUrl)?;
    let kek = startup::load_kek(settings, backend)?;
    // Loading first proves this key-encryption key opens the existing keys,
    // so the new key is sealed under the one replicas use.
    let ring = KeyRing::load(
        &**store,
        kek,
        settings.signing_alg,
        settings.key_retention(),
        now,
    )
    .await?;
    let alg = match alg {
        Some(alg) => alg,
        None => keys::deployment_algorithm(&**store)
            .await?
            .unwrap_or(settings.signing_alg),
    };
    let (kid, activates_at) = keys::add_key(&**store, ring.kek(), alg, now, activates_at).await?;
    tracing::info!(
        target: "tessera::audit", event = "key_rotated",
        kid, %alg, activates_at = activates_at.as_secs(),
    );
    Ok((kid, alg, activates_at))
}

/// Where key `kid` is in its life, or an error naming it.
async fn key_state(
    store: &Arc<dyn crate::store::Store>,
    kid: &str,
    now: UnixTime,
    retention: Duration,
) -> Result<KeyState, CliError> {
    let stored = store.signing_keys().await?;
    let states = key_states(&stored, now, retention);
    stored
        .iter()
        .zip(states)
        .find(|(k, _)| k.kid == kid)
        .map(|(_, state)| state)
        .ok_or_else(|| {
            InvalidInput::new(format!("no key {kid} (`tessera keys list` shows them)")).into()
        })
}

async fn keys(command: KeysCommand, settings: &Settings, now: UnixTime) -> Result<(), CliError> {
    let store = startup::open_store(settings).await?;
    let retention = settings.key_retention();
    match command {
        KeysCommand::Rotate { activate_in, alg } => {
            let (kid, alg, activates_at) =
                new_key(&store, settings, now, now.plus(activate_in), alg).await?;
            println!(
                "added {alg} key {kid}: published now, signing from {}",
                format_time(activates_at)
            );
        }
        KeysCommand::Retire { kid } => {
            let state = key_state(&store, &kid, now, retention).await?;
            match state {
                KeyState::Signing => {
                    let (new, alg, _) = new_key(&store, settings, now, now, None).await?;
                    tracing::info!(target: "tessera::audit", event = "key_retired", kid);
                    println!(
                        "retired key {kid}: {alg} key {new} signs from now; {kid} stays published \
                         until the tokens it signed expire"
                    );
                }
                KeyState::Next => {
                    store.revoke_signing_key(&kid, now).await?;
                    tracing::info!(target: "tessera::audit", event = "key_retired", kid);
                    println!("withdrew key {kid}, which had not signed anything yet");
                }
                KeyState::Retiring(_) | KeyState::Expired => {
                    println!("key {kid} no longer signs; nothing to do");
                }
            }
        }
        KeysCommand::Revoke { kid } => {
            let state = key_state(&store, &kid, now, retention).await?;
            // The replacement first, so a signer exists at every moment.
            let replacement = if state == KeyState::Signing {
                Some(new_key(&store, settings, now, now, None).await?)
            } else {
                None
            };
            store.revoke_signing_key(&kid, now).await?;
            tracing::warn!(target: "tessera::audit", event = "key_revoked", kid);
            println!(
                "revoked key {kid}: unpublished, and every token it signed is refused as soon as \
                 each replica re-reads the keys (at once on PostgreSQL, within a second on SQLite)"
            );
            if let Some((new, alg, _)) = replacement {
                println!("{alg} key {new} signs from now");
            }
        }
        KeysCommand::List => {
            let stored = store.signing_keys().await?;
            let states = key_states(&stored, now, retention);
            println!("{:<24} {:<6} {:<21} STATE", "KID", "ALG", "ACTIVATES");
            for (key, state) in stored.iter().zip(states) {
                let state = match state {
                    KeyState::Next => "next (published)".to_owned(),
                    KeyState::Signing => "signing".to_owned(),
                    KeyState::Retiring(until) => {
                        format!("retiring (published until {})", format_time(until))
                    }
                    KeyState::Expired => "expired".to_owned(),
                };
                println!(
                    "{:<24} {:<6} {:<21} {state}",
                    key.kid,
                    key.alg,
                    format_time(key.activates_at)
                );
            }
        }
    }
    Ok(())
}

fn parse_audiences(items: &[String]) -> Result<Vec<Audience>, InvalidInput> {
    items.iter().map(|a| Audience::parse(a)).collect()
}

fn format_time(t: UnixTime) -> String {
    let secs = u64::try_from(t.as_secs()).unwrap_or(0);
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

/// One line from stdin when it is not a terminal (scripts, pipes); else a
/// prompt without echo, asked twice.
fn read_password(name: &str) -> Result<SecretString, std::io::Error> {
    if !std::io::stdin().is_terminal() {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        let password = line.strip_suffix('\n').unwrap_or(&line);
        let password = password.strip_suffix('\r').unwrap_or(password);
        return Ok(SecretString::from(password.to_owned()));
    }
    let first = rpassword::prompt_password(format!("password for {name}: "))?;
    let second = rpassword::prompt_password("again: ")?;
    if first != second {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the passwords differ",
        ));
    }
    Ok(SecretString::from(first))
}
