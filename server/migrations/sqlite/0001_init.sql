-- Tessera schema for SQLite. Times are Unix seconds (INTEGER).

CREATE TABLE users (
    id            TEXT PRIMARY KEY,
    username      TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    scopes        TEXT NOT NULL,
    audiences     TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    disabled_at   INTEGER
);

CREATE TABLE clients (
    id          TEXT PRIMARY KEY,
    secret_hash BLOB NOT NULL,
    scopes      TEXT NOT NULL,
    audiences   TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    disabled_at INTEGER
);

CREATE TABLE sessions (
    sid        TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL REFERENCES users (id),
    audience   TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
);
CREATE INDEX sessions_user_id ON sessions (user_id);

-- Refresh tokens are stored only as SHA-256 hashes.
CREATE TABLE refresh_tokens (
    hash       BLOB PRIMARY KEY,
    sid        TEXT NOT NULL REFERENCES sessions (sid),
    scopes     TEXT NOT NULL,
    issued_at  INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    spent_at   INTEGER
);
CREATE INDEX refresh_tokens_sid ON refresh_tokens (sid);

-- Append-only. AUTOINCREMENT so an id is never reused; SQLite has one writer
-- at a time, so ids become visible in order.
CREATE TABLE revocation_log (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    kind       TEXT NOT NULL,
    value      TEXT NOT NULL,
    at         INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);

CREATE TABLE signing_keys (
    kid          TEXT PRIMARY KEY,
    alg          TEXT NOT NULL,
    public_jwk   TEXT NOT NULL,
    private_key  BLOB NOT NULL,
    created_at   INTEGER NOT NULL,
    activates_at INTEGER NOT NULL
);
