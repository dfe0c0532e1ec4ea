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
    /// Access token lifetime.
    pub access_token_ttl: Duration,
    /// The longest `exp - iat` accepted, independent of the TTL, so a
    /// rolling change of the TTL never rejects live tokens another replica
    /// issued.
    pub access_token_max_lifetime: Duration,
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
            max_lifetime: self.access_token_max_lifetime,
        }
    }

    /// The rules an Introspect caller's own bearer token must meet: it must
    /// be meant for Tessera (its default audience).
    pub fn introspect_bearer_rules(&self) -> VerifyRules {
        VerifyRules {
            audience: Some(self.default_audience.as_str().to_owned()),
            ..self.verify_rules()
        }
    }

    /// How spent refresh tokens presented again are judged.
    pub fn exchange_rules(&self) -> ExchangeRules {
        ExchangeRules {
            grace: self.refresh_reuse_grace,
            max_replays: MAX_REFRESH_REPLAYS,
        }
    }

    /// How long after a key's successor activates a token the key signed
    /// may be live: the longest lifetime, the leeway, and `discovery`, how
    /// late a replica may learn of the successor (and so keep signing with
    /// the old key).
    pub fn key_retention(&self, discovery: Duration) -> Duration {
        self.access_token_max_lifetime + self.leeway + discovery
    }

    /// When a session or subject revocation made at `now` can be forgotten.
    pub fn revocation_expiry(&self, now: UnixTime) -> UnixTime {
        now.plus(self.access_token_max_lifetime + self.leeway + REVOCATION_SLACK)
    }
}
