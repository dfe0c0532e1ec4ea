-- `tessera keys revoke`: an emergency, a key taken out of service at once.
-- A revoked key is neither published nor trusted, on every replica.
ALTER TABLE signing_keys ADD COLUMN revoked_at BIGINT;

-- Replicas re-read the keys when a key is revoked, as when one is added.
CREATE TRIGGER signing_keys_update_notify AFTER UPDATE ON signing_keys
    FOR EACH STATEMENT EXECUTE FUNCTION tessera_notify_keys();
