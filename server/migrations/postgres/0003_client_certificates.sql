-- RFC 8705: a client may authenticate by its TLS certificate instead of a
-- secret, named by a subjectAltName (a SPIFFE ID or DNS name) or by the
-- certificate's SHA-256 (hex). Such a client's secret_hash is a hash of
-- random bytes nobody knows.
ALTER TABLE clients ADD COLUMN tls_subject TEXT;
ALTER TABLE clients ADD COLUMN tls_cert_sha256 TEXT;
