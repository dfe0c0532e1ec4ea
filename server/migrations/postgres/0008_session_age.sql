-- The prune deletes sessions older than its horizon that no refresh token
-- is left in, oldest first, in small batches: without an index on their
-- age each batch read every session.
CREATE INDEX sessions_created_at ON sessions (created_at);
