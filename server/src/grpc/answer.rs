//! Introspect's answer on the wire: `tessera.v1.IntrospectResponse`, encoded
//! straight from what is known of the token. An access token's answer is
//! written from its verified claims as they sit in the cache, so the hot
//! path makes no copy of a string (a generated message would own a dozen:
//! each allocated, encoded, then freed on every call).

use std::sync::Arc;

use prost::{
    DecodeError, Message,
    bytes::{Buf, BufMut},
    encoding::{self, DecodeContext, WireType},
};
use tessera::pb::IntrospectResponse;
use tessera_token::AccessClaims;

use crate::domain::Introspection;

/// `token_type` of an access token's answer.
const ACCESS_TOKEN_TYPE: &str = "access_token";

/// What Introspect sends back.
#[derive(Debug, Clone, Default)]
pub(crate) enum IntrospectAnswer {
    /// `active: false` and nothing else: the empty message.
    #[default]
    Inactive,
    /// An active access token, written from its claims.
    Access(Arc<AccessClaims>),
    /// Any other answer (a refresh token's, looked up in the store), as the
    /// generated message.
    Message(Box<IntrospectResponse>),
}

impl From<Introspection> for IntrospectAnswer {
    fn from(answer: Introspection) -> Self {
        match answer {
            Introspection::Inactive => Self::Inactive,
            Introspection::Access(claims) => Self::Access(claims),
            Introspection::Refresh(info) => Self::Message(Box::new(IntrospectResponse {
                active: true,
                scopes: info.scopes,
                client_id: info.client_id,
                username: info.username,
                token_type: "refresh_token".into(),
                exp: info.exp,
                iat: info.iat,
                nbf: info.nbf,
                sub: info.sub,
                aud: info.aud,
                iss: info.iss,
                sid: info.sid,
                ..IntrospectResponse::default()
            })),
        }
    }
}

/// One field of an access token's answer.
enum Field<'a> {
    Bool(u32, bool),
    Int(u32, i64),
    /// A singular string: left out when empty, as proto3 does.
    Text(u32, &'a str),
    /// One element of a repeated string: always written.
    Item(u32, &'a str),
}

impl Field<'_> {
    /// True for a field proto3 leaves out: a singular field at its default.
    fn is_omitted(&self) -> bool {
        match *self {
            Self::Bool(_, v) => !v,
            Self::Int(_, v) => v == 0,
            Self::Text(_, s) => s.is_empty(),
            Self::Item(..) => false,
        }
    }

    /// Encoded length.
    fn len(&self) -> usize {
        if self.is_omitted() {
            return 0;
        }
        match *self {
            Self::Bool(tag, _) => encoding::key_len(tag) + 1,
            Self::Int(tag, v) => encoding::key_len(tag) + encoding::encoded_len_varint(v as u64),
            Self::Text(tag, s) | Self::Item(tag, s) => {
                encoding::key_len(tag) + encoding::encoded_len_varint(s.len() as u64) + s.len()
            }
        }
    }

    fn encode(&self, buf: &mut impl BufMut) {
        if self.is_omitted() {
            return;
        }
        match *self {
            Self::Bool(tag, v) => {
                encoding::encode_key(tag, WireType::Varint, buf);
                buf.put_u8(u8::from(v));
            }
            // int64 is the two's complement as a 64-bit varint.
            Self::Int(tag, v) => {
                encoding::encode_key(tag, WireType::Varint, buf);
                encoding::encode_varint(v as u64, buf);
            }
            Self::Text(tag, s) | Self::Item(tag, s) => {
                encoding::encode_key(tag, WireType::LengthDelimited, buf);
                encoding::encode_varint(s.len() as u64, buf);
                buf.put_slice(s.as_bytes());
            }
        }
    }
}

/// The fields of `c`'s answer, in tag order (as prost writes them), with
/// the tags of `proto/tessera/v1/token_service.proto`.
fn access_fields(c: &AccessClaims, mut each: impl FnMut(Field<'_>)) {
    each(Field::Bool(1, true));
    c.scopes().for_each(|s| each(Field::Item(2, s)));
    each(Field::Text(3, &c.client_id));
    // 4, username: access tokens carry no personal data.
    each(Field::Text(5, ACCESS_TOKEN_TYPE));
    each(Field::Int(6, c.exp));
    each(Field::Int(7, c.iat));
    each(Field::Int(8, c.nbf));
    each(Field::Text(9, &c.sub));
    c.aud.iter().for_each(|a| each(Field::Item(10, a)));
    each(Field::Text(11, &c.iss));
    each(Field::Text(12, &c.jti));
    each(Field::Text(13, &c.sid));
    if let Some(cnf) = &c.cnf {
        each(Field::Text(14, &cnf.x5t_s256));
    }
    c.roles.iter().for_each(|r| each(Field::Item(15, r)));
}

impl Message for IntrospectAnswer {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        match self {
            Self::Inactive => {}
            Self::Access(c) => access_fields(c, |f| f.encode(buf)),
            Self::Message(m) => m.encode_raw(buf),
        }
    }

    fn encoded_len(&self) -> usize {
        match self {
            Self::Inactive => 0,
            Self::Access(c) => {
                let mut len = 0;
                access_fields(c, |f| len += f.len());
                len
            }
            Self::Message(m) => m.encoded_len(),
        }
    }

    /// The server only sends answers; one read back keeps no field.
    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn clear(&mut self) {
        *self = Self::Inactive;
    }
}

#[cfg(test)]
mod tests {
    use tessera_token::{Audience, Confirmation};

    use super::*;

    fn claims() -> AccessClaims {
        AccessClaims {
            iss: "https://tessera.example".into(),
            sub: "user-1".into(),
            aud: Audience::Many(vec!["api".into(), String::new(), "billing".into()]),
            exp: 1_900_000_000,
            iat: 1_899_999_000,
            nbf: -5,
            jti: "jti-1".into(),
            client_id: "svc".into(),
            scope: "read  write ünïcode".into(),
            sid: "sid-1".into(),
            cnf: Some(Confirmation {
                x5t_s256: "x5t".into(),
            }),
            roles: vec!["admin".into(), "ops".into()],
        }
    }

    /// The same answer through prost's generated code, field by field.
    fn generated(c: &AccessClaims) -> IntrospectResponse {
        IntrospectResponse {
            active: true,
            scopes: c.scopes().map(str::to_owned).collect(),
            client_id: c.client_id.clone(),
            username: String::new(),
            token_type: "access_token".into(),
            exp: c.exp,
            iat: c.iat,
            nbf: c.nbf,
            sub: c.sub.clone(),
            aud: c.aud.to_vec(),
            iss: c.iss.clone(),
            jti: c.jti.clone(),
            sid: c.sid.clone(),
            cnf_x5t_s256: c
                .cnf
                .as_ref()
                .map(|c| c.x5t_s256.clone())
                .unwrap_or_default(),
            roles: c.roles.clone(),
        }
    }

    #[test]
    fn an_access_answer_is_byte_for_byte_what_the_generated_message_writes() {
        let full = claims();
        let bare = AccessClaims {
            aud: Audience::One("api".into()),
            scope: String::new(),
            sid: String::new(),
            cnf: None,
            roles: Vec::new(),
            exp: 0,
            ..claims()
        };
        for c in [full, bare] {
            let answer = IntrospectAnswer::Access(Arc::new(c.clone()));
            let bytes = answer.encode_to_vec();
            assert_eq!(bytes, generated(&c).encode_to_vec());
            assert_eq!(answer.encoded_len(), bytes.len());
            let decoded = IntrospectResponse::decode(bytes.as_slice()).unwrap();
            assert_eq!(decoded, generated(&c));
        }
    }

    #[test]
    fn the_full_answer_carries_every_claim_and_the_empty_audience() {
        let decoded = IntrospectResponse::decode(
            &*IntrospectAnswer::Access(Arc::new(claims())).encode_to_vec(),
        )
        .unwrap();
        assert!(decoded.active);
        assert_eq!(decoded.scopes, ["read", "write", "ünïcode"]);
        assert_eq!(decoded.aud, ["api", "", "billing"]);
        assert_eq!(decoded.nbf, -5);
        assert_eq!(decoded.cnf_x5t_s256, "x5t");
        assert_eq!(decoded.roles, ["admin", "ops"]);
        assert_eq!(decoded.token_type, "access_token");
        assert!(decoded.username.is_empty());
    }

    #[test]
    fn inactive_is_the_empty_message_and_other_answers_are_the_generated_ones() {
        assert!(IntrospectAnswer::Inactive.encode_to_vec().is_empty());
        let message = IntrospectResponse {
            active: true,
            username: "alice".into(),
            token_type: "refresh_token".into(),
            ..IntrospectResponse::default()
        };
        assert_eq!(
            IntrospectAnswer::Message(Box::new(message.clone())).encode_to_vec(),
            message.encode_to_vec()
        );
    }
}
