//! The one implementation of [`Store`], over sqlx's `Any` driver: the SQL is
//! portable between PostgreSQL and SQLite (`$n` placeholders, `RETURNING`,
//! integer times, no booleans), and the few differences are asked of
//! [`Backend`]. Rows are read into private `*Row` structs and turned into
//! records there, so a bad stored value is [`StoreError::Corrupt`], never a
//! panic.

use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};
use sqlx::{Acquire, AnyConnection, AnyPool, FromRow};

use super::{
    Backend, ChangeFeed, ClientChange, ClientCredential, ClientRecord, Exchange, ExchangeRequest,
    NewRefreshToken, NewSession, Pruned, RefreshTokenRecord, Store, StoreError, StoredKey,
    UserChange, UserRecord,
    batch::{Batcher, Rows, SendBatch, rows_by_writer},
    group_commit::{GroupCommit, Param, Together},
    postgres, sqlite,
};
use crate::model::{
    Audience, ClientId, InvalidInput, Presentation, RefreshTokenState, Revocation, RevocationKind,
    ScopeSet, SecretHash, UnixTime, Username, parse_sha256, random_id,
};

/// The database's clock in milliseconds, per backend.
fn now_ms_sql(backend: Backend) -> &'static str {
    match backend {
        Backend::Postgres => "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)",
        Backend::Sqlite => "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)",
    }
}

/// A connection pool and what is needed to speak its backend's dialect.
pub(super) struct SqlStore {
    pool: AnyPool,
    backend: Backend,
    /// SQLite's writes share transactions (see `group_commit`).
    group: Option<GroupCommit>,
    /// PostgreSQL's common rotations, sent together.
    rotations: Option<Batcher<Rotation>>,
    /// Kept for the PostgreSQL LISTEN connection, which is not pooled.
    url: SecretString,
}

impl SqlStore {
    pub(super) fn new(pool: AnyPool, backend: Backend, url: &str) -> Self {
        Self {
            rotations: (backend == Backend::Postgres).then(|| rotation_batcher(pool.clone())),
            group: (backend == Backend::Sqlite).then(|| GroupCommit::new(pool.clone())),
            pool,
            backend,
            url: SecretString::from(url),
        }
    }

    /// Runs `work` in a transaction and commits it. On any error the
    /// connection is closed instead of going back to the pool: after a
    /// failed statement (SQLite rolls back by itself on a full disk, and the
    /// ROLLBACK that follows fails) sqlx's idea of the connection's
    /// transaction state can be wrong, and a later "commit" on it would
    /// commit nothing. A write is reported done only after its commit.
    async fn write<T>(
        &self,
        work: impl AsyncFnOnce(&mut AnyConnection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        if let Some(group) = &self.group {
            return group.write(&self.pool, work).await;
        }
        let mut conn = self.pool.acquire().await?;
        let result = async {
            let mut tx = conn.begin().await?;
            let value = work(&mut tx).await?;
            tx.commit().await?;
            Ok(value)
        }
        .await;
        if result.is_err() {
            conn.close_on_drop();
        }
        result
    }

    /// Disables (or with `delete`, deletes) a client and revokes every
    /// token it holds, in one transaction. False when there is no such
    /// client.
    /// Inside the caller's transaction: revokes every session of subject
    /// `sub` (a user's id; a client has none) and appends a revocation for
    /// each of those sessions and for the subject.
    async fn revoke_subject_in(
        &self,
        conn: &mut AnyConnection,
        sub: &str,
        at: UnixTime,
        expires_at: UnixTime,
    ) -> Result<(), StoreError> {
        self.revoke_sessions_in(conn, sub, at, expires_at).await?;
        let entry = Revocation {
            kind: RevocationKind::Subject,
            value: sub.to_owned(),
            at,
            expires_at,
        };
        self.insert_revocation(conn, &entry).await
    }

    /// Inside the caller's transaction: revokes every session of user `sub`
    /// and appends a revocation for each. Every token of a user belongs to
    /// a session, so this ends them all, without the subject entry that
    /// would also deny a token issued after it in the same second.
    async fn revoke_sessions_in(
        &self,
        conn: &mut AnyConnection,
        sub: &str,
        at: UnixTime,
        expires_at: UnixTime,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE sessions SET revoked_at = $2 WHERE user_id = $1 AND revoked_at IS NULL",
        )
        .bind(sub)
        .bind(at.as_secs())
        .execute(&mut *conn)
        .await?;
        // Each session's access tokens die by `sid`, whenever they were
        // minted: a login or refresh that raced this got its session revoked
        // here, and its token denied with it.
        self.lock_log(conn).await?;
        sqlx::query(
            "INSERT INTO revocation_log (kind, value, at, expires_at) \
             SELECT $3, sid, $2, $4 FROM sessions WHERE user_id = $1 AND revoked_at = $2",
        )
        .bind(sub)
        .bind(at.as_secs())
        .bind(RevocationKind::Session.as_str())
        .bind(expires_at.as_secs())
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    /// Serialises revocation log writers so log ids become visible in
    /// commit order (see the migration); SQLite has one writer anyway.
    async fn lock_log(&self, conn: &mut AnyConnection) -> Result<(), StoreError> {
        if self.backend == Backend::Postgres {
            sqlx::query("LOCK TABLE revocation_log IN EXCLUSIVE MODE")
                .execute(&mut *conn)
                .await?;
        }
        Ok(())
    }

    /// Appends to the revocation log inside the caller's transaction.
    async fn insert_revocation(
        &self,
        conn: &mut AnyConnection,
        entry: &Revocation,
    ) -> Result<(), StoreError> {
        self.lock_log(conn).await?;
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

/// The prune's deletions, each of at most `$2` rows older than `$1`: the
/// expired revocations, the expired refresh tokens, then the sessions
/// created before `$1` that no refresh token is left in. Each starts from an
/// index on its age (`*_expires_at`, `sessions_created_at`), so a batch
/// reads what it deletes, not the table.
pub(super) const PRUNE: [&str; 3] = [
    "DELETE FROM revocation_log WHERE id IN \
     (SELECT id FROM revocation_log WHERE expires_at < $1 LIMIT $2)",
    "DELETE FROM refresh_tokens WHERE hash IN \
     (SELECT hash FROM refresh_tokens WHERE expires_at < $1 LIMIT $2)",
    "DELETE FROM sessions WHERE sid IN \
     (SELECT s.sid FROM sessions s WHERE s.created_at < $1 \
      AND NOT EXISTS (SELECT 1 FROM refresh_tokens t WHERE t.sid = s.sid) LIMIT $2)",
];

/// SQLite's common case (that of `rotate_sent_together`), sent together
/// with other writers' (`GroupCommit::together`): the token is spent only
/// when it is active, unexpired, of a live session and an enabled user,
/// and covers the scopes requested; its successor is stored only when it
/// was spent (`changes()` counts the statement before). The record read
/// back is the spent token's (the caller uses its session, user and
/// scopes). `None` when it is not that case, with nothing written, or
/// when the batch failed: the full exchange follows.
async fn rotate_together(
    group: &GroupCommit,
    request: &ExchangeRequest<'_>,
) -> Result<Option<RefreshTokenRecord>, StoreError> {
    fn sql(writer: usize, base: usize) -> String {
        let [presented, now, requested, successor, issued_at, expires_at] =
            std::array::from_fn(|i| format!("${}", base + i + 1));
        format!(
            "UPDATE refresh_tokens SET spent_at_ms = {now_ms}, successor = {successor} \
             WHERE hash = {presented} AND spent_at_ms IS NULL AND superseded_at IS NULL \
               AND expires_at > {now} \
               AND EXISTS (SELECT 1 FROM sessions s JOIN users u ON u.id = s.user_id \
                           WHERE s.sid = refresh_tokens.sid \
                             AND s.revoked_at IS NULL AND u.disabled_at IS NULL) \
               AND NOT EXISTS (SELECT 1 FROM json_each({requested}) r \
                               WHERE instr(' ' || scopes || ' ', ' ' || r.value || ' ') = 0); \
             INSERT INTO refresh_tokens (hash, sid, scopes, issued_at, expires_at) \
             SELECT {successor}, sid, scopes, {issued_at}, {expires_at} FROM refresh_tokens \
             WHERE hash = {presented} AND changes() = 1; \
             SELECT {writer} AS writer, {REFRESH_TOKEN_COLUMNS} {from} AND changes() = 1",
            now_ms = now_ms_sql(Backend::Sqlite),
            from = REFRESH_TOKEN_FROM.replace("$1", &presented),
        )
    }
    let requested = serde_json::Value::from(request.requested_scopes.iter().collect::<Vec<_>>());
    let job = Together {
        sql,
        params: vec![
            Param::Bytes(request.presented.as_bytes().to_vec()),
            Param::Int(request.now.as_secs()),
            Param::Text(requested.to_string()),
            Param::Bytes(request.successor.hash.as_bytes().to_vec()),
            Param::Int(request.successor.issued_at.as_secs()),
            Param::Int(request.successor.expires_at.as_secs()),
        ],
    };
    let Some(rows) = group.together(job).await else {
        return Ok(None);
    };
    record_of(&rows)
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
    roles: String,
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
            roles: scopes(&row.roles)?,
            audiences: audiences(&row.audiences)?,
            disabled: row.disabled_at.is_some(),
        })
    }
}

#[derive(FromRow)]
struct ClientRow {
    id: String,
    secret_hash: Vec<u8>,
    previous_secret_hash: Option<Vec<u8>>,
    previous_secret_expires_at: Option<i64>,
    roles: String,
    tls_subject: Option<String>,
    tls_cert_sha256: Option<String>,
    scopes: String,
    audiences: String,
    disabled_at: Option<i64>,
}

impl TryFrom<ClientRow> for ClientRecord {
    type Error = StoreError;

    fn try_from(row: ClientRow) -> Result<Self, StoreError> {
        let credential = match (row.tls_subject, row.tls_cert_sha256) {
            (Some(subject), _) => ClientCredential::TlsSubject(subject),
            (None, Some(sha256)) => ClientCredential::TlsCertificate(
                parse_sha256(&sha256).map_err(corrupt("client certificate thumbprint"))?,
            ),
            (None, None) => ClientCredential::Secret(secret_hash(&row.secret_hash)?),
        };
        Ok(Self {
            id: ClientId::parse(&row.id).map_err(corrupt("client id"))?,
            credential,
            scopes: scopes(&row.scopes)?,
            roles: scopes(&row.roles)?,
            audiences: audiences(&row.audiences)?,
            disabled: row.disabled_at.is_some(),
            previous_secret: match (row.previous_secret_hash, row.previous_secret_expires_at) {
                (Some(hash), Some(until)) => {
                    Some((secret_hash(&hash)?, UnixTime::from_secs(until)))
                }
                _ => None,
            },
        })
    }
}

/// PostgreSQL's common case: an active, unexpired token of a live session
/// and an enabled user, whose scopes cover those requested, is spent and its
/// successor stored, in one statement with every other refresh waiting (one
/// round trip and one commit for them all; at c=64, 4.0k -> 7.0k refreshes/s).
/// `None` when it is not that case: the caller then runs the full exchange,
/// which judges replays, theft and refusals (a concurrent exchange of the
/// same token waits on the row lock here, then finds it spent and is left to
/// the full exchange too).
async fn rotate_sent_together(
    rotations: &Batcher<Rotation>,
    request: &ExchangeRequest<'_>,
) -> Result<Option<RefreshTokenRecord>, StoreError> {
    let job = Rotation {
        presented: request.presented.as_bytes().to_vec(),
        now: request.now.as_secs(),
        requested: request.requested_scopes.joined(),
        successor: request.successor.hash.as_bytes().to_vec(),
        issued_at: request.successor.issued_at.as_secs(),
        expires_at: request.successor.expires_at.as_secs(),
    };
    let Some(rows) = rotations.submit(job).await else {
        return Ok(None);
    };
    record_of(&rows)
}

/// The refresh token record in a writer's rows of a batch, if any.
fn record_of(rows: &[sqlx::any::AnyRow]) -> Result<Option<RefreshTokenRecord>, StoreError> {
    rows.first()
        .map(|row| RefreshTokenRow::from_row(row).map_err(StoreError::from))
        .transpose()?
        .map(RefreshTokenRecord::try_from)
        .transpose()
}

/// One rotation of a batch sent together on PostgreSQL.
struct Rotation {
    presented: Vec<u8>,
    now: i64,
    requested: String,
    successor: Vec<u8>,
    issued_at: i64,
    expires_at: i64,
}

/// Rotations per statement at most.
const MAX_ROTATIONS: usize = 64;

fn rotation_batcher(pool: AnyPool) -> Batcher<Rotation> {
    let send: SendBatch<Rotation> = Box::new(move |jobs| {
        let pool = pool.clone();
        Box::pin(async move { rotate_batch(&pool, jobs).await })
    });
    Batcher::new(send, MAX_ROTATIONS, false)
}

async fn rotate_batch(pool: &AnyPool, jobs: Vec<Rotation>) -> Result<Rows, StoreError> {
    use base64::Engine as _;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let batch: Vec<serde_json::Value> = jobs
        .iter()
        .enumerate()
        .map(|(writer, j)| {
            serde_json::json!({
                "writer": writer,
                "presented": b64(&j.presented),
                "now": j.now,
                "requested": j.requested,
                "successor": b64(&j.successor),
                "issued_at": j.issued_at,
                "expires_at": j.expires_at,
            })
        })
        .collect();
    let rows = sqlx::query(&BATCH_ROTATION)
        .bind(serde_json::Value::Array(batch).to_string())
        .fetch_all(pool)
        .await?;
    rows_by_writer(rows, jobs.len())
}

/// The rotation of `rotate_sent_together` for a batch, given as a JSON
/// array in $1; each row names its job in `writer`. A token presented twice
/// in one batch is rotated for the first of its writers only (the others
/// find it spent, on the full exchange). Every read starts from a key, per
/// job (the lateral subquery, fenced by its LIMIT, is planned as for one
/// token), and tokens are locked in the order of their hashes, so two
/// replicas' batches cannot deadlock.
pub(super) static BATCH_ROTATION: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "WITH req AS MATERIALIZED ( \
             SELECT DISTINCT ON (presented) writer, decode(presented, 'base64') AS presented, \
                    now, requested, decode(successor, 'base64') AS next, \
                    issued_at AS next_issued_at, expires_at AS next_expires_at \
             FROM jsonb_to_recordset($1::jsonb) AS r(writer int, presented text, now bigint, \
                  requested text, successor text, issued_at bigint, expires_at bigint) \
             ORDER BY presented, writer \
         ), cur AS ( \
             SELECT req.writer, req.next, req.next_issued_at, req.next_expires_at, x.* \
             FROM req CROSS JOIN LATERAL ( \
                 SELECT t.hash AS presented, {REFRESH_TOKEN_COLUMNS} {from} \
                 AND t.spent_at_ms IS NULL AND t.superseded_at IS NULL \
                 AND t.expires_at > req.now AND s.revoked_at IS NULL AND u.disabled_at IS NULL \
                 AND string_to_array(t.scopes, ' ') @> string_to_array(req.requested, ' ') \
                 LIMIT 1 FOR UPDATE OF t \
             ) x \
         ), spent AS ( \
             UPDATE refresh_tokens r SET spent_at_ms = {now_ms}, \
                    successor = (SELECT cur.next FROM cur WHERE cur.presented = r.hash) \
             WHERE r.hash = ANY (ARRAY(SELECT presented FROM cur)) RETURNING r.hash \
         ), born AS ( \
             INSERT INTO refresh_tokens (hash, sid, scopes, issued_at, expires_at) \
             SELECT cur.next, cur.sid, cur.scopes, cur.next_issued_at, cur.next_expires_at \
             FROM cur JOIN spent ON spent.hash = cur.presented RETURNING hash \
         ) \
         SELECT cur.* FROM cur JOIN born ON born.hash = cur.next",
        from = REFRESH_TOKEN_FROM.replace("$1", "req.presented"),
        now_ms = now_ms_sql(Backend::Postgres)
    )
});

/// What a [`UserRow`] reads.
const USER_COLUMNS: &str = "id, username, password_hash, scopes, audiences, roles, disabled_at";
/// What a [`ClientRow`] reads.
const CLIENT_COLUMNS: &str = "id, secret_hash, previous_secret_hash, previous_secret_expires_at, \
     roles, tls_subject, tls_cert_sha256, scopes, audiences, disabled_at";
/// A refresh token's columns, with its session, user and current successor.
pub(super) const REFRESH_TOKEN_COLUMNS: &str = "t.sid, t.scopes, t.issued_at, t.expires_at, t.spent_at_ms, \
     t.replays, t.superseded_at, t.successor, n.spent_at_ms AS successor_spent_at_ms, \
     s.user_id, s.audience, s.revoked_at, u.username, u.disabled_at, u.roles";
pub(super) const REFRESH_TOKEN_FROM: &str = "FROM refresh_tokens t \
     JOIN sessions s ON s.sid = t.sid \
     JOIN users u ON u.id = s.user_id \
     LEFT JOIN refresh_tokens n ON n.hash = t.successor \
     WHERE t.hash = $1";

#[derive(FromRow)]
struct RefreshTokenRow {
    sid: String,
    scopes: String,
    issued_at: i64,
    expires_at: i64,
    spent_at_ms: Option<i64>,
    replays: i64,
    superseded_at: Option<i64>,
    successor: Option<Vec<u8>>,
    successor_spent_at_ms: Option<i64>,
    user_id: String,
    audience: String,
    revoked_at: Option<i64>,
    username: String,
    disabled_at: Option<i64>,
    roles: String,
}

impl RefreshTokenRow {
    fn state(&self) -> RefreshTokenState {
        if self.revoked_at.is_some() || self.disabled_at.is_some() {
            RefreshTokenState::Revoked
        } else if self.superseded_at.is_some() {
            RefreshTokenState::Superseded
        } else {
            match self.spent_at_ms {
                None => RefreshTokenState::Active,
                Some(at_ms) => RefreshTokenState::Spent {
                    at_ms,
                    successor_used: self.successor_spent_at_ms.is_some(),
                    replays: u32::try_from(self.replays).unwrap_or(u32::MAX),
                },
            }
        }
    }
}

impl TryFrom<RefreshTokenRow> for RefreshTokenRecord {
    type Error = StoreError;

    fn try_from(row: RefreshTokenRow) -> Result<Self, StoreError> {
        Ok(Self {
            state: row.state(),
            username: Username::parse(&row.username).map_err(corrupt("username"))?,
            audience: Audience::parse(&row.audience).map_err(corrupt("audience"))?,
            scopes: scopes(&row.scopes)?,
            roles: scopes(&row.roles)?,
            issued_at: UnixTime::from_secs(row.issued_at),
            expires_at: UnixTime::from_secs(row.expires_at),
            sid: row.sid,
            user_id: row.user_id,
        })
    }
}

/// A refresh token read for an exchange, with the database's clock.
#[derive(FromRow)]
struct ExchangeRow {
    db_now_ms: i64,
    #[sqlx(flatten)]
    token: RefreshTokenRow,
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
            kind: RevocationKind::parse(&row.kind).map_err(|e| {
                StoreError::Corrupt(format!(
                    "revocation_log row id {}: kind: {e} (fix or delete that row)",
                    row.id
                ))
            })?,
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
            "INSERT INTO users (id, username, password_hash, scopes, audiences, created_at, roles) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&user.id)
        .bind(user.username.as_str())
        .bind(&user.password_hash)
        .bind(user.scopes.joined())
        .bind(join_audiences(&user.audiences))
        .bind(now.as_secs())
        .bind(user.roles.joined())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    #[tracing::instrument(name = "db.users.find", skip_all)]
    async fn find_user(&self, username: &Username) -> Result<Option<UserRecord>, StoreError> {
        sqlx::query_as::<_, UserRow>(&format!(
            "SELECT {USER_COLUMNS} FROM users WHERE username = $1"
        ))
        .bind(username.as_str())
        .fetch_optional(&self.pool)
        .await?
        .map(UserRecord::try_from)
        .transpose()
    }

    #[tracing::instrument(name = "db.users.replace_password_hash", skip_all)]
    async fn replace_password_hash(
        &self,
        user_id: &str,
        old: &str,
        new: &str,
    ) -> Result<bool, StoreError> {
        let done =
            sqlx::query("UPDATE users SET password_hash = $3 WHERE id = $1 AND password_hash = $2")
                .bind(user_id)
                .bind(old)
                .bind(new)
                .execute(&self.pool)
                .await?;
        Ok(done.rows_affected() == 1)
    }

    #[tracing::instrument(name = "db.users.disable", skip_all)]
    async fn disable_user(
        &self,
        username: &Username,
        at: UnixTime,
        expires_at: UnixTime,
    ) -> Result<Option<String>, StoreError> {
        self.write(async |conn| {
            // A write first: it locks the user row (PostgreSQL) or the
            // database (SQLite), so sessions being created wait and then
            // find the user disabled.
            let Some(id) = sqlx::query_scalar::<_, String>(
                "UPDATE users SET disabled_at = COALESCE(disabled_at, $2) WHERE username = $1 \
                 RETURNING id",
            )
            .bind(username.as_str())
            .bind(at.as_secs())
            .fetch_optional(&mut *conn)
            .await?
            else {
                return Ok(None);
            };
            self.revoke_subject_in(conn, &id, at, expires_at).await?;
            Ok(Some(id))
        })
        .await
    }

    #[tracing::instrument(name = "db.clients.insert", skip_all)]
    async fn insert_client(&self, client: &ClientRecord, now: UnixTime) -> Result<(), StoreError> {
        let (secret_hash, tls_subject, tls_cert_sha256) = match &client.credential {
            ClientCredential::Secret(hash) => (hash.clone(), None, None),
            // Nobody knows the secret this is the hash of.
            ClientCredential::TlsSubject(subject) => {
                (SecretHash::of(&random_id()), Some(subject.clone()), None)
            }
            ClientCredential::TlsCertificate(sha256) => (
                SecretHash::of(&random_id()),
                None,
                Some(
                    sha256
                        .iter()
                        .map(|b| format!("{b:02x}"))
                        .collect::<String>(),
                ),
            ),
        };
        sqlx::query(
            "INSERT INTO clients (id, secret_hash, tls_subject, tls_cert_sha256, scopes, audiences, \
             created_at, roles) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(client.id.as_str())
        .bind(secret_hash.as_bytes().to_vec())
        .bind(tls_subject)
        .bind(tls_cert_sha256)
        .bind(client.scopes.joined())
        .bind(join_audiences(&client.audiences))
        .bind(now.as_secs())
        .bind(client.roles.joined())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    #[tracing::instrument(name = "db.clients.find", skip_all)]
    async fn find_client(&self, id: &ClientId) -> Result<Option<ClientRecord>, StoreError> {
        sqlx::query_as::<_, ClientRow>(&format!(
            "SELECT {CLIENT_COLUMNS} FROM clients WHERE id = $1"
        ))
        .bind(id.as_str())
        .fetch_optional(&self.pool)
        .await?
        .map(ClientRecord::try_from)
        .transpose()
    }

    #[tracing::instrument(name = "db.users.enable", skip_all)]
    async fn enable_user(&self, username: &Username) -> Result<bool, StoreError> {
        let done = sqlx::query("UPDATE users SET disabled_at = NULL WHERE username = $1")
            .bind(username.as_str())
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    #[tracing::instrument(name = "db.users.all", skip_all)]
    async fn users(&self) -> Result<Vec<UserRecord>, StoreError> {
        sqlx::query_as::<_, UserRow>(&format!(
            "SELECT {USER_COLUMNS} FROM users ORDER BY username"
        ))
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(UserRecord::try_from)
        .collect()
    }

    #[tracing::instrument(name = "db.clients.change", skip_all)]
    async fn change_client(
        &self,
        id: &ClientId,
        change: &ClientChange,
        at: UnixTime,
        issued_up_to: UnixTime,
        expires_at: UnixTime,
    ) -> Result<bool, StoreError> {
        self.write(async |conn| {
            let statement = match change {
                ClientChange::Disable => sqlx::query(
                    "UPDATE clients SET disabled_at = COALESCE(disabled_at, $2) WHERE id = $1",
                )
                .bind(id.as_str())
                .bind(at.as_secs()),
                ClientChange::Scopes(scopes) => {
                    sqlx::query("UPDATE clients SET scopes = $2 WHERE id = $1")
                        .bind(id.as_str())
                        .bind(scopes.joined())
                }
                ClientChange::Roles(roles) => {
                    sqlx::query("UPDATE clients SET roles = $2 WHERE id = $1")
                        .bind(id.as_str())
                        .bind(roles.joined())
                }
                ClientChange::Delete => {
                    sqlx::query("DELETE FROM clients WHERE id = $1").bind(id.as_str())
                }
            };
            let touched = statement.execute(&mut *conn).await?;
            if touched.rows_affected() == 0 {
                return Ok(false);
            }
            self.revoke_subject_in(conn, id.as_str(), issued_up_to, expires_at)
                .await?;
            Ok(true)
        })
        .await
    }

    #[tracing::instrument(name = "db.subjects.revoke", skip_all)]
    async fn revoke_subject(
        &self,
        sub: &str,
        at: UnixTime,
        expires_at: UnixTime,
    ) -> Result<(), StoreError> {
        self.write(async |conn| self.revoke_subject_in(conn, sub, at, expires_at).await)
            .await
    }

    #[tracing::instrument(name = "db.users.change", skip_all)]
    async fn change_user(
        &self,
        username: &Username,
        change: &UserChange,
        at: UnixTime,
        expires_at: UnixTime,
    ) -> Result<Option<String>, StoreError> {
        self.write(async |conn| {
            let Some(id) =
                sqlx::query_scalar::<_, String>("SELECT id FROM users WHERE username = $1")
                    .bind(username.as_str())
                    .fetch_optional(&mut *conn)
                    .await?
            else {
                return Ok(None);
            };
            // Sessions and their tokens first: revocations are logged by
            // the sessions' rows, which a deletion then removes.
            self.revoke_sessions_in(conn, &id, at, expires_at).await?;
            match change {
                UserChange::Password(hash) => {
                    sqlx::query("UPDATE users SET password_hash = $2 WHERE id = $1")
                        .bind(&id)
                        .bind(hash)
                        .execute(&mut *conn)
                        .await?;
                }
                UserChange::Scopes(scopes) => {
                    sqlx::query("UPDATE users SET scopes = $2 WHERE id = $1")
                        .bind(&id)
                        .bind(scopes.joined())
                        .execute(&mut *conn)
                        .await?;
                }
                UserChange::Roles(roles) => {
                    sqlx::query("UPDATE users SET roles = $2 WHERE id = $1")
                        .bind(&id)
                        .bind(roles.joined())
                        .execute(&mut *conn)
                        .await?;
                }
                UserChange::Delete => {
                    for sql in [
                        "DELETE FROM refresh_tokens WHERE sid IN \
                         (SELECT sid FROM sessions WHERE user_id = $1)",
                        "DELETE FROM sessions WHERE user_id = $1",
                        "DELETE FROM users WHERE id = $1",
                    ] {
                        sqlx::query(sql).bind(&id).execute(&mut *conn).await?;
                    }
                }
            }
            Ok(Some(id))
        })
        .await
    }

    #[tracing::instrument(name = "db.clients.rotate_secret", skip_all)]
    async fn rotate_client_secret(
        &self,
        id: &ClientId,
        new: &SecretHash,
        old_valid_until: UnixTime,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE clients SET previous_secret_hash = secret_hash, \
             previous_secret_expires_at = $3, secret_hash = $2 \
             WHERE id = $1 AND tls_subject IS NULL AND tls_cert_sha256 IS NULL",
        )
        .bind(id.as_str())
        .bind(new.as_bytes().to_vec())
        .bind(old_valid_until.as_secs())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    #[tracing::instrument(name = "db.clients.enable", skip_all)]
    async fn enable_client(&self, id: &ClientId) -> Result<bool, StoreError> {
        let done = sqlx::query("UPDATE clients SET disabled_at = NULL WHERE id = $1")
            .bind(id.as_str())
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    #[tracing::instrument(name = "db.clients.version", skip_all)]
    async fn directory_version(&self) -> Result<i64, StoreError> {
        Ok(
            sqlx::query_scalar::<_, i64>("SELECT version FROM directory_version WHERE id = 1")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    #[tracing::instrument(name = "db.clients.all", skip_all)]
    async fn clients(&self) -> Result<Vec<ClientRecord>, StoreError> {
        sqlx::query_as::<_, ClientRow>(&format!("SELECT {CLIENT_COLUMNS} FROM clients ORDER BY id"))
            .fetch_all(&self.pool)
            .await?
            .into_iter()
            .map(ClientRecord::try_from)
            .collect()
    }

    #[tracing::instrument(name = "db.sessions.create", skip_all)]
    async fn create_session(
        &self,
        session: &NewSession,
        token: &NewRefreshToken,
    ) -> Result<bool, StoreError> {
        match self.backend {
            // One statement: the user row is share-locked while the session
            // is written, so a concurrent disable either waits for this
            // session (and revokes it) or makes this insert find no user.
            Backend::Postgres => {
                let created = sqlx::query(
                    "WITH u AS (SELECT id FROM users WHERE id = $2 AND disabled_at IS NULL FOR SHARE), \
                          s AS (INSERT INTO sessions (sid, user_id, audience, created_at) \
                                SELECT $1, u.id, $3, $4 FROM u RETURNING sid) \
                     INSERT INTO refresh_tokens (hash, sid, scopes, issued_at, expires_at) \
                     SELECT $5, s.sid, $6, $7, $8 FROM s",
                )
                .bind(&session.sid)
                .bind(&session.user_id)
                .bind(session.audience.as_str())
                .bind(session.created_at.as_secs())
                .bind(token.hash.as_bytes().to_vec())
                .bind(token.scopes.joined())
                .bind(token.issued_at.as_secs())
                .bind(token.expires_at.as_secs())
                .execute(&self.pool)
                .await?;
                Ok(created.rows_affected() == 1)
            }
            // SQLite has one writer: the write lock taken by the first
            // statement orders this against any disable.
            Backend::Sqlite => {
                self.write(async |conn| {
                    let created = sqlx::query(
                        "INSERT INTO sessions (sid, user_id, audience, created_at) \
                         SELECT $1, id, $3, $4 FROM users WHERE id = $2 AND disabled_at IS NULL",
                    )
                    .bind(&session.sid)
                    .bind(&session.user_id)
                    .bind(session.audience.as_str())
                    .bind(session.created_at.as_secs())
                    .execute(&mut *conn)
                    .await?;
                    if created.rows_affected() == 0 {
                        return Ok(false);
                    }
                    insert_refresh_token(conn, &session.sid, token).await?;
                    Ok(true)
                })
                .await
            }
        }
    }

    #[tracing::instrument(name = "db.refresh_tokens.find", skip_all)]
    async fn find_refresh_token(
        &self,
        hash: &SecretHash,
    ) -> Result<Option<RefreshTokenRecord>, StoreError> {
        sqlx::query_as::<_, RefreshTokenRow>(&format!(
            "SELECT {REFRESH_TOKEN_COLUMNS} {REFRESH_TOKEN_FROM}"
        ))
        .bind(hash.as_bytes().to_vec())
        .fetch_optional(&self.pool)
        .await?
        .map(RefreshTokenRecord::try_from)
        .transpose()
    }

    #[tracing::instrument(name = "db.refresh_tokens.exchange", skip_all)]
    async fn exchange_refresh_token(
        &self,
        request: &ExchangeRequest<'_>,
    ) -> Result<Exchange, StoreError> {
        let lock = match self.backend {
            Backend::Postgres => " FOR UPDATE OF t",
            Backend::Sqlite => "",
        };
        let select = format!(
            "SELECT {} AS db_now_ms, {REFRESH_TOKEN_COLUMNS} {REFRESH_TOKEN_FROM}{lock}",
            now_ms_sql(self.backend)
        );
        let presented = request.presented.as_bytes().to_vec();
        // The common case first, in one round trip; the full exchange below
        // judges the rest.
        let rotated = if let Some(group) = &self.group {
            rotate_together(group, request).await?
        } else if let Some(rotations) = &self.rotations {
            rotate_sent_together(rotations, request).await?
        } else {
            None
        };
        if let Some(record) = rotated {
            return Ok(Exchange::Issued {
                record,
                replay: false,
            });
        }
        self.write(async |conn| {
            // SQLite: the shared transaction began IMMEDIATE, holding the
            // write lock, so no other exchange of this token can come
            // between read and write.
            let Some(row) = sqlx::query_as::<_, ExchangeRow>(&select)
                .bind(&presented)
                .fetch_optional(&mut *conn)
                .await?
            else {
                return Ok(Exchange::Refused);
            };
            let db_now_ms = row.db_now_ms;
            let previous_successor = row.token.successor.clone();
            let record = RefreshTokenRecord::try_from(row.token)?;
            let presentation =
                record
                    .state
                    .on_presented(record.expires_at, request.now, db_now_ms, request.rules);
            let replay = match presentation {
                Presentation::Refuse => return Ok(Exchange::Refused),
                Presentation::Theft => {
                    let revocation = Revocation {
                        kind: RevocationKind::Session,
                        value: record.sid.clone(),
                        at: request.now,
                        expires_at: request.theft_revocation_expires_at,
                    };
                    sqlx::query(
                        "UPDATE sessions SET revoked_at = $2 WHERE sid = $1 AND revoked_at IS NULL",
                    )
                    .bind(&record.sid)
                    .bind(request.now.as_secs())
                    .execute(&mut *conn)
                    .await?;
                    self.insert_revocation(conn, &revocation).await?;
                    return Ok(Exchange::TheftDetected { record, revocation });
                }
                Presentation::Rotate => false,
                Presentation::Replay => true,
            };
            if let Err(missing) = record.scopes.narrow(request.requested_scopes) {
                return Ok(Exchange::ScopeNotAllowed(missing));
            }
            let successor = request.successor.hash.as_bytes().to_vec();
            if replay {
                // The unused successor is replaced: one live chain only.
                sqlx::query("UPDATE refresh_tokens SET superseded_at = $2 WHERE hash = $1")
                    .bind(previous_successor)
                    .bind(request.now.as_secs())
                    .execute(&mut *conn)
                    .await?;
                sqlx::query(
                    "UPDATE refresh_tokens SET successor = $2, replays = replays + 1 WHERE hash = $1",
                )
                .bind(&presented)
                .bind(&successor)
                .execute(&mut *conn)
                .await?;
            } else {
                sqlx::query(
                    "UPDATE refresh_tokens SET spent_at_ms = $2, successor = $3 WHERE hash = $1",
                )
                .bind(&presented)
                .bind(db_now_ms)
                .bind(&successor)
                .execute(&mut *conn)
                .await?;
            }
            sqlx::query(
                "INSERT INTO refresh_tokens (hash, sid, scopes, issued_at, expires_at) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(successor)
            .bind(&record.sid)
            .bind(record.scopes.joined())
            .bind(request.successor.issued_at.as_secs())
            .bind(request.successor.expires_at.as_secs())
            .execute(&mut *conn)
            .await?;
            Ok(Exchange::Issued { record, replay })
        })
        .await
    }

    #[tracing::instrument(name = "db.sessions.revoke", skip_all)]
    async fn revoke_session(&self, entry: &Revocation) -> Result<bool, StoreError> {
        self.write(async |conn| {
            let revoked = sqlx::query(
                "UPDATE sessions SET revoked_at = $2 WHERE sid = $1 AND revoked_at IS NULL",
            )
            .bind(&entry.value)
            .bind(entry.at.as_secs())
            .execute(&mut *conn)
            .await?;
            if revoked.rows_affected() == 0 {
                return Ok(false);
            }
            self.insert_revocation(conn, entry).await?;
            Ok(true)
        })
        .await
    }

    #[tracing::instrument(name = "db.revocation_log.append", skip_all)]
    async fn append_revocation(&self, entry: &Revocation) -> Result<(), StoreError> {
        self.write(async |conn| self.insert_revocation(conn, entry).await)
            .await
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
             FROM signing_keys WHERE revoked_at IS NULL ORDER BY activates_at, kid",
        )
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(StoredKey::from)
        .collect())
    }

    #[tracing::instrument(name = "db.signing_keys.revoke", skip_all)]
    async fn revoke_signing_key(&self, kid: &str, at: UnixTime) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE signing_keys SET revoked_at = $2 WHERE kid = $1 AND revoked_at IS NULL",
        )
        .bind(kid)
        .bind(at.as_secs())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn database_time_ms(&self) -> Result<i64, StoreError> {
        Ok(
            sqlx::query_scalar::<_, i64>(&format!("SELECT {}", now_ms_sql(self.backend)))
                .fetch_one(&self.pool)
                .await?,
        )
    }

    #[tracing::instrument(name = "db.prune", skip_all)]
    async fn prune(&self, before: UnixTime, batch: i64) -> Result<Pruned, StoreError> {
        let mut pruned = Pruned::default();
        let counts = [
            &mut pruned.revocations,
            &mut pruned.refresh_tokens,
            &mut pruned.sessions,
        ];
        for (statement, count) in PRUNE.into_iter().zip(counts) {
            loop {
                let deleted = sqlx::query(statement)
                    .bind(before.as_secs())
                    .bind(batch)
                    .execute(&self.pool)
                    .await?
                    .rows_affected();
                *count += deleted;
                if deleted < u64::try_from(batch).unwrap_or(u64::MAX) {
                    break;
                }
            }
        }
        Ok(pruned)
    }

    async fn change_feed(&self) -> Result<Option<Box<dyn ChangeFeed>>, StoreError> {
        match self.backend {
            Backend::Postgres => {
                let feed = postgres::listen(self.url.expose_secret()).await?;
                Ok(Some(Box::new(feed) as Box<dyn ChangeFeed>))
            }
            Backend::Sqlite => {
                let feed = sqlite::watch(self.url.expose_secret()).await?;
                Ok(Some(Box::new(feed) as Box<dyn ChangeFeed>))
            }
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
