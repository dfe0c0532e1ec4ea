-- Refresh token exchange decided in the database, by the database's clock:
-- when a token was spent (milliseconds), which token is its one current
-- successor, how often a spent token was replayed inside the grace window,
-- and whether a token was superseded by such a replay before it was used
-- (presenting a superseded token is theft).
ALTER TABLE refresh_tokens ADD COLUMN spent_at_ms BIGINT;
ALTER TABLE refresh_tokens ADD COLUMN successor BYTEA;
ALTER TABLE refresh_tokens ADD COLUMN replays BIGINT NOT NULL DEFAULT 0;
ALTER TABLE refresh_tokens ADD COLUMN superseded_at BIGINT;
UPDATE refresh_tokens SET spent_at_ms = spent_at * 1000 WHERE spent_at IS NOT NULL;
ALTER TABLE refresh_tokens DROP COLUMN spent_at;

-- Pruning deletes expired refresh tokens and revocation entries.
CREATE INDEX refresh_tokens_expires_at ON refresh_tokens (expires_at);
CREATE INDEX revocation_log_expires_at ON revocation_log (expires_at);
