-- RFC 9068 §2.2.3.1 roles: space-separated, like scopes; empty for none.
ALTER TABLE users ADD COLUMN roles TEXT NOT NULL DEFAULT '';
ALTER TABLE clients ADD COLUMN roles TEXT NOT NULL DEFAULT '';
