//! The payload of a Tessera access token (RFC 9068 §2.2).

use std::fmt;

use serde::{
    Deserialize, Deserializer, Serialize,
    de::{self, SeqAccess, Visitor},
};

/// The claims of a Tessera access token. Every field is required when
/// verifying: a token missing one, or carrying one with another type, is
/// not a Tessera token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AccessClaims {
    /// Issuer.
    pub iss: String,
    /// The user's stable id, or the client id. Never a username.
    pub sub: String,
    /// Audience: one name or a list.
    pub aud: Audience,
    /// Expiry (Unix seconds).
    pub exp: i64,
    /// Issued at (Unix seconds).
    pub iat: i64,
    /// Not before (Unix seconds).
    pub nbf: i64,
    /// Unique token id; what a single-token revocation names.
    pub jti: String,
    /// The OAuth client the token was issued to.
    pub client_id: String,
    /// Space-separated scopes (RFC 6749 §3.3).
    pub scope: String,
    /// Session id; what a session revocation names.
    pub sid: String,
    /// RFC 8705 confirmation: the token is bound to this client
    /// certificate, and only good over a connection presenting it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cnf: Option<Confirmation>,
    /// RFC 9068 §2.2.3.1 `roles`: a flat list, omitted when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
}

/// The `cnf` claim of a certificate-bound token (RFC 8705 §3.1).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Confirmation {
    /// base64url SHA-256 of the DER certificate.
    #[serde(rename = "x5t#S256")]
    pub x5t_s256: String,
}

impl AccessClaims {
    /// True unless the token is bound to a certificate other than the one
    /// whose DER is `presented` (or bound, and none was presented).
    pub fn confirmed_by(&self, presented: Option<&[u8]>) -> bool {
        match &self.cnf {
            None => true,
            Some(cnf) => presented.is_some_and(|der| cnf.x5t_s256 == x5t_s256(der)),
        }
    }
}

/// The RFC 8705 `x5t#S256` of a DER certificate: base64url SHA-256.
pub fn x5t_s256(der: &[u8]) -> String {
    use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
    URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der))
}

impl AccessClaims {
    /// The granted scopes.
    pub fn scopes(&self) -> impl Iterator<Item = &str> {
        split_scopes(&self.scope)
    }

    /// True when the token grants `scope`.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes().any(|s| s == scope)
    }
}

/// The scopes of a space-separated scope string (RFC 6749 §3.3). The one
/// place that splits one.
pub fn split_scopes(joined: &str) -> impl Iterator<Item = &str> {
    joined.split(' ').filter(|s| !s.is_empty())
}

/// The `aud` claim: one string or a list of strings (RFC 7519 §4.1.3).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum Audience {
    /// A single audience, as Tessera writes it.
    One(String),
    /// A list of audiences.
    Many(Vec<String>),
}

impl<'de> Deserialize<'de> for Audience {
    /// Read in one pass (an untagged derive would buffer the value first).
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(AudienceVisitor)
    }
}

struct AudienceVisitor;

impl<'de> Visitor<'de> for AudienceVisitor {
    type Value = Audience;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string or a list of strings")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Audience, E> {
        Ok(Audience::One(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Audience, E> {
        Ok(Audience::One(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Audience, A::Error> {
        let mut many = Vec::new();
        while let Some(one) = seq.next_element()? {
            many.push(one);
        }
        Ok(Audience::Many(many))
    }
}

impl Audience {
    /// The audiences, in order.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        let slice = match self {
            Self::One(one) => std::slice::from_ref(one),
            Self::Many(many) => many.as_slice(),
        };
        slice.iter().map(String::as_str)
    }

    /// True when `audience` is one of them.
    pub fn contains(&self, audience: &str) -> bool {
        self.iter().any(|a| a == audience)
    }

    /// The audiences as a list.
    pub fn to_vec(&self) -> Vec<String> {
        self.iter().map(str::to_owned).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_split_on_spaces_and_skip_empty_items() {
        assert_eq!(
            split_scopes(" read  write ").collect::<Vec<_>>(),
            ["read", "write"]
        );
        assert_eq!(split_scopes("").count(), 0);
    }

    #[test]
    fn a_bound_token_is_confirmed_only_by_its_certificate() {
        let mut claims: AccessClaims = serde_json::from_value(serde_json::json!({
            "iss": "i", "sub": "s", "aud": "a", "exp": 2, "iat": 1, "nbf": 1,
            "jti": "j", "client_id": "c", "scope": "", "sid": "s",
        }))
        .unwrap();
        assert!(
            claims.confirmed_by(None),
            "an unbound token needs no certificate"
        );
        claims.cnf = Some(Confirmation {
            x5t_s256: x5t_s256(b"the certificate"),
        });
        assert!(claims.confirmed_by(Some(b"the certificate")));
        assert!(!claims.confirmed_by(Some(b"another certificate")));
        assert!(!claims.confirmed_by(None));
        let json = serde_json::to_value(&claims).unwrap();
        assert!(json["cnf"]["x5t#S256"].is_string(), "{json}");
    }

    #[test]
    fn an_audience_is_one_string_or_a_list() {
        let one: Audience = serde_json::from_str(r#""api""#).unwrap();
        let many: Audience = serde_json::from_str(r#"["api","billing"]"#).unwrap();
        assert!(one.contains("api") && !one.contains("billing"));
        assert!(many.contains("billing"));
        assert!(serde_json::from_str::<Audience>("42").is_err());
        assert!(serde_json::from_str::<Audience>(r#"["api",42]"#).is_err());
        assert!(serde_json::from_str::<Audience>(r#"{"api":1}"#).is_err());
    }
}
