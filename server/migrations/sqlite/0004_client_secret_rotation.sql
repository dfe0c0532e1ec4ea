-- `tessera client rotate-secret --overlap`: the secret being replaced keeps
-- working until previous_secret_expires_at (Unix seconds).
ALTER TABLE clients ADD COLUMN previous_secret_hash BLOB;
ALTER TABLE clients ADD COLUMN previous_secret_expires_at INTEGER;
