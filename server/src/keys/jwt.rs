//! RFC 9068 access tokens: signing, and verification hardened per RFC 8725.
//!
//! jsonwebtoken checks the signature; everything else is checked here
//! against the injected clock: the header is parsed by hand first (`typ`,
//! `kid`, no `crit`, no embedded or remote keys), the key comes from the key
//! ring only and pins the algorithm, and the claims decode into a typed
//! struct that requires every claim Tessera relies on.

use std::{collections::HashSet, time::Duration};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Header, Validation};
use serde::{Deserialize, Serialize};

use super::{KeyError, KeyRing};
use crate::{
    clock::{UnixTime, secs},
    domain::secrets::MAX_TOKEN_BYTES,
};

/// The claims of a Tessera access token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AccessClaims {
    /// Issuer.
    pub iss: String,
    /// The user's stable id, or the client id.
    pub sub: String,
    /// Audience.
    pub aud: OneOrMany,
    /// Expiry (Unix seconds).
    pub exp: i64,
    /// Issued at.
    pub iat: i64,
    /// Not before.
    pub nbf: i64,
    /// Unique token id; what a single-token revocation names.
    pub jti: String,
    /// The OAuth client the token was issued to.
    pub client_id: String,
    /// Space-separated scopes.
    pub scope: String,
    /// Session id; what a session revocation names.
    pub sid: String,
}

/// A claim that may be one string or a list of strings (RFC 7519 `aud`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum OneOrMany {
    /// A single value.
    One(String),
    /// A list of values.
    Many(Vec<String>),
}

impl OneOrMany {
    /// The values as a list.
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            Self::One(s) => vec![s.clone()],
            Self::Many(v) => v.clone(),
        }
    }
}

/// What a verified token must also satisfy.
#[derive(Debug, Clone)]
pub struct VerifyRules {
    /// The only accepted `iss`.
    pub issuer: String,
    /// Clock skew tolerated on `exp`, `nbf` and `iat`.
    pub leeway: Duration,
    /// The longest lifetime (`exp - iat`) Tessera issues.
    pub max_lifetime: Duration,
}

/// Why a token was not accepted. Never shown to the caller (an inactive token
/// is just inactive); logged at debug level to help operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    /// Over the size limit; not decoded at all.
    #[error("token is too large")]
    TooLarge,
    /// Not three base64url segments, or a header that is not a JSON object.
    #[error("token is malformed")]
    Malformed,
    /// `typ` is not `at+jwt`.
    #[error("token type is not at+jwt")]
    WrongType,
    /// The header carries `crit`, an embedded key or a key URL.
    #[error("token header has a forbidden parameter")]
    ForbiddenHeader,
    /// `kid` missing or not in the key ring.
    #[error("unknown key id")]
    UnknownKey,
    /// `alg` is not the algorithm of the named key.
    #[error("algorithm does not match the key")]
    WrongAlgorithm,
    /// Bad signature, or claims missing or of the wrong type.
    #[error("signature or claims are invalid")]
    Invalid,
    /// `iss` is not this issuer.
    #[error("wrong issuer")]
    WrongIssuer,
    /// Expired, not yet valid, issued in the future or living too long.
    #[error("token is outside its validity period")]
    Time,
}

/// Header parameters that would let a token choose its own verification key
/// or demand processing Tessera does not do.
const FORBIDDEN_HEADERS: [&str; 6] = ["crit", "jwk", "jku", "x5u", "x5c", "zip"];

impl KeyRing {
    /// Signs `claims` as an RFC 9068 access token with the key active at `now`.
    pub fn sign(&self, claims: &AccessClaims, now: UnixTime) -> Result<String, KeyError> {
        let key = self.signer(now).ok_or(KeyError::NoActiveKey)?;
        let mut header = Header::new(key.alg.jwt_algorithm());
        header.typ = Some("at+jwt".into());
        header.kid = Some(key.kid.clone());
        jsonwebtoken::encode(&header, claims, &key.encoding).map_err(KeyError::Sign)
    }

    /// Verifies an access token's form, signature and claims at `now`.
    /// Revocation is not checked here.
    pub fn verify(
        &self,
        token: &str,
        rules: &VerifyRules,
        now: UnixTime,
    ) -> Result<AccessClaims, Rejected> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(Rejected::TooLarge);
        }
        let mut segments = token.split('.');
        let (Some(header), Some(_payload), Some(signature), None) = (
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
        ) else {
            return Err(Rejected::Malformed);
        };
        if signature.is_empty() {
            return Err(Rejected::Malformed);
        }
        let header = URL_SAFE_NO_PAD
            .decode(header)
            .map_err(|_| Rejected::Malformed)?;
        let header: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&header).map_err(|_| Rejected::Malformed)?;

        let typ = header.get("typ").and_then(serde_json::Value::as_str);
        if !typ.is_some_and(|t| {
            t.eq_ignore_ascii_case("at+jwt") || t.eq_ignore_ascii_case("application/at+jwt")
        }) {
            return Err(Rejected::WrongType);
        }
        if FORBIDDEN_HEADERS.iter().any(|h| header.contains_key(*h)) {
            return Err(Rejected::ForbiddenHeader);
        }
        let kid = header
            .get("kid")
            .and_then(serde_json::Value::as_str)
            .ok_or(Rejected::UnknownKey)?;
        let key = self.find(kid).ok_or(Rejected::UnknownKey)?;
        if header.get("alg").and_then(serde_json::Value::as_str) != Some(key.alg.as_str()) {
            return Err(Rejected::WrongAlgorithm);
        }

        // Signature only: time and issuer are checked below against the
        // injected clock, with explicit leeway.
        let mut validation = Validation::new(key.alg.jwt_algorithm());
        validation.required_spec_claims = HashSet::new();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.leeway = 0;
        let claims = jsonwebtoken::decode::<AccessClaims>(token, key.decoding(), &validation)
            .map_err(|_| Rejected::Invalid)?
            .claims;

        if claims.iss != rules.issuer {
            return Err(Rejected::WrongIssuer);
        }
        let now = now.as_secs();
        let leeway = secs(rules.leeway);
        let expired = claims.exp <= now - leeway;
        let not_yet = claims.nbf > now + leeway || claims.iat > now + leeway;
        let too_long =
            claims.exp < claims.iat || claims.exp - claims.iat > secs(rules.max_lifetime);
        if expired || not_yet || too_long {
            return Err(Rejected::Time);
        }
        Ok(claims)
    }
}
