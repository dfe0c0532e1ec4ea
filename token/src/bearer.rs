//! `authorization: Bearer <token>` (RFC 6750 §2.1), read the same way by the
//! server's Introspect and the client crate's `VerifyLayer`.

/// An `authorization` value that is not `Bearer <token>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("authorization metadata must be `Bearer <token>`")]
pub struct MalformedBearer;

/// The token of an `authorization` header value: the scheme is
/// case-insensitive, surrounding spaces are ignored, the token must not be
/// empty.
pub fn bearer_token(value: &[u8]) -> Result<&str, MalformedBearer> {
    let value = std::str::from_utf8(value).map_err(|_| MalformedBearer)?;
    match value.trim().split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => {
            let token = token.trim();
            if token.is_empty() || token.contains(' ') {
                Err(MalformedBearer)
            } else {
                Ok(token)
            }
        }
        _ => Err(MalformedBearer),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scheme_is_case_insensitive() {
        assert_eq!(bearer_token(b"Bearer abc"), Ok("abc"));
        assert_eq!(bearer_token(b"bearer  abc "), Ok("abc"));
        assert_eq!(bearer_token(b"BEARER abc"), Ok("abc"));
    }

    #[test]
    fn other_schemes_and_empty_tokens_are_malformed() {
        for value in [
            &b"Basic abc"[..],
            b"Bearer",
            b"Bearer ",
            b"abc",
            b"Bearer a b",
            b"\xff",
        ] {
            assert_eq!(bearer_token(value), Err(MalformedBearer), "{value:?}");
        }
    }
}
