//! Verification: [`parse`] checks the token's form and header without any
//! key, so the caller can pick the key its `kid` names from its own set;
//! [`UnverifiedToken::verify`] then checks the signature with that key, and
//! the claims against [`VerifyRules`] and the caller's clock.

use std::time::Duration;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use serde_json::{Map, Value};

use crate::{ACCESS_TOKEN_TYPE, AccessClaims, MAX_TOKEN_BYTES, VerifyingKey};

/// What a verified token must also satisfy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyRules {
    /// The only accepted `iss`.
    pub issuer: String,
    /// When set, `aud` must contain it.
    pub audience: Option<String>,
    /// Clock skew tolerated on `exp`, `nbf` and `iat`.
    pub leeway: Duration,
    /// The longest lifetime (`exp - iat`) accepted.
    pub max_lifetime: Duration,
}

/// Why a token was not accepted. A verifier never tells the token's holder
/// which (an inactive token is just inactive); it is for logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    /// Over [`MAX_TOKEN_BYTES`]; not decoded at all.
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
    /// `kid` missing, or not a key of the verifier's.
    #[error("unknown key id")]
    UnknownKey,
    /// `alg` is not the algorithm of the named key.
    #[error("algorithm does not match the key")]
    WrongAlgorithm,
    /// The signature does not verify.
    #[error("bad signature")]
    BadSignature,
    /// Claims missing or of the wrong type.
    #[error("claims are invalid")]
    InvalidClaims,
    /// `iss` is not the expected issuer.
    #[error("wrong issuer")]
    WrongIssuer,
    /// `aud` does not name the expected audience.
    #[error("wrong audience")]
    WrongAudience,
    /// Expired (beyond the leeway).
    #[error("token has expired")]
    Expired,
    /// Not yet valid, or issued in the future (beyond the leeway).
    #[error("token is not yet valid")]
    NotYetValid,
    /// `exp` before `iat`, or a lifetime longer than the maximum.
    #[error("token lifetime is invalid")]
    BadLifetime,
}

/// Header parameters that would let a token choose its own verification key
/// or demand processing Tessera does not do.
const FORBIDDEN_HEADERS: [&str; 6] = ["crit", "jwk", "jku", "x5u", "x5c", "zip"];

/// A token whose form and header passed, not yet checked against any key.
#[derive(Debug)]
pub struct UnverifiedToken<'a> {
    /// `header.payload`: what the signature covers.
    signing_input: &'a str,
    payload: &'a str,
    signature: &'a str,
    kid: String,
    alg: String,
}

/// Checks a token's size, form and header (RFC 8725 §3.1, §3.11): three
/// base64url segments, a JSON object header with `typ: at+jwt`, a `kid`
/// and an `alg`, and none of `crit`, `jwk`, `jku`, `x5u`, `x5c`, `zip`.
pub fn parse(token: &str) -> Result<UnverifiedToken<'_>, Rejected> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(Rejected::TooLarge);
    }
    let (signing_input, signature) = token.rsplit_once('.').ok_or(Rejected::Malformed)?;
    let (header, payload) = signing_input.split_once('.').ok_or(Rejected::Malformed)?;
    if signature.is_empty() || payload.contains('.') {
        return Err(Rejected::Malformed);
    }
    let header = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| Rejected::Malformed)?;
    let header: Map<String, Value> =
        serde_json::from_slice(&header).map_err(|_| Rejected::Malformed)?;

    let typ = header.get("typ").and_then(Value::as_str);
    let typ_ok = typ.is_some_and(|t| {
        t.eq_ignore_ascii_case(ACCESS_TOKEN_TYPE)
            || t.eq_ignore_ascii_case(&format!("application/{ACCESS_TOKEN_TYPE}"))
    });
    if !typ_ok {
        return Err(Rejected::WrongType);
    }
    if FORBIDDEN_HEADERS.iter().any(|h| header.contains_key(*h)) {
        return Err(Rejected::ForbiddenHeader);
    }
    let kid = header
        .get("kid")
        .and_then(Value::as_str)
        .ok_or(Rejected::UnknownKey)?;
    let alg = header
        .get("alg")
        .and_then(Value::as_str)
        .ok_or(Rejected::WrongAlgorithm)?;
    Ok(UnverifiedToken {
        signing_input,
        payload,
        signature,
        kid: kid.to_owned(),
        alg: alg.to_owned(),
    })
}

impl UnverifiedToken<'_> {
    /// The `kid` the header names: which of the verifier's keys to use.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// Checks the signature with `key` (which must be the key `kid` names,
    /// and whose algorithm the header must name), then the claims against
    /// `rules` at `now` (Unix seconds). Revocation is not checked here.
    pub fn verify(
        &self,
        key: &VerifyingKey,
        rules: &VerifyRules,
        now: i64,
    ) -> Result<AccessClaims, Rejected> {
        if key.kid() != self.kid {
            return Err(Rejected::UnknownKey);
        }
        if key.algorithm().as_str() != self.alg {
            return Err(Rejected::WrongAlgorithm);
        }
        if !key.verifies(self.signing_input.as_bytes(), self.signature) {
            return Err(Rejected::BadSignature);
        }
        let payload = URL_SAFE_NO_PAD
            .decode(self.payload)
            .map_err(|_| Rejected::Malformed)?;
        let claims: AccessClaims =
            serde_json::from_slice(&payload).map_err(|_| Rejected::InvalidClaims)?;
        rules.check(&claims, now)?;
        Ok(claims)
    }
}

impl VerifyRules {
    /// The claim checks alone (issuer, audience, time), for claims whose
    /// signature was verified earlier: a cache of verified tokens runs
    /// these again on every use.
    pub fn check(&self, claims: &AccessClaims, now: i64) -> Result<(), Rejected> {
        check_claims(claims, self, now)
    }
}

/// Issuer, audience and time. Arithmetic is done in `i128`, so no claim
/// value can overflow its way past a check.
fn check_claims(claims: &AccessClaims, rules: &VerifyRules, now: i64) -> Result<(), Rejected> {
    if claims.iss != rules.issuer {
        return Err(Rejected::WrongIssuer);
    }
    if let Some(audience) = &rules.audience
        && !claims.aud.contains(audience)
    {
        return Err(Rejected::WrongAudience);
    }
    let now = i128::from(now);
    let leeway = i128::from(rules.leeway.as_secs());
    let (exp, iat, nbf) = (
        i128::from(claims.exp),
        i128::from(claims.iat),
        i128::from(claims.nbf),
    );
    if exp <= now - leeway {
        return Err(Rejected::Expired);
    }
    if nbf > now + leeway || iat > now + leeway {
        return Err(Rejected::NotYetValid);
    }
    if exp < iat || exp - iat > i128::from(rules.max_lifetime.as_secs()) {
        return Err(Rejected::BadLifetime);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(iat: i64, exp: i64) -> AccessClaims {
        AccessClaims {
            iss: "tessera".into(),
            sub: "u".into(),
            aud: crate::Audience::One("api".into()),
            exp,
            iat,
            nbf: iat,
            jti: "j".into(),
            client_id: "c".into(),
            scope: "read".into(),
            sid: "s".into(),
            cnf: None,
            roles: Vec::new(),
        }
    }

    fn rules() -> VerifyRules {
        VerifyRules {
            issuer: "tessera".into(),
            audience: Some("api".into()),
            leeway: Duration::from_secs(5),
            max_lifetime: Duration::from_secs(600),
        }
    }

    #[test]
    fn a_token_within_its_lifetime_passes() {
        assert_eq!(check_claims(&claims(1000, 1600), &rules(), 1300), Ok(()));
    }

    #[test]
    fn expiry_and_future_times_allow_only_the_leeway() {
        let c = claims(1000, 1600);
        assert_eq!(check_claims(&c, &rules(), 1604), Ok(()));
        assert_eq!(check_claims(&c, &rules(), 1605), Err(Rejected::Expired));
        assert_eq!(check_claims(&c, &rules(), 995), Ok(()));
        assert_eq!(check_claims(&c, &rules(), 994), Err(Rejected::NotYetValid));
    }

    #[test]
    fn extreme_times_cannot_overflow_past_the_lifetime_check() {
        let c = claims(-1, i64::MAX);
        assert_eq!(check_claims(&c, &rules(), 0), Err(Rejected::BadLifetime));
        let c = claims(i64::MIN, i64::MAX);
        assert_eq!(check_claims(&c, &rules(), 0), Err(Rejected::BadLifetime));
        let c = claims(i64::MAX, i64::MIN);
        assert!(check_claims(&c, &rules(), i64::MAX).is_err());
    }

    #[test]
    fn the_audience_is_checked_only_when_a_rule_names_one() {
        let mut c = claims(1000, 1600);
        c.aud = crate::Audience::Many(vec!["other".into()]);
        assert_eq!(
            check_claims(&c, &rules(), 1300),
            Err(Rejected::WrongAudience)
        );
        let any_audience = VerifyRules {
            audience: None,
            ..rules()
        };
        assert_eq!(check_claims(&c, &any_audience, 1300), Ok(()));
    }

    #[test]
    fn malformed_shapes_are_rejected_before_any_key_is_needed() {
        for token in ["", "a", "a.b", "a.b.c.d", "a.b.", "..", "e30.e30.sig"] {
            assert!(parse(token).is_err(), "{token:?}");
        }
        assert_eq!(
            parse(&"a".repeat(MAX_TOKEN_BYTES + 1)).unwrap_err(),
            Rejected::TooLarge
        );
    }
}
