//! The one mapping from domain errors to `tonic::Status`. Callers get a
//! stable, generic message; the log gets the cause chain. Nothing secret is
//! in either: the domain errors carry no credentials.

use std::error::Error;

use tonic::Status;

use crate::{domain::AuthError, store::StoreError};

impl From<AuthError> for Status {
    fn from(e: AuthError) -> Self {
        match &e {
            AuthError::InvalidInput(input) => Status::invalid_argument(input.to_string()),
            AuthError::InvalidCredentials => Status::unauthenticated("invalid credentials"),
            AuthError::InvalidGrant => {
                Status::unauthenticated("refresh token is invalid, expired or revoked")
            }
            AuthError::MissingBearer => {
                Status::unauthenticated("missing `authorization: Bearer <token>` metadata")
            }
            AuthError::InvalidBearer => {
                Status::unauthenticated("bearer token is invalid, expired or revoked")
            }
            AuthError::InsufficientScope => Status::permission_denied(format!(
                "bearer token lacks the scope {}",
                crate::domain::INTROSPECT_SCOPE
            )),
            AuthError::ScopeNotAllowed => {
                Status::permission_denied("requested scope is not allowed")
            }
            AuthError::AudienceNotAllowed => {
                Status::permission_denied("requested audience is not allowed")
            }
            AuthError::Throttled => {
                Status::resource_exhausted("too many logins in progress; retry later")
            }
            AuthError::Stale => {
                tracing::warn!("refusing to answer: revocation state is stale");
                Status::unavailable("revocation state is stale; retry on another replica")
            }
            AuthError::Store(StoreError::Unavailable(_)) => {
                tracing::error!(error = %chain(&e), "database unavailable");
                Status::unavailable("database unavailable")
            }
            AuthError::Store(_) | AuthError::Keys(_) | AuthError::Hash(_) => {
                tracing::error!(error = %chain(&e), "internal error");
                Status::internal("internal error")
            }
        }
    }
}

/// `e: cause: cause...`, for logs.
pub fn chain(e: &dyn Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
