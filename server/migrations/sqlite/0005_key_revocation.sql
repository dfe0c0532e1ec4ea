-- `tessera keys revoke`: an emergency, a key taken out of service at once.
-- A revoked key is neither published nor trusted, on every replica.
ALTER TABLE signing_keys ADD COLUMN revoked_at INTEGER;
