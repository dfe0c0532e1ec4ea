//! Tessera's access token profile, in one place for the server that signs
//! and verifies tokens and for the client crate that verifies them locally.
//!
//! Access tokens are RFC 9068 JWTs (`typ: at+jwt`), verified as RFC 8725
//! asks: the header is checked before anything else (`typ`, no `crit`, no
//! key carried or pointed at by the token), the key is chosen by `kid` from
//! the verifier's own set and pins its algorithm, and every claim Tessera
//! relies on must be present with the right type. Time is checked against
//! the caller's clock with explicit leeway.
//!
//! # Layout
//! - `claims`: [`AccessClaims`] and [`Audience`], the token's payload.
//! - `alg`: [`Algorithm`], the signing algorithms Tessera uses.
//! - `keys`: [`SigningKey`] and [`VerifyingKey`] (from PKCS#8 and JWKs).
//! - `verify`: [`parse`] (form and header) then
//!   [`UnverifiedToken::verify`] (signature, issuer, audience, time), with
//!   the one [`Rejected`] reason list.
//! - `bearer`: reading `authorization: Bearer <token>`.
//! - The constants below: size limit, token type, prefixes, the introspect scope.

mod alg;
mod bearer;
mod claims;
mod keys;
mod verify;

pub use alg::{Algorithm, UnknownAlgorithm};
pub use bearer::{MalformedBearer, bearer_token};
pub use claims::{AccessClaims, Audience, Confirmation, split_scopes, x5t_s256};
pub use keys::{KeyError, SigningKey, VerifyingKey};
pub use verify::{Rejected, UnverifiedToken, VerifyRules, parse};

/// Longest token (access or refresh) accepted anywhere, checked before any
/// decoding so an oversized token costs nothing.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// The JWT `typ` of an access token (RFC 9068 §2.1).
pub const ACCESS_TOKEN_TYPE: &str = "at+jwt";

/// Prefix that makes a Tessera refresh token recognisable, to people, to
/// secret scanners, and to the server, which never decodes one as a JWT.
pub const REFRESH_TOKEN_PREFIX: &str = "tsr_";

/// Prefix of client secrets, for the same reasons.
pub const CLIENT_SECRET_PREFIX: &str = "tsc_";

/// The scope a bearer token needs to call `Introspect`.
pub const INTROSPECT_SCOPE: &str = "tessera:introspect";
