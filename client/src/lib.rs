//! Tessera's client crate: Rust services that call others never think about
//! token expiry, and services that receive calls check tokens in one line.
//!
//! # Layout
//! - [`source`]: [`TokenSource`], one per credential: caches the access
//!   token, refreshes it in the background ahead of expiry (one refresh in
//!   flight however many calls wait), falls back from a rejected refresh to
//!   `Issue`, and retries with capped, jittered backoff while the server is down.
//! - [`interceptor`]: [`AuthInterceptor`] (tonic's synchronous slot; never
//!   waits) and [`AuthLayer`] (a tower layer that awaits the first token).
//! - [`retry`]: repeat a unary call once with a fresh token on UNAUTHENTICATED.
//! - [`transport`]: [`Transport`]: TLS ([`ClientTls`]: CAs, system roots,
//!   an mTLS identity) or plaintext only to this machine; every dial and
//!   every attached token goes through its check.
//! - [`verify`]: for servers: [`verify::IntrospectionVerifier`],
//!   [`verify::JwksVerifier`] and [`verify::VerifyLayer`] (scopes per method,
//!   claims in request extensions).

pub mod interceptor;
mod otel;
pub mod retry;
pub mod source;
pub mod transport;
pub mod verify;

pub use interceptor::{AuthInterceptor, AuthLayer};
pub use source::{Credentials, SourceConfig, TokenSource};
pub use transport::{ClientTls, Plaintext, Transport, TransportError};
