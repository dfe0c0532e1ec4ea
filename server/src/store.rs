//! Durable state behind one trait, so the domain never sees SQL.
//!
//! Everything that decides whether a token is valid lives here: users and
//! clients (with their disabled flags), sessions, refresh tokens (as hashes,
//! with their state), the append-only revocation log and the encrypted
//! signing keys. [`sql::SqlStore`] implements the trait once over sqlx's
//! `Any` driver, because the queries are the same on both backends; what
//! differs per backend (connection setup, migrations, change notifications)
//! is in [`postgres`] and [`sqlite`], which know nothing of `SqlStore`.

use std::sync::Arc;

use async_trait::async_trait;

use crate::model::{
    Audience, ClientId, ExchangeRules, RefreshTokenState, Revocation, Scope, ScopeSet, SecretHash,
    UnixTime, Username,
};

mod batch;
mod group_commit;
mod postgres;
mod sql;
mod sqlite;

/// What went wrong in the store. The caller of the gRPC API sees only a
/// generic message; the log sees the cause.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A row with the same unique key exists (a user or client id in use).
    #[error("already exists")]
    Conflict,
    /// The database could not be reached or did not answer in time.
    #[error("database unavailable")]
    Unavailable(#[source] sqlx::Error),
    /// The first connection to the database failed.
    #[error("cannot connect to {target}")]
    Connect {
        /// Where (host, port, database; never credentials).
        target: String,
        /// Why.
        #[source]
        source: sqlx::Error,
    },
    /// A stored value could not be read back (corruption or a bad migration).
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
    /// Started without migrating, on a database whose schema is behind.
    #[error(
        "the database's schema is at version {applied}, this Tessera needs {needed}: \
         run `tessera migrate` (or start without --no-migrate)"
    )]
    NotMigrated {
        /// The newest migration applied (0: none).
        applied: i64,
        /// The newest this build has.
        needed: i64,
    },
    /// Migrations could not be applied.
    #[error("migration failed")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    /// The database URL names no supported backend.
    #[error("database URL must start with postgres:// or sqlite:")]
    UnsupportedUrl,
    /// Any other database error.
    #[error("database error")]
    Database(#[source] sqlx::Error),
}

impl StoreError {
    /// True when the database could not be reached: worth retrying
    /// elsewhere, and answered as UNAVAILABLE.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable(_) | Self::Connect { .. })
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::Database(db) if db.is_unique_violation() => Self::Conflict,
            // SQLite: busy or locked past the busy timeout, read-only, I/O
            // error, disk full, cannot open: nothing was written, and the
            // write may succeed later or elsewhere.
            sqlx::Error::Database(db)
                if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some()
                    && db
                        .code()
                        .and_then(|code| code.parse::<i32>().ok())
                        .is_some_and(|code| matches!(code & 0xff, 5 | 6 | 8 | 10 | 13 | 14)) =>
            {
                Self::Unavailable(e)
            }
            // SQLSTATE classes 08 (connection exception), 53 (insufficient
            // resources, e.g. too many connections, disk full) and 57P
            // (operator intervention: shutdown); and anything FATAL, which
            // ends the connection (a database not accepting connections).
            sqlx::Error::Database(db)
                if db.code().is_some_and(|c| {
                    c.starts_with("08") || c.starts_with("53") || c.starts_with("57P")
                }) || db
                    .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                    .is_some_and(|pg| {
                        matches!(
                            pg.severity(),
                            sqlx::postgres::PgSeverity::Fatal | sqlx::postgres::PgSeverity::Panic
                        )
                    }) =>
            {
                Self::Unavailable(e)
            }
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => Self::Unavailable(e),
            _ => Self::Database(e),
        }
    }
}

/// A user as stored.
#[derive(Debug, Clone)]
pub struct UserRecord {
    /// Stable random id, written as `sub`.
    pub id: String,
    /// Login name; never written into a token.
    pub username: Username,
    /// Argon2id PHC string.
    pub password_hash: String,
    /// Scopes the user may be granted.
    pub scopes: ScopeSet,
    /// Audiences the user may ask for besides the server default.
    pub audiences: Vec<Audience>,
    /// Roles written into their tokens (`roles`).
    pub roles: ScopeSet,
    /// Disabled users cannot log in or refresh.
    pub disabled: bool,
}

/// A change to a user that ends their sessions.
#[derive(Debug, Clone)]
pub enum UserChange {
    /// A new argon2id PHC string.
    Password(String),
    /// New scopes.
    Scopes(ScopeSet),
    /// New roles.
    Roles(ScopeSet),
    /// Gone, with their sessions and refresh tokens.
    Delete,
}

/// A change to a client that ends every token it holds.
#[derive(Debug, Clone)]
pub enum ClientChange {
    /// Disabled: it cannot get tokens until enabled again.
    Disable,
    /// New scopes.
    Scopes(ScopeSet),
    /// New roles.
    Roles(ScopeSet),
    /// Gone.
    Delete,
}

/// How a client proves who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientCredential {
    /// A secret, stored as its SHA-256.
    Secret(SecretHash),
    /// A TLS client certificate naming this in its subjectAltName (RFC 8705
    /// `tls_client_auth`): a SPIFFE ID or DNS name.
    TlsSubject(String),
    /// A TLS client certificate with this SHA-256 (RFC 8705
    /// `self_signed_tls_client_auth` style pinning).
    TlsCertificate([u8; 32]),
}

/// A client (service account) as stored.
#[derive(Debug, Clone)]
pub struct ClientRecord {
    /// The client id, written as `sub` and `client_id`.
    pub id: ClientId,
    /// How it authenticates.
    pub credential: ClientCredential,
    /// Scopes the client may be granted.
    pub scopes: ScopeSet,
    /// Audiences the client may ask for besides the server default.
    pub audiences: Vec<Audience>,
    /// Roles written into its tokens (`roles`).
    pub roles: ScopeSet,
    /// Disabled clients cannot get tokens.
    pub disabled: bool,
    /// A replaced secret that still works until the given time (`client
    /// rotate-secret --overlap`).
    pub previous_secret: Option<(SecretHash, UnixTime)>,
}

/// A session: one password login and every refresh token rotated from it.
#[derive(Debug, Clone)]
pub struct NewSession {
    /// Session id, written as `sid` into every token of the session.
    pub sid: String,
    /// The user's id.
    pub user_id: String,
    /// The audience every token of the session is issued for.
    pub audience: Audience,
    /// When the session began.
    pub created_at: UnixTime,
}

/// The first refresh token of a session, about to be stored (only its hash
/// is kept).
#[derive(Debug, Clone)]
pub struct NewRefreshToken {
    /// SHA-256 of the token.
    pub hash: SecretHash,
    /// Scopes the token may be exchanged for.
    pub scopes: ScopeSet,
    /// When it was issued.
    pub issued_at: UnixTime,
    /// When it stops being usable.
    pub expires_at: UnixTime,
}

/// The successor an exchange stores: it keeps the presented token's scopes
/// (RFC 6749 §6), whatever the access token was narrowed to.
#[derive(Debug, Clone)]
pub struct Successor {
    /// SHA-256 of the new token.
    pub hash: SecretHash,
    /// When it was issued.
    pub issued_at: UnixTime,
    /// When it stops being usable.
    pub expires_at: UnixTime,
}

/// A refresh token presented to Refresh, and how to judge it.
#[derive(Debug, Clone)]
pub struct ExchangeRequest<'a> {
    /// SHA-256 of the presented token.
    pub presented: &'a SecretHash,
    /// Scopes asked for the new access token; empty keeps the token's.
    pub requested_scopes: &'a ScopeSet,
    /// The successor to store if the exchange succeeds.
    pub successor: &'a Successor,
    /// The replica's time, for expiry.
    pub now: UnixTime,
    /// Grace window and replay bound.
    pub rules: ExchangeRules,
    /// When a session revocation made for detected theft can be forgotten.
    pub theft_revocation_expires_at: UnixTime,
}

/// What an exchange did, decided and written in one transaction.
#[derive(Debug, Clone)]
pub enum Exchange {
    /// The successor is stored (a rotation, or a replay inside the grace
    /// window that superseded the previous successor). The record is the
    /// presented token's.
    Issued {
        /// The presented token, with its session.
        record: RefreshTokenRecord,
        /// True for a replay.
        replay: bool,
    },
    /// A spent or superseded token presented again: the session was revoked
    /// and this entry appended to the revocation log.
    TheftDetected {
        /// The presented token, with its session.
        record: RefreshTokenRecord,
        /// The session revocation written.
        revocation: Revocation,
    },
    /// A scope the token does not hold was asked for; nothing was written.
    ScopeNotAllowed(Scope),
    /// Unknown, expired or revoked; nothing was written.
    Refused,
}

/// A stored refresh token with what is known of its session and user.
#[derive(Debug, Clone)]
pub struct RefreshTokenRecord {
    /// The session the token belongs to.
    pub sid: String,
    /// The user's id.
    pub user_id: String,
    /// The user's name (reported by introspection, never put in a JWT).
    pub username: Username,
    /// The audience of the session.
    pub audience: Audience,
    /// Scopes the token may be exchanged for.
    pub scopes: ScopeSet,
    /// The user's roles now.
    pub roles: ScopeSet,
    /// When it was issued.
    pub issued_at: UnixTime,
    /// When it stops being usable.
    pub expires_at: UnixTime,
    /// Active, spent, superseded or revoked.
    pub state: RefreshTokenState,
}

/// A signing key as stored: public half in the clear, private half encrypted
/// under the key-encryption key.
#[derive(Clone)]
pub struct StoredKey {
    /// Key id, written as `kid`.
    pub kid: String,
    /// JWS algorithm name (`ES256`, `EdDSA`, `RS256`).
    pub alg: String,
    /// The public JWK, as JSON.
    pub public_jwk: String,
    /// Nonce and AES-256-GCM ciphertext of the PKCS#8 private key.
    pub encrypted_private_key: Vec<u8>,
    /// When it was created.
    pub created_at: UnixTime,
    /// When it starts signing; published in the JWKS before then.
    pub activates_at: UnixTime,
}

impl std::fmt::Debug for StoredKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("activates_at", &self.activates_at)
            .finish_non_exhaustive()
    }
}

/// Something changed in the database that other replicas must pick up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// New revocation log entries.
    Revocations,
    /// A new signing key.
    Keys,
    /// The feed may have missed notifications (it reconnected): re-read all.
    Unknown,
}

/// A feed of [`Change`]s: PostgreSQL LISTEN/NOTIFY, or SQLite's
/// `data_version`. Polling stays the backstop, so a missed notification
/// delays a change but never loses it.
#[async_trait]
pub trait ChangeFeed: Send {
    /// Waits for the next change.
    async fn next(&mut self) -> Result<Change, StoreError>;
}

/// Durable storage used by the domain.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Checks the database answers.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Stores a new user; [`StoreError::Conflict`] if the name is taken.
    async fn insert_user(&self, user: &UserRecord, now: UnixTime) -> Result<(), StoreError>;

    /// Looks a user up by name.
    async fn find_user(&self, username: &Username) -> Result<Option<UserRecord>, StoreError>;

    /// Replaces a user's password hash, only if it is still `old`. False
    /// when it changed meanwhile (or the user is gone).
    async fn replace_password_hash(
        &self,
        user_id: &str,
        old: &str,
        new: &str,
    ) -> Result<bool, StoreError>;

    /// Disables a user, revokes every session of theirs and appends a
    /// revocation for each of those sessions and for the subject,
    /// atomically. Returns the user's id, or `None` if unknown. The entries
    /// are made at `at` and kept until `expires_at`. Sessions created or
    /// rotated concurrently are either refused or revoked with the rest.
    async fn disable_user(
        &self,
        username: &Username,
        at: UnixTime,
        expires_at: UnixTime,
    ) -> Result<Option<String>, StoreError>;

    /// Changes a user and revokes every session and token of theirs, in one
    /// transaction (a new password, new scopes or deletion must not leave
    /// tokens granted under the old ones). Returns the user's id, or `None`
    /// if unknown.
    async fn change_user(
        &self,
        username: &Username,
        change: &UserChange,
        at: UnixTime,
        expires_at: UnixTime,
    ) -> Result<Option<String>, StoreError>;

    /// Changes a client at `at` and revokes every token it holds, issued up
    /// to `issued_up_to` (a subject entry for its id, its tokens' `sub`), in
    /// one transaction; false if there is no such client.
    async fn change_client(
        &self,
        id: &ClientId,
        change: &ClientChange,
        at: UnixTime,
        issued_up_to: UnixTime,
        expires_at: UnixTime,
    ) -> Result<bool, StoreError>;

    /// Enables a disabled user again; false if there is no such user. Their
    /// revoked sessions and tokens stay revoked.
    async fn enable_user(&self, username: &Username) -> Result<bool, StoreError>;

    /// Every user, by name.
    async fn users(&self) -> Result<Vec<UserRecord>, StoreError>;

    /// Revokes every token of subject `sub` issued until `at`: its sessions
    /// (refresh tokens) and a subject entry in the revocation log.
    async fn revoke_subject(
        &self,
        sub: &str,
        at: UnixTime,
        expires_at: UnixTime,
    ) -> Result<(), StoreError>;

    /// Replaces a secret client's secret by `new`; the old one keeps working
    /// until `old_valid_until`. False if there is no such client, or it
    /// authenticates by certificate.
    async fn rotate_client_secret(
        &self,
        id: &ClientId,
        new: &SecretHash,
        old_valid_until: UnixTime,
    ) -> Result<bool, StoreError>;

    /// Enables a disabled client again; false if there is no such client.
    async fn enable_client(&self, id: &ClientId) -> Result<bool, StoreError>;

    /// Every client, by id.
    async fn clients(&self) -> Result<Vec<ClientRecord>, StoreError>;

    /// A counter that moves with every change to a client (a trigger moves
    /// it, whoever makes the change): replicas holding clients in memory
    /// re-read them when it moves.
    async fn directory_version(&self) -> Result<i64, StoreError>;

    /// Stores a new client; [`StoreError::Conflict`] if the id is taken.
    async fn insert_client(&self, client: &ClientRecord, now: UnixTime) -> Result<(), StoreError>;

    /// Looks a client up by id.
    async fn find_client(&self, id: &ClientId) -> Result<Option<ClientRecord>, StoreError>;

    /// Stores a new session with its first refresh token, only if the user
    /// exists and is enabled, decided in the same statement or transaction
    /// as the write. False when the user is disabled or gone.
    async fn create_session(
        &self,
        session: &NewSession,
        token: &NewRefreshToken,
    ) -> Result<bool, StoreError>;

    /// Looks a refresh token up by hash.
    async fn find_refresh_token(
        &self,
        hash: &SecretHash,
    ) -> Result<Option<RefreshTokenRecord>, StoreError>;

    /// Refresh: reads the presented token under a lock, judges it
    /// ([`RefreshTokenState::on_presented`], grace measured by the
    /// database's clock) and carries the decision out in the same
    /// transaction: rotate, replay, revoke the session, or nothing.
    async fn exchange_refresh_token(
        &self,
        request: &ExchangeRequest<'_>,
    ) -> Result<Exchange, StoreError>;

    /// Revokes a session and appends its revocation entry, atomically. False
    /// if the session was unknown or already revoked.
    async fn revoke_session(&self, entry: &Revocation) -> Result<bool, StoreError>;

    /// Appends an entry to the revocation log.
    async fn append_revocation(&self, entry: &Revocation) -> Result<(), StoreError>;

    /// Log entries after `cursor` that have not expired by `now`, oldest
    /// first, at most `limit`, each with its log position.
    async fn revocations_after(
        &self,
        cursor: i64,
        now: UnixTime,
        limit: i64,
    ) -> Result<Vec<(i64, Revocation)>, StoreError>;

    /// Stores a new signing key.
    async fn insert_signing_key(&self, key: &StoredKey) -> Result<(), StoreError>;

    /// Takes a key out of service for good: no longer published, signing or
    /// trusted once replicas re-read the keys. False if unknown or revoked.
    async fn revoke_signing_key(&self, kid: &str, at: UnixTime) -> Result<bool, StoreError>;

    /// Every signing key not revoked, oldest activation first.
    async fn signing_keys(&self) -> Result<Vec<StoredKey>, StoreError>;

    /// A push feed of changes, where the backend has one.
    async fn change_feed(&self) -> Result<Option<Box<dyn ChangeFeed>>, StoreError>;

    /// The database's clock, in milliseconds since the epoch.
    async fn database_time_ms(&self) -> Result<i64, StoreError>;

    /// Deletes what can no longer matter: revocation entries and refresh
    /// tokens that expired before `before`, then sessions left without a
    /// refresh token. In batches of `batch` rows, each its own short
    /// statement, so writers never wait long.
    async fn prune(&self, before: UnixTime, batch: i64) -> Result<Pruned, StoreError>;
}

/// What [`Store::prune`] deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Revocation log entries.
    pub revocations: u64,
    /// Refresh tokens.
    pub refresh_tokens: u64,
    /// Sessions.
    pub sessions: u64,
}

impl std::fmt::Debug for dyn Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Store")
    }
}

/// Which database a URL selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `postgres://` or `postgresql://`.
    Postgres,
    /// `sqlite:`.
    Sqlite,
}

impl Backend {
    /// The backend a database URL names, if it is one Tessera supports.
    pub fn of_url(url: &str) -> Option<Self> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Some(Self::Postgres)
        } else if url.starts_with("sqlite:") {
            Some(Self::Sqlite)
        } else {
            None
        }
    }
}

/// Connects to the database `url` names, applying migrations when `migrate`.
pub async fn connect(
    url: &str,
    max_connections: u32,
    migrate: bool,
) -> Result<Arc<dyn Store>, StoreError> {
    let backend = Backend::of_url(url).ok_or(StoreError::UnsupportedUrl)?;
    let (pool, migrator) = match backend {
        Backend::Postgres => (
            postgres::pool(url, max_connections).await?,
            &postgres::MIGRATOR,
        ),
        Backend::Sqlite => (sqlite::pool(url, max_connections).await?, &sqlite::MIGRATOR),
    };
    let needed = migrator.iter().map(|m| m.version).max().unwrap_or(0);
    // No table at all reads as version 0.
    let applied: i64 = sqlx::query_scalar::<_, Option<i64>>(
        "SELECT MAX(version) FROM _sqlx_migrations WHERE success",
    )
    .fetch_one(&pool)
    .await
    .ok()
    .flatten()
    .unwrap_or(0);
    if migrate {
        // Run even when current: it also checks applied migrations were
        // not changed since.
        migrator.run(&pool).await.map_err(StoreError::Migrate)?;
        if applied < needed {
            let names: Vec<String> = migrator
                .iter()
                .filter(|m| m.version > applied)
                .map(|m| format!("{} {}", m.version, m.description))
                .collect();
            tracing::info!(
                from = applied,
                to = needed,
                migrations = %names.join(", "),
                "applied database migrations"
            );
        }
    } else if applied < needed {
        return Err(StoreError::NotMigrated { applied, needed });
    }
    Ok(Arc::new(sql::SqlStore::new(pool, backend, url)))
}
