//! The one implementation of [`Store`], over sqlx's `Any` driver: the SQL is
//! portable between PostgreSQL and SQLite (`$n` placeholders, `RETURNING`,
//! integer times, no booleans), and the few differences are asked of
//! [`Backend`]. Rows are read into private `*Row` structs and turned into
//! records there, so a bad stored value is [`StoreError::Corrupt`], never a
//! panic.

use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};
use sqlx::{AnyConnection, AnyPool, FromRow};

use super::{
    Backend, ChangeFeed, ClientRecord, NewRefreshToken, NewSession, RefreshTokenRecord, Store,
    StoreError, StoredKey, UserRecord, postgres,
};
use crate::model::{
    Audience, ClientId, InvalidInput, RefreshTokenState, Revocation, RevocationKind, ScopeSet,
    SecretHash, UnixTime, Username,
};

/// A connection pool and what is needed to speak its backend's dialect.
pub(super) struct SqlStore {
    pool: AnyPool,
    backend: Backend,
    /// Kept for the PostgreSQL LISTEN connection, which is not pooled.
    url: SecretString,
}

impl SqlStore {
    pub(super) fn new(pool: AnyPool, backend: Backend, url: &str) -> Self {
        Self {
            pool,
            backend,
            url: SecretString::from(url),
        }
    }

    /// Appends to the revocation log inside the caller's transaction.
    async fn insert_revocation(
        &self,
        conn: &mut AnyConnection,
        entry: &Revocation,
    ) -> Result<(), StoreError> {
        if self.backend == Backend::Postgres {
            // Serialises writers so log ids commit in order (see the migration).
            sqlx::query("LOCK TABLE revocation_log IN EXCLUSIVE MODE")
                .execute(&mut *conn)
                .await?;
        }
        sqlx::query(
            "INSERT INTO revocation_log (kind, value, at, expires_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(entry.kind.as_str())
        .bind(&entry.value)
        .bind(entry.at.as_secs())
        .bind(entry.expires_at.as_secs())
        .execute(&mut *conn)
        .await?;
        Ok(())
    }
}

fn corrupt(what: &'static str) -> impl FnOnce(InvalidInput) -> StoreError {
    move |e| StoreError::Corrupt(format!("{what}: {e}"))
}

fn scopes(joined: &str) -> Result<ScopeSet, StoreError> {
    ScopeSet::parse_joined(joined).map_err(corrupt("scopes"))
}

fn audiences(joined: &str) -> Result<Vec<Audience>, StoreError> {
    tessera_token::split_scopes(joined)
        .map(|a| Audience::parse(a).map_err(corrupt("audiences")))
        .collect()
}

fn join_audiences(audiences: &[Audience]) -> String {
    let items: Vec<&str> = audiences.iter().map(Audience::as_str).collect();
    items.join(" ")
}

fn secret_hash(bytes: &[u8]) -> Result<SecretHash, StoreError> {
    SecretHash::from_stored(bytes).ok_or_else(|| StoreError::Corrupt("secret hash".into()))
}

#[derive(FromRow)]
struct UserRow {
    id: String,
    username: String,
    password_hash: String,
    scopes: String,
    audiences: String,
    disabled_at: Option<i64>,
}

impl TryFrom<UserRow> for UserRecord {
    type Error = StoreError;

    fn try_from(row: UserRow) -> Result<Self, StoreError> {
        Ok(Self {
            username: Username::parse(&row.username).map_err(corrupt("username"))?,
            id: row.id,
            password_hash: row.password_hash,
            scopes: scopes(&row.scopes)?,
            audiences: audiences(&row.audiences)?,
            disabled: row.disabled_at.is_some(),
        })
    }
}

#[derive(FromRow)]
struct ClientRow {
    id: String,
    secret_hash: Vec<u8>,
    scopes: String,
    audiences: String,
    disabled_at: Option<i64>,
}

impl TryFrom<ClientRow> for ClientRecord {
    type Error = StoreError;

    fn try_from(row: ClientRow) -> Result<Self, StoreError> {
        Ok(Self {
            id: ClientId::parse(&row.id).map_err(corrupt("client id"))?,
            secret_hash: secret_hash(&row.secret_hash)?,
            scopes: scopes(&row.scopes)?,
            audiences: audiences(&row.audiences)?,
            disabled: row.disabled_at.is_some(),
        })
    }
}

#[derive(FromRow)]
struct RefreshTokenRow {
    sid: String,
    scopes: String,
    issued_at: i64,
    expires_at: i64,
    spent_at: Option<i64>,
    user_id: String,
    audience: String,
    revoked_at: Option<i64>,
    username: String,
}

impl TryFrom<RefreshTokenRow> for RefreshTokenRecord {
    type Error = StoreError;

    fn try_from(row: RefreshTokenRow) -> Result<Self, StoreError> {
        Ok(Self {
            username: Username::parse(&row.username).map_err(corrupt("username"))?,
            audience: Audience::parse(&row.audience).map_err(corrupt("audience"))?,
            scopes: scopes(&row.scopes)?,
            issued_at: UnixTime::from_secs(row.issued_at),
            expires_at: UnixTime::from_secs(row.expires_at),
            state: RefreshTokenState::from_stored(
                row.spent_at.map(UnixTime::from_secs),
                row.revoked_at.is_some(),
            ),
            sid: row.sid,
            user_id: row.user_id,
        })
    }
}

#[derive(FromRow)]
struct RevocationRow {
    id: i64,
    kind: String,
    value: String,
    at: i64,
    expires_at: i64,
}

impl TryFrom<RevocationRow> for (i64, Revocation) {
    type Error = StoreError;

    fn try_from(row: RevocationRow) -> Result<Self, StoreError> {
        let entry = Revocation {
            kind: RevocationKind::parse(&row.kind).map_err(corrupt("revocation kind"))?,
            value: row.value,
            at: UnixTime::from_secs(row.at),
            expires_at: UnixTime::from_secs(row.expires_at),
        };
        Ok((row.id, entry))
    }
}

#[derive(FromRow)]
struct KeyRow {
    kid: String,
    alg: String,
    public_jwk: String,
    private_key: Vec<u8>,
    created_at: i64,
    activates_at: i64,
}

impl From<KeyRow> for StoredKey {
    fn from(row: KeyRow) -> Self {
        Self {
            kid: row.kid,
            alg: row.alg,
            public_jwk: row.public_jwk,
            encrypted_private_key: row.private_key,
            created_at: UnixTime::from_secs(row.created_at),
            activates_at: UnixTime::from_secs(row.activates_at),
        }
    }
}

#[async_trait]
impl Store for SqlStore {
    #[tracing::instrument(name = "db.ping", skip_all)]
    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    #[tracing::instrument(name = "db.users.insert", skip_all)]
    async fn insert_user(&self, user: &UserRecord, now: UnixTime) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO users (id, username, password_hash, scopes, audiences, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&user.id)
        .bind(user.username.as_str())
        .bind(&user.password_hash)
        .bind(user.scopes.joined())
        .bind(join_audiences(&user.audiences))
        .bind(now.as_secs())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    #[tracing::instrument(name = "db.users.find", skip_all)]
    async fn find_user(&self, username: &Username) -> Result<Option<UserRecord>, StoreError> {
        sqlx::query_as::<_, UserRow>(
            "SELECT id, username, password_hash, scopes, audiences, disabled_at \
             FROM users WHERE username = $1",
        )
        .bind(username.as_str())
        .fetch_optional(&self.pool)
        .await?
        .map(UserRecord::try_from)
        .transpose()
    }

    #[tracing::instrument(name = "db.users.disable", skip_all)]
    async fn disable_user(
        &self,
        username: &Username,
        at: UnixTime,
        expires_at: UnixTime,
    ) -> Result<Option<String>, StoreError> {
        let mut tx = self.pool.begin().await?;
        // A write first, so SQLite takes its write lock at once instead of
        // failing to upgrade a read snapshot under contention.
        let Some(id) = sqlx::query_scalar::<_, String>(
            "UPDATE users SET disabled_at = COALESCE(disabled_at, $2) WHERE username = $1 RETURNING id",
        )
        .bind(username.as_str())
        .bind(at.as_secs())
        .fetch_optional(&mut *tx)
        .await?
        else {
            return Ok(None);
        };
        sqlx::query(
            "UPDATE sessions SET revoked_at = $2 WHERE user_id = $1 AND revoked_at IS NULL",
        )
        .bind(&id)
        .bind(at.as_secs())
        .execute(&mut *tx)
        .await?;
        let entry = Revocation {
            kind: RevocationKind::Subject,
            value: id.clone(),
            at,
            expires_at,
        };
        self.insert_revocation(&mut tx, &entry).await?;
        tx.commit().await?;
        Ok(Some(id))
    }

    #[tracing::instrument(name = "db.clients.insert", skip_all)]
    async fn insert_client(&self, client: &ClientRecord, now: UnixTime) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO clients (id, secret_hash, scopes, audiences, created_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(client.id.as_str())
        .bind(client.secret_hash.as_bytes().to_vec())
        .bind(client.scopes.joined())
        .bind(join_audiences(&client.audiences))
        .bind(now.as_secs())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    #[tracing::instrument(name = "db.clients.find", skip_all)]
    async fn find_client(&self, id: &ClientId) -> Result<Option<ClientRecord>, StoreError> {
        sqlx::query_as::<_, ClientRow>(
            "SELECT id, secret_hash, scopes, audiences, disabled_at FROM clients WHERE id = $1",
        )
        .bind(id.as_str())
        .fetch_optional(&self.pool)
        .await?
        .map(ClientRecord::try_from)
        .transpose()
    }

    #[tracing::instrument(name = "db.sessions.create", skip_all)]
    async fn create_session(
        &self,
        session: &NewSession,
        token: &NewRefreshToken,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO sessions (sid, user_id, audience, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(&session.sid)
        .bind(&session.user_id)
        .bind(session.audience.as_str())
        .bind(session.created_at.as_secs())
        .execute(&mut *tx)
        .await?;
        insert_refresh_token(&mut tx, &session.sid, token).await?;
        tx.commit().await?;
        Ok(())
    }

    #[tracing::instrument(name = "db.refresh_tokens.find", skip_all)]
    async fn find_refresh_token(
        &self,
        hash: &SecretHash,
    ) -> Result<Option<RefreshTokenRecord>, StoreError> {
        sqlx::query_as::<_, RefreshTokenRow>(
            "SELECT t.sid, t.scopes, t.issued_at, t.expires_at, t.spent_at, \
                    s.user_id, s.audience, s.revoked_at, u.username \
             FROM refresh_tokens t \
             JOIN sessions s ON s.sid = t.sid \
             JOIN users u ON u.id = s.user_id \
             WHERE t.hash = $1",
        )
        .bind(hash.as_bytes().to_vec())
        .fetch_optional(&self.pool)
        .await?
        .map(RefreshTokenRecord::try_from)
        .transpose()
    }

    #[tracing::instrument(name = "db.refresh_tokens.spend", skip_all)]
    async fn spend_refresh_token(
        &self,
        presented: &SecretHash,
        successor: &NewRefreshToken,
        now: UnixTime,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        // The whole race is decided here: concurrent exchanges of one token
        // queue on its row, and only the first still finds `spent_at IS NULL`.
        let spent = sqlx::query_scalar::<_, String>(
            "UPDATE refresh_tokens SET spent_at = $2 \
             WHERE hash = $1 AND spent_at IS NULL AND expires_at > $2 \
               AND EXISTS (SELECT 1 FROM sessions s \
                           WHERE s.sid = refresh_tokens.sid AND s.revoked_at IS NULL) \
             RETURNING sid",
        )
        .bind(presented.as_bytes().to_vec())
        .bind(now.as_secs())
        .fetch_optional(&mut *tx)
        .await?;
        let Some(sid) = spent else {
            return Ok(false);
        };
        insert_refresh_token(&mut tx, &sid, successor).await?;
        tx.commit().await?;
        Ok(true)
    }

    #[tracing::instrument(name = "db.refresh_tokens.add", skip_all)]
    async fn add_refresh_token(
        &self,
        sid: &str,
        token: &NewRefreshToken,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "INSERT INTO refresh_tokens (hash, sid, scopes, issued_at, expires_at) \
             SELECT $1, $2, $3, $4, $5 \
             WHERE EXISTS (SELECT 1 FROM sessions WHERE sid = $2 AND revoked_at IS NULL)",
        )
        .bind(token.hash.as_bytes().to_vec())
        .bind(sid)
        .bind(token.scopes.joined())
        .bind(token.issued_at.as_secs())
        .bind(token.expires_at.as_secs())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    #[tracing::instrument(name = "db.sessions.revoke", skip_all)]
    async fn revoke_session(&self, entry: &Revocation) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let revoked = sqlx::query(
            "UPDATE sessions SET revoked_at = $2 WHERE sid = $1 AND revoked_at IS NULL",
        )
        .bind(&entry.value)
        .bind(entry.at.as_secs())
        .execute(&mut *tx)
        .await?;
        if revoked.rows_affected() == 0 {
            return Ok(false);
        }
        self.insert_revocation(&mut tx, entry).await?;
        tx.commit().await?;
        Ok(true)
    }

    #[tracing::instrument(name = "db.revocation_log.append", skip_all)]
    async fn append_revocation(&self, entry: &Revocation) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        self.insert_revocation(&mut tx, entry).await?;
        tx.commit().await?;
        Ok(())
    }

    #[tracing::instrument(name = "db.revocation_log.after", skip_all)]
    async fn revocations_after(
        &self,
        cursor: i64,
        now: UnixTime,
        limit: i64,
    ) -> Result<Vec<(i64, Revocation)>, StoreError> {
        sqlx::query_as::<_, RevocationRow>(
            "SELECT id, kind, value, at, expires_at FROM revocation_log \
             WHERE id > $1 AND expires_at > $2 ORDER BY id LIMIT $3",
        )
        .bind(cursor)
        .bind(now.as_secs())
        .bind(limit)
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(TryFrom::try_from)
        .collect()
    }

    #[tracing::instrument(name = "db.signing_keys.insert", skip_all)]
    async fn insert_signing_key(&self, key: &StoredKey) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO signing_keys (kid, alg, public_jwk, private_key, created_at, activates_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&key.kid)
        .bind(&key.alg)
        .bind(&key.public_jwk)
        .bind(key.encrypted_private_key.clone())
        .bind(key.created_at.as_secs())
        .bind(key.activates_at.as_secs())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    #[tracing::instrument(name = "db.signing_keys.all", skip_all)]
    async fn signing_keys(&self) -> Result<Vec<StoredKey>, StoreError> {
        Ok(sqlx::query_as::<_, KeyRow>(
            "SELECT kid, alg, public_jwk, private_key, created_at, activates_at \
             FROM signing_keys ORDER BY activates_at, kid",
        )
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(StoredKey::from)
        .collect())
    }

    async fn change_feed(&self) -> Result<Option<Box<dyn ChangeFeed>>, StoreError> {
        match self.backend {
            Backend::Postgres => {
                let feed = postgres::listen(self.url.expose_secret()).await?;
                Ok(Some(Box::new(feed) as Box<dyn ChangeFeed>))
            }
            Backend::Sqlite => Ok(None),
        }
    }
}

async fn insert_refresh_token(
    conn: &mut AnyConnection,
    sid: &str,
    token: &NewRefreshToken,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO refresh_tokens (hash, sid, scopes, issued_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(token.hash.as_bytes().to_vec())
    .bind(sid)
    .bind(token.scopes.joined())
    .bind(token.issued_at.as_secs())
    .bind(token.expires_at.as_secs())
    .execute(conn)
    .await?;
    Ok(())
}
