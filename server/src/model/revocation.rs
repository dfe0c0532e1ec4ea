//! Entries of the append-only revocation log every replica follows.

use super::{InvalidInput, UnixTime};

/// What a revocation log entry denies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RevocationKind {
    /// One access token, by `jti`.
    Token,
    /// Every access token of a session, by `sid`.
    Session,
    /// Every token of a subject issued at or before the entry's time.
    Subject,
}

impl RevocationKind {
    /// The stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Token => "jti",
            Self::Session => "sid",
            Self::Subject => "sub",
        }
    }

    /// Reads the stored form.
    pub fn parse(s: &str) -> Result<Self, InvalidInput> {
        match s {
            "jti" => Ok(Self::Token),
            "sid" => Ok(Self::Session),
            "sub" => Ok(Self::Subject),
            other => Err(InvalidInput(format!("unknown revocation kind {other:?}"))),
        }
    }
}

/// One entry of the revocation log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    /// What is denied.
    pub kind: RevocationKind,
    /// The `jti`, `sid` or `sub` denied.
    pub value: String,
    /// When the revocation was made.
    pub at: UnixTime,
    /// After this no token it could deny is still live, so it can be forgotten.
    pub expires_at: UnixTime,
}
