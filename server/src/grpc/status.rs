//! The one mapping from domain errors to `tonic::Status`. Callers get a
//! stable message that names what they sent wrong but nothing internal; the
//! log gets the cause chain. Nothing secret is in either: the domain errors
//! carry no credentials.

use std::{error::Error, time::Duration};

use tessera_token::INTROSPECT_SCOPE;
use tonic::Status;

use crate::{domain::AuthError, telemetry::LogEvery};

/// Failures that hit every request while they last are logged at most this often.
const LOG_PERIOD: Duration = Duration::from_secs(10);

impl From<AuthError> for Status {
    fn from(e: AuthError) -> Self {
        match &e {
            AuthError::InvalidInput(input) => Self::invalid_argument(input.to_string()),
            AuthError::InvalidCredentials => Self::unauthenticated("invalid credentials"),
            AuthError::InvalidGrant => {
                Self::unauthenticated("refresh token is invalid, expired or revoked")
            }
            AuthError::MissingBearer => {
                Self::unauthenticated("missing `authorization: Bearer <token>` metadata")
            }
            AuthError::InvalidBearer => Self::unauthenticated("bearer token is invalid or revoked"),
            AuthError::ExpiredBearer => {
                Self::unauthenticated("bearer token has expired; get a new one")
            }
            AuthError::BearerNotForTessera => Self::unauthenticated(
                "bearer token is not meant for Tessera: issue it for Tessera's audience",
            ),
            AuthError::InsufficientScope => {
                Self::permission_denied(format!("bearer token lacks the scope {INTROSPECT_SCOPE}"))
            }
            AuthError::ScopeNotAllowed(scope) => {
                Self::permission_denied(format!("scope {scope} is not allowed"))
            }
            AuthError::AudienceNotAllowed(audience) => {
                Self::permission_denied(format!("audience {audience} is not allowed"))
            }
            AuthError::Busy => Self::resource_exhausted("too many logins in progress; retry later"),
            AuthError::Throttled(retry_after) => Self::resource_exhausted(format!(
                "too many failed logins for this account from this address; retry in {}s",
                retry_after.as_secs().max(1)
            )),
            // The health reporter logs the change of state, once.
            AuthError::Stale => {
                Self::unavailable("revocation state is stale; retry on another replica")
            }
            _ if e.is_unavailable() => {
                static UNAVAILABLE: LogEvery = LogEvery::new();
                if let Some(held_back) = UNAVAILABLE.ready(LOG_PERIOD) {
                    tracing::error!(error = %chain(&e), held_back, "database unavailable");
                }
                Self::unavailable("database unavailable")
            }
            _ => {
                tracing::error!(error = %chain(&e), "internal error");
                Self::internal("internal error")
            }
        }
    }
}

/// `e: cause: cause...`, for logs.
pub(crate) fn chain(e: &dyn Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
