//! How tokens are named and how long they live.

use std::time::Duration;

use tessera_token::VerifyRules;

use crate::model::{Audience, ExchangeRules, UnixTime};

/// Revocation entries for sessions and subjects outlive the last access token
/// they could deny by this much, covering a token minted in the same instant.
const REVOCATION_SLACK: Duration = Duration::from_secs(60);

/// How many times one spent refresh token may be replayed inside the grace
/// window: a client retrying after lost responses, not a thief's supply.
pub(crate) const MAX_REFRESH_REPLAYS: u32 = 3;

/// The longest reuse grace window accepted.
pub(crate) const MAX_REFRESH_REUSE_GRACE: Duration = Duration::from_secs(60);

/// Token names and lifetimes.
#[derive(Debug, Clone)]
pub struct TokenSettings {
    /// Written as `iss`, required when verifying.
    pub issuer: String,
    /// Written as `aud` when a request names none.
    pub default_audience: Audience,
    /// Access token lifetime (also the longest accepted `exp - iat`).
    pub access_token_ttl: std::time::Duration,
    /// Refresh token lifetime, renewed on each rotation.
    pub refresh_token_ttl: Duration,
    /// How long a spent refresh token may be presented again and still work.
    pub refresh_reuse_grace: Duration,
    /// Clock skew tolerated when verifying.
    pub leeway: Duration,
}

impl TokenSettings {
    /// The rules every access token is verified against.
    pub fn verify_rules(&self) -> VerifyRules {
        VerifyRules {
            issuer: self.issuer.clone(),
            audience: None,
            leeway: self.leeway,
            max_lifetime: self.access_token_ttl,
        }
    }

    /// How spent refresh tokens presented again are judged.
    pub fn exchange_rules(&self) -> ExchangeRules {
        ExchangeRules {
            grace: self.refresh_reuse_grace,
            max_replays: MAX_REFRESH_REPLAYS,
        }
    }

    /// How long after a key stops signing a token it signed may be live.
    pub fn key_retention(&self) -> Duration {
        self.access_token_ttl + self.leeway
    }

    /// When a session or subject revocation made at `now` can be forgotten.
    pub fn revocation_expiry(&self, now: UnixTime) -> UnixTime {
        now.plus(self.access_token_ttl + self.leeway + REVOCATION_SLACK)
    }
}
