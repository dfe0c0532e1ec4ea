//! The leaf of the crate: names, secrets, time, revocation entries, client
//! certificates and the refresh token's life. It imports nothing from the rest of the crate, so
//! `store`, `keys`, `revocation` and `domain` all depend down onto it and
//! never on each other's types for these.

mod certificate;
mod names;
mod refresh;
mod revocation;
mod secrets;
mod time;

pub use certificate::{ClientCertificate, parse_sha256};
pub use names::{Audience, ClientId, Scope, ScopeSet, Username};
pub(crate) use refresh::Presentation;
pub use refresh::{ExchangeRules, RefreshTokenState};
pub use revocation::{Revocation, RevocationKind};
pub use secrets::{Password, SecretHash, random_id};
pub(crate) use secrets::{new_client_secret, new_refresh_token, random_bytes};
pub(crate) use time::secs;
pub use time::{Clock, ManualClock, SystemClock, UnixTime};

/// A value that failed validation. The text names what was wrong (and, for
/// values that are not secret, the value) and is safe to show the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidInput(pub String);

impl InvalidInput {
    /// An error with a fixed message.
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}
