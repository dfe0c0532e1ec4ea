//! Why a request failed. Each variant maps to one gRPC status in
//! `grpc::status`; the sources are logged there, never shown.

use crate::{
    keys::KeyError,
    model::{Audience, InvalidInput, Scope},
    store::StoreError,
};

use super::HashError;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Malformed input.
    #[error(transparent)]
    InvalidInput(#[from] InvalidInput),
    /// Unknown principal, wrong secret or disabled principal: deliberately one case.
    #[error("invalid credentials")]
    InvalidCredentials,
    /// A refresh token that is unknown, spent, expired or revoked.
    #[error("invalid refresh token")]
    InvalidGrant,
    /// No bearer token where one is required.
    #[error("missing bearer token")]
    MissingBearer,
    /// A bearer token that is not an active access token.
    #[error("invalid bearer token")]
    InvalidBearer,
    /// A bearer token that was valid but has expired.
    #[error("expired bearer token")]
    ExpiredBearer,
    /// A valid bearer token meant for another service.
    #[error("bearer token is not meant for Tessera")]
    BearerNotForTessera,
    /// An active bearer token without the scope the call needs.
    #[error("insufficient scope")]
    InsufficientScope,
    /// A scope beyond what the principal or token allows (the first one).
    #[error("scope {0} is not allowed")]
    ScopeNotAllowed(Scope),
    /// An audience the principal may not ask for.
    #[error("audience {0} is not allowed")]
    AudienceNotAllowed(Audience),
    /// Too much password hashing is already waiting, or too many logins
    /// from this address are in flight.
    #[error("too many logins in progress")]
    Busy,
    /// Too many recent failures for this account from this address (or
    /// from this address): retry after this long.
    #[error("too many failed logins; retry in {}s", .0.as_secs().max(1))]
    Throttled(std::time::Duration),
    /// The revocation state is older than its bound: answering could honour a
    /// revoked token, so nothing is answered.
    #[error("revocation state is stale")]
    Stale,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Signing failed.
    #[error(transparent)]
    Keys(#[from] KeyError),
    /// Password hashing failed.
    #[error(transparent)]
    Hash(HashError),
}

impl AuthError {
    /// True when the failure is this replica's dependencies, not the
    /// request: worth retrying, on this replica or another.
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::Stale => true,
            Self::Store(e) => e.is_unavailable(),
            Self::Keys(e) => e.is_unavailable(),
            _ => false,
        }
    }
}

impl From<HashError> for AuthError {
    fn from(e: HashError) -> Self {
        match e {
            HashError::Throttled => Self::Busy,
            other => Self::Hash(other),
        }
    }
}
