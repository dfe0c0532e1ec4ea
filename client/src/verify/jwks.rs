//! Local verification against Tessera's JWKS: no call per token, and the
//! same checks as the server's, because both are `tessera_token`'s: `typ`
//! must be `at+jwt`, no `crit` and no keys carried by the token, the key is
//! chosen by `kid` from the fetched set only and pins its algorithm, every
//! claim is required, and `iss`, `aud`, lifetime and time are checked. An
//! unknown `kid` triggers one refetch, at most once per `min_refetch`.
//! Revocations are not seen: use [`super::IntrospectionVerifier`] for that.

use std::{collections::HashMap, sync::Arc, time::Duration};

use async_trait::async_trait;
use jsonwebtoken::jwk::JwkSet;
use parking_lot::{Mutex, RwLock};
use tessera::pb::{GetJwksRequest, token_service_client::TokenServiceClient};
use tessera_token::{VerifyRules, VerifyingKey};
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};
use tracing::Instrument;

use super::{VerifiedClaims, Verifier, VerifyError, VerifyMetrics, unix_now};
use crate::transport::{Transport, TransportError};

/// What [`JwksVerifier`] accepts.
#[derive(Debug, Clone)]
pub struct JwksConfig {
    /// The only accepted `iss`.
    pub issuer: String,
    /// This service's audience; tokens must name it in `aud`.
    pub audience: String,
    /// Clock skew tolerated.
    pub leeway: Duration,
    /// The longest lifetime (`exp - iat`) accepted: the token service's
    /// `TESSERA_ACCESS_TOKEN_MAX_LIFETIME`.
    pub max_lifetime: Duration,
    /// Least time between two fetches of the key set.
    pub min_refetch: Duration,
}

impl JwksConfig {
    /// Tessera's defaults for `issuer`, with `audience` this service's name.
    pub fn new(issuer: impl Into<String>, audience: impl Into<String>) -> Self {
        Self {
            issuer: issuer.into(),
            audience: audience.into(),
            leeway: Duration::from_secs(5),
            max_lifetime: Duration::from_secs(24 * 3600),
            min_refetch: Duration::from_secs(10),
        }
    }

    fn rules(&self) -> VerifyRules {
        VerifyRules {
            issuer: self.issuer.clone(),
            audience: Some(self.audience.clone()),
            leeway: self.leeway,
            max_lifetime: self.max_lifetime,
        }
    }
}

/// Verifies tokens locally with keys from `GetJwks`.
#[derive(Debug)]
pub struct JwksVerifier {
    client: TokenServiceClient<Channel>,
    min_refetch: Duration,
    rules: VerifyRules,
    keys: RwLock<Arc<HashMap<String, Arc<VerifyingKey>>>>,
    last_fetch: Mutex<Option<Instant>>,
    metrics: VerifyMetrics,
}

impl JwksVerifier {
    /// A verifier fetching keys from the Tessera at `endpoint` over
    /// `transport` (`GetJwks` is public). Connects lazily.
    pub fn connect(
        endpoint: &Endpoint,
        transport: &Transport,
        config: &JwksConfig,
    ) -> Result<Self, TransportError> {
        Ok(Self::new(
            transport.prepare(endpoint)?.connect_lazy(),
            config,
        ))
    }

    fn new(channel: Channel, config: &JwksConfig) -> Self {
        Self {
            client: TokenServiceClient::new(channel),
            min_refetch: config.min_refetch,
            rules: config.rules(),
            keys: RwLock::new(Arc::new(HashMap::new())),
            last_fetch: Mutex::new(None),
            metrics: VerifyMetrics::default(),
        }
    }

    /// The verifier's counters.
    pub fn metrics(&self) -> &VerifyMetrics {
        &self.metrics
    }

    fn key(&self, kid: &str) -> Option<Arc<VerifyingKey>> {
        self.keys.read().get(kid).cloned()
    }

    /// Fetches the key set unless it was fetched within `min_refetch`.
    async fn refetch(&self) -> Result<(), VerifyError> {
        {
            let mut last = self.last_fetch.lock();
            if last.is_some_and(|at| at.elapsed() < self.min_refetch) {
                return Ok(());
            }
            *last = Some(Instant::now());
        }
        VerifyMetrics::bump(&self.metrics.lookups, "lookups");
        let json = self
            .client
            .clone()
            .get_jwks(GetJwksRequest {})
            .await
            .map_err(|s| VerifyError::Unavailable(s.message().to_owned()))?
            .into_inner()
            .jwks_json;
        let set: JwkSet =
            serde_json::from_str(&json).map_err(|e| VerifyError::Unavailable(e.to_string()))?;
        // A key Tessera would not sign with (no kid, another algorithm) is
        // left out, so no token can select it.
        let keys = set
            .keys
            .iter()
            .filter_map(|jwk| VerifyingKey::from_jwk(jwk).ok())
            .map(|key| (key.kid().to_owned(), Arc::new(key)))
            .collect();
        *self.keys.write() = Arc::new(keys);
        Ok(())
    }

    async fn verify_here(&self, token: &str) -> Result<Arc<VerifiedClaims>, VerifyError> {
        let inactive = |reason: tessera_token::Rejected| {
            tracing::debug!(%reason, "token rejected");
            VerifyMetrics::bump(&self.metrics.inactive, "inactive");
            VerifyError::Inactive
        };
        let parsed = tessera_token::parse(token).map_err(inactive)?;
        let key = match self.key(parsed.kid()) {
            Some(key) => {
                VerifyMetrics::bump(&self.metrics.cache_hits, "cache_hits");
                key
            }
            None => {
                self.refetch().await?;
                self.key(parsed.kid())
                    .ok_or_else(|| inactive(tessera_token::Rejected::UnknownKey))?
            }
        };
        let claims = parsed
            .verify(&key, &self.rules, unix_now())
            .map_err(inactive)?;
        Ok(Arc::new(claims.into()))
    }
}

#[async_trait]
impl Verifier for JwksVerifier {
    async fn verify(&self, token: &str) -> Result<Arc<VerifiedClaims>, VerifyError> {
        let span = tracing::debug_span!("tessera.verify", via = "jwks");
        self.verify_here(token).instrument(span).await
    }
}
