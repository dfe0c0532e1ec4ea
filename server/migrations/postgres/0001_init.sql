-- Tessera schema for PostgreSQL. Times are Unix seconds (BIGINT).

CREATE TABLE users (
    id            TEXT PRIMARY KEY,
    username      TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    scopes        TEXT NOT NULL,
    audiences     TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    disabled_at   BIGINT
);

CREATE TABLE clients (
    id          TEXT PRIMARY KEY,
    secret_hash BYTEA NOT NULL,
    scopes      TEXT NOT NULL,
    audiences   TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    disabled_at BIGINT
);

CREATE TABLE sessions (
    sid        TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL REFERENCES users (id),
    audience   TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);
CREATE INDEX sessions_user_id ON sessions (user_id);

-- Refresh tokens are stored only as SHA-256 hashes.
CREATE TABLE refresh_tokens (
    hash       BYTEA PRIMARY KEY,
    sid        TEXT NOT NULL REFERENCES sessions (sid),
    scopes     TEXT NOT NULL,
    issued_at  BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    spent_at   BIGINT
);
CREATE INDEX refresh_tokens_sid ON refresh_tokens (sid);

-- Append-only. Writers take an EXCLUSIVE lock on the table before inserting,
-- so ids become visible in commit order and a follower reading "id > cursor"
-- can never skip a row that commits late.
CREATE TABLE revocation_log (
    id         BIGSERIAL PRIMARY KEY,
    kind       TEXT NOT NULL,
    value      TEXT NOT NULL,
    at         BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);

CREATE TABLE signing_keys (
    kid          TEXT PRIMARY KEY,
    alg          TEXT NOT NULL,
    public_jwk   TEXT NOT NULL,
    private_key  BYTEA NOT NULL,
    created_at   BIGINT NOT NULL,
    activates_at BIGINT NOT NULL
);

-- Wake every replica when the log or the key set changes. NOTIFY is delivered
-- at commit; polling remains the backstop for a missed notification.
CREATE FUNCTION tessera_notify_revocations() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('tessera_revocations', '');
    RETURN NULL;
END
$$ LANGUAGE plpgsql;

CREATE TRIGGER revocation_log_notify AFTER INSERT ON revocation_log
    FOR EACH STATEMENT EXECUTE FUNCTION tessera_notify_revocations();

CREATE FUNCTION tessera_notify_keys() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('tessera_keys', '');
    RETURN NULL;
END
$$ LANGUAGE plpgsql;

CREATE TRIGGER signing_keys_notify AFTER INSERT ON signing_keys
    FOR EACH STATEMENT EXECUTE FUNCTION tessera_notify_keys();
