//! Verification: [`parse`] checks the token's form and header without any
//! key, so the caller can pick the key its `kid` names from its own set;
//! [`UnverifiedToken::verify`] then checks the signature with that key, and
//! the claims against [`VerifyRules`] and the caller's clock.

use std::{borrow::Cow, fmt, time::Duration};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use serde::de::{self, Deserialize, Deserializer, MapAccess, Visitor};

use crate::{ACCESS_TOKEN_TYPE, AccessClaims, Algorithm, MAX_TOKEN_BYTES, VerifyingKey};

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
    alg: Algorithm,
}

/// Checks a token's size, form and header (RFC 8725 §3.1, §3.11): three
/// base64url segments, a JSON object header with `typ: at+jwt`, a `kid`
/// and an `alg` Tessera signs with, and none of `crit`, `jwk`, `jku`,
/// `x5u`, `x5c`, `zip`.
pub fn parse(token: &str) -> Result<UnverifiedToken<'_>, Rejected> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(Rejected::TooLarge);
    }
    let (signing_input, signature) = token.rsplit_once('.').ok_or(Rejected::Malformed)?;
    let (header, payload) = signing_input.split_once('.').ok_or(Rejected::Malformed)?;
    if signature.is_empty() || payload.contains('.') {
        return Err(Rejected::Malformed);
    }
    let header = decode(header)?;
    let header = Header::read(&header)?;

    let typ_ok = header.typ.as_deref().is_some_and(is_access_token_type);
    if !typ_ok {
        return Err(Rejected::WrongType);
    }
    if header.forbidden {
        return Err(Rejected::ForbiddenHeader);
    }
    let kid = header.kid.ok_or(Rejected::UnknownKey)?;
    let alg = header
        .alg
        .and_then(|alg| alg.parse().ok())
        .ok_or(Rejected::WrongAlgorithm)?;
    Ok(UnverifiedToken {
        signing_input,
        payload,
        signature,
        kid,
        alg,
    })
}

/// `at+jwt`, or `application/at+jwt` (RFC 7515 §4.1.9), in any case.
fn is_access_token_type(typ: &str) -> bool {
    const APPLICATION: &[u8] = b"application/";
    let typ = typ.as_bytes();
    let bare = match typ.len().checked_sub(ACCESS_TOKEN_TYPE.len()) {
        Some(0) => typ,
        Some(n) if typ[..n].eq_ignore_ascii_case(APPLICATION) => &typ[n..],
        _ => return false,
    };
    bare.eq_ignore_ascii_case(ACCESS_TOKEN_TYPE.as_bytes())
}

/// One base64url segment, decoded.
fn decode(segment: &str) -> Result<Vec<u8>, Rejected> {
    // `decode_vec` into a sized buffer: no zeroing, and one allocation.
    let mut out = Vec::with_capacity(segment.len() / 4 * 3 + 3);
    URL_SAFE_NO_PAD
        .decode_vec(segment, &mut out)
        .map_err(|_| Rejected::Malformed)?;
    Ok(out)
}

/// What a verifier reads of a JOSE header. Read in one pass, without
/// building the header as a map: parameters other than these are skipped,
/// only noted when forbidden.
#[derive(Debug, Default)]
struct Header {
    /// `typ`, when it is a string.
    typ: Option<String>,
    /// `kid`, when it is a string.
    kid: Option<String>,
    /// `alg`, when it is a string.
    alg: Option<String>,
    /// Whether any of [`FORBIDDEN_HEADERS`] is present (whatever its value).
    forbidden: bool,
}

impl Header {
    /// A header that is not a JSON object, or names a parameter twice, is
    /// malformed.
    fn read(json: &[u8]) -> Result<Self, Rejected> {
        serde_json::from_slice(json).map_err(|_| Rejected::Malformed)
    }
}

impl<'de> Deserialize<'de> for Header {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(HeaderVisitor)
    }
}

struct HeaderVisitor;

impl<'de> Visitor<'de> for HeaderVisitor {
    type Value = Header;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JOSE header object")
    }

    fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Header, M::Error> {
        let mut header = Header::default();
        // Which of typ, kid and alg were named: each may be named once
        // (RFC 7515 §4).
        let mut named = [false; 3];
        while let Some(Text(name)) = map.next_key()? {
            let (slot, i) = match name.as_ref() {
                "typ" => (&mut header.typ, 0),
                "kid" => (&mut header.kid, 1),
                "alg" => (&mut header.alg, 2),
                other => {
                    header.forbidden |= FORBIDDEN_HEADERS.contains(&other);
                    map.next_value::<de::IgnoredAny>()?;
                    continue;
                }
            };
            if std::mem::replace(&mut named[i], true) {
                return Err(de::Error::custom("a header parameter is named twice"));
            }
            // A value that is not a string is kept as absent: the check
            // that needs it says why the token is refused.
            *slot = match map.next_value::<serde_json::Value>()? {
                serde_json::Value::String(value) => Some(value),
                _ => None,
            };
        }
        Ok(header)
    }
}

/// A JSON string, borrowed unless it had escapes: a parameter's name.
struct Text<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(TextVisitor).map(Text)
    }
}

struct TextVisitor;

impl<'de> Visitor<'de> for TextVisitor {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }
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
        if key.algorithm() != self.alg {
            return Err(Rejected::WrongAlgorithm);
        }
        if !key.verifies(self.signing_input.as_bytes(), self.signature) {
            return Err(Rejected::BadSignature);
        }
        let payload = decode(self.payload)?;
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

    /// `parse` of a token with this header (the payload and signature are
    /// not looked at until a key is).
    fn parse_header(json: &str) -> Result<(String, Algorithm), Rejected> {
        let token = format!("{}.e30.c2ln", URL_SAFE_NO_PAD.encode(json));
        parse(&token).map(|t| (t.kid, t.alg))
    }

    #[test]
    fn the_header_is_read_as_rfc_7515_asks() {
        let good = Ok(("k1".to_owned(), Algorithm::Es256));
        assert_eq!(
            parse_header(r#"{"typ":"at+jwt","kid":"k1","alg":"ES256"}"#),
            good
        );
        // Media type prefix and case; escapes in names and values; other
        // parameters skipped whatever their value.
        assert_eq!(
            parse_header(
                r#"{"cty":{"a":[1]},"t\u0079p":"Application/AT+JWT","kid":"k\u0031","alg":"ES256","x":null}"#
            ),
            good
        );
        for (header, why) in [
            (
                r#"{"typ":"jwt","kid":"k1","alg":"ES256"}"#,
                Rejected::WrongType,
            ),
            (
                r#"{"typ":["at+jwt"],"kid":"k1","alg":"ES256"}"#,
                Rejected::WrongType,
            ),
            (
                r#"{"typ":"applicatio\u00e9at+jwt","kid":"k1","alg":"ES256"}"#,
                Rejected::WrongType,
            ),
            (r#"{"kid":"k1","alg":"ES256"}"#, Rejected::WrongType),
            (
                r#"{"typ":"at+jwt","kid":"k1","alg":"ES256","crit":null}"#,
                Rejected::ForbiddenHeader,
            ),
            (
                r#"{"typ":"at+jwt","kid":"k1","alg":"ES256","j\u006bu":"https://x"}"#,
                Rejected::ForbiddenHeader,
            ),
            (
                r#"{"typ":"at+jwt","kid":7,"alg":"ES256"}"#,
                Rejected::UnknownKey,
            ),
            (
                r#"{"typ":"at+jwt","kid":"k1","alg":"none"}"#,
                Rejected::WrongAlgorithm,
            ),
            (
                r#"{"typ":"at+jwt","kid":"k1","alg":"es256"}"#,
                Rejected::WrongAlgorithm,
            ),
            (r#"{"typ":"at+jwt","kid":"k1"}"#, Rejected::WrongAlgorithm),
            (
                r#"{"typ":"at+jwt","kid":"k1","kid":"k2","alg":"ES256"}"#,
                Rejected::Malformed,
            ),
            (
                r#"{"typ":"at+jwt","kid":"k1","alg":"ES256"} x"#,
                Rejected::Malformed,
            ),
            (r#"["typ","at+jwt"]"#, Rejected::Malformed),
        ] {
            assert_eq!(parse_header(header), Err(why), "{header}");
        }
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
