//! The one implementation of [`Store`], over sqlx's `Any` driver: the SQL is
//! portable between PostgreSQL and SQLite (`$n` placeholders, `RETURNING`,
//! integer times, no booleans), and the few differences are asked of
//! [`Backend`].

use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};
use sqlx::{AnyConnection, AnyPool, Row, any::AnyRow, migrate::Migrator};

use super::{
    Backend, Change, ChangeFeed, ClientRecord, NewRefreshToken, NewSession, RefreshTokenRecord,
    Revocation, RevocationKind, Store, StoreError, StoredKey, UserRecord, postgres,
};
use crate::{
    clock::UnixTime,
    domain::{Audience, ClientId, ScopeSet, SecretHash, Username},
};

/// A connection pool and what is needed to speak its backend's dialect.
pub struct SqlStore {
    pool: AnyPool,
    backend: Backend,
    migrator: Migrator,
    /// Kept for the PostgreSQL LISTEN connection, which is not pooled.
    url: SecretString,
}

impl SqlStore {
    pub(super) fn new(pool: AnyPool, backend: Backend, migrator: Migrator, url: &str) -> Self {
        Self {
            pool,
            backend,
            migrator,
            url: SecretString::from(url),
        }
    }

    /// Applies pending migrations.
    pub(super) async fn migrate(&self) -> Result<(), StoreError> {
        self.migrator
            .run(&self.pool)
            .await
            .map_err(StoreError::Migrate)
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

fn corrupt(what: &str) -> impl FnOnce(crate::domain::InvalidInput) -> StoreError + '_ {
    move |e| StoreError::Corrupt(format!("{what}: {e}"))
}

fn scopes(row: &AnyRow, col: &str) -> Result<ScopeSet, StoreError> {
    ScopeSet::parse_joined(&row.try_get::<String, _>(col)?).map_err(corrupt(col))
}

fn audiences(row: &AnyRow) -> Result<Vec<Audience>, StoreError> {
    row.try_get::<String, _>("audiences")?
        .split(' ')
        .filter(|s| !s.is_empty())
        .map(|s| Audience::parse(s).map_err(corrupt("audiences")))
        .collect()
}

fn join_audiences(audiences: &[Audience]) -> String {
    let items: Vec<&str> = audiences.iter().map(Audience::as_str).collect();
    items.join(" ")
}

fn time(row: &AnyRow, col: &str) -> Result<UnixTime, StoreError> {
    Ok(UnixTime::from_secs(row.try_get::<i64, _>(col)?))
}

fn optional_time(row: &AnyRow, col: &str) -> Result<Option<UnixTime>, StoreError> {
    Ok(row.try_get::<Option<i64>, _>(col)?.map(UnixTime::from_secs))
}

#[async_trait]
impl Store for SqlStore {
    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

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

    async fn find_user(&self, username: &Username) -> Result<Option<UserRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT id, password_hash, scopes, audiences, disabled_at FROM users WHERE username = $1",
        )
        .bind(username.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            Ok(UserRecord {
                id: row.try_get("id")?,
                username: username.clone(),
                password_hash: row.try_get("password_hash")?,
                scopes: scopes(&row, "scopes")?,
                audiences: audiences(&row)?,
                disabled: optional_time(&row, "disabled_at")?.is_some(),
            })
        })
        .transpose()
    }

    async fn disable_user(
        &self,
        username: &Username,
        at: UnixTime,
        expires_at: UnixTime,
    ) -> Result<Option<String>, StoreError> {
        let mut tx = self.pool.begin().await?;
        // A write first, so SQLite takes its write lock at once instead of
        // failing to upgrade a read snapshot under contention.
        let Some(row) = sqlx::query(
            "UPDATE users SET disabled_at = COALESCE(disabled_at, $2) WHERE username = $1 RETURNING id",
        )
        .bind(username.as_str())
        .bind(at.as_secs())
        .fetch_optional(&mut *tx)
        .await?
        else {
            return Ok(None);
        };
        let id: String = row.try_get("id")?;
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

    async fn find_client(&self, id: &ClientId) -> Result<Option<ClientRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT secret_hash, scopes, audiences, disabled_at FROM clients WHERE id = $1",
        )
        .bind(id.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            let hash: Vec<u8> = row.try_get("secret_hash")?;
            Ok(ClientRecord {
                id: id.clone(),
                secret_hash: SecretHash::from_stored(&hash)
                    .ok_or_else(|| StoreError::Corrupt("client secret hash".into()))?,
                scopes: scopes(&row, "scopes")?,
                audiences: audiences(&row)?,
                disabled: optional_time(&row, "disabled_at")?.is_some(),
            })
        })
        .transpose()
    }

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

    async fn find_refresh_token(
        &self,
        hash: &SecretHash,
    ) -> Result<Option<RefreshTokenRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT t.sid, t.scopes, t.issued_at, t.expires_at, t.spent_at, \
                    s.user_id, s.audience, s.revoked_at, u.username \
             FROM refresh_tokens t \
             JOIN sessions s ON s.sid = t.sid \
             JOIN users u ON u.id = s.user_id \
             WHERE t.hash = $1",
        )
        .bind(hash.as_bytes().to_vec())
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            Ok(RefreshTokenRecord {
                sid: row.try_get("sid")?,
                user_id: row.try_get("user_id")?,
                username: row.try_get("username")?,
                audience: Audience::parse(&row.try_get::<String, _>("audience")?)
                    .map_err(corrupt("audience"))?,
                scopes: scopes(&row, "scopes")?,
                issued_at: time(&row, "issued_at")?,
                expires_at: time(&row, "expires_at")?,
                spent_at: optional_time(&row, "spent_at")?,
                session_revoked: optional_time(&row, "revoked_at")?.is_some(),
            })
        })
        .transpose()
    }

    async fn spend_refresh_token(
        &self,
        presented: &SecretHash,
        successor: &NewRefreshToken,
        now: UnixTime,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        // The whole race is decided here: concurrent exchanges of one token
        // queue on its row, and only the first still finds `spent_at IS NULL`.
        let spent = sqlx::query(
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
        let Some(row) = spent else {
            return Ok(false);
        };
        let sid: String = row.try_get("sid")?;
        insert_refresh_token(&mut tx, &sid, successor).await?;
        tx.commit().await?;
        Ok(true)
    }

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

    async fn append_revocation(&self, entry: &Revocation) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        self.insert_revocation(&mut tx, entry).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn revocations_after(
        &self,
        cursor: i64,
        now: UnixTime,
        limit: i64,
    ) -> Result<Vec<(i64, Revocation)>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, kind, value, at, expires_at FROM revocation_log \
             WHERE id > $1 AND expires_at > $2 ORDER BY id LIMIT $3",
        )
        .bind(cursor)
        .bind(now.as_secs())
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let entry = Revocation {
                    kind: RevocationKind::parse(&row.try_get::<String, _>("kind")?)?,
                    value: row.try_get("value")?,
                    at: time(row, "at")?,
                    expires_at: time(row, "expires_at")?,
                };
                Ok((row.try_get("id")?, entry))
            })
            .collect()
    }

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

    async fn signing_keys(&self) -> Result<Vec<StoredKey>, StoreError> {
        let rows = sqlx::query(
            "SELECT kid, alg, public_jwk, private_key, created_at, activates_at \
             FROM signing_keys ORDER BY activates_at, kid",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(StoredKey {
                    kid: row.try_get("kid")?,
                    alg: row.try_get("alg")?,
                    public_jwk: row.try_get("public_jwk")?,
                    encrypted_private_key: row.try_get("private_key")?,
                    created_at: time(row, "created_at")?,
                    activates_at: time(row, "activates_at")?,
                })
            })
            .collect()
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

/// Turns a push notification into a [`Change`].
pub(super) fn change_for_channel(channel: &str) -> Change {
    match channel {
        postgres::REVOCATIONS_CHANNEL => Change::Revocations,
        postgres::KEYS_CHANNEL => Change::Keys,
        _ => Change::Unknown,
    }
}
