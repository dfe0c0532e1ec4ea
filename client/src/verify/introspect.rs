//! Verification through Tessera's `Introspect`, with a short cache.
//!
//! Answers are cached by SHA-256 of the token (the token itself is never a
//! key in memory longer than the call), for no longer than the token's
//! expiry nor the revocation budget: a revoked token is refused at most
//! `revocation_budget` after the revocation. Negative answers are cached only
//! briefly, failures not at all. Concurrent lookups of one token share one
//! call.

use std::{collections::HashMap, sync::Arc, time::Duration};

use async_trait::async_trait;
use aws_lc_rs::digest;
use parking_lot::Mutex;
use tessera::pb::{IntrospectRequest, token_service_client::TokenServiceClient};
use tessera_token::MAX_TOKEN_BYTES;
use tokio::{sync::OnceCell, time::Instant};
use tonic::{
    service::interceptor::InterceptedService,
    transport::{Channel, Endpoint},
};
use tracing::Instrument;

use super::{VerifiedClaims, Verifier, VerifyError, VerifyMetrics, unix_now};
use crate::{
    interceptor::AuthInterceptor,
    transport::{Transport, TransportError},
};

/// What [`IntrospectionVerifier`] accepts, and its cache bounds.
#[derive(Debug, Clone)]
pub struct IntrospectionConfig {
    /// This service's audience: an active token not meant for it (`aud`
    /// without it) is refused, as [`super::JwksVerifier`] refuses it.
    pub audience: String,
    /// Longest a positive answer is reused: how late a revocation may be noticed.
    pub revocation_budget: Duration,
    /// How long a negative answer is reused.
    pub negative_ttl: Duration,
    /// Most cached answers.
    pub max_entries: usize,
    /// Deadline of each Introspect call.
    pub rpc_timeout: Duration,
}

impl IntrospectionConfig {
    /// Defaults (5 s revocation budget, 1 s negative answers, 100,000
    /// entries, 2 s per call) for a service whose audience is `audience`.
    pub fn new(audience: impl Into<String>) -> Self {
        Self {
            audience: audience.into(),
            revocation_budget: Duration::from_secs(5),
            negative_ttl: Duration::from_secs(1),
            max_entries: 100_000,
            rpc_timeout: Duration::from_secs(2),
        }
    }
}

type Key = [u8; 32];
type Answer = Result<Arc<VerifiedClaims>, VerifyError>;

#[derive(Debug)]
struct Entry {
    answer: Answer,
    until: Instant,
}

/// Checks tokens by calling `Introspect`, authenticated by the service's own
/// token (an [`AuthInterceptor`] on the channel).
#[derive(Debug)]
pub struct IntrospectionVerifier {
    client: TokenServiceClient<InterceptedService<Channel, AuthInterceptor>>,
    config: IntrospectionConfig,
    cache: Mutex<HashMap<Key, Entry>>,
    inflight: Mutex<HashMap<Key, Arc<OnceCell<Answer>>>>,
    metrics: VerifyMetrics,
}

impl IntrospectionVerifier {
    /// A verifier calling the Tessera at `endpoint` over `transport`, with
    /// `auth` attaching the service's own token (which needs the
    /// `tessera:introspect` scope). Connects lazily.
    pub fn connect(
        endpoint: &Endpoint,
        transport: &Transport,
        auth: AuthInterceptor,
        config: IntrospectionConfig,
    ) -> Result<Self, TransportError> {
        let channel = transport.prepare(endpoint)?.connect_lazy();
        Ok(Self {
            client: TokenServiceClient::with_interceptor(channel, auth),
            config,
            cache: Mutex::new(HashMap::new()),
            inflight: Mutex::new(HashMap::new()),
            metrics: VerifyMetrics::default(),
        })
    }

    /// The verifier's counters.
    pub fn metrics(&self) -> &VerifyMetrics {
        &self.metrics
    }

    fn cached(&self, key: &Key) -> Option<Answer> {
        let cache = self.cache.lock();
        cache
            .get(key)
            .filter(|e| Instant::now() < e.until)
            .map(|e| e.answer.clone())
    }

    fn remember(&self, key: Key, answer: &Answer) {
        let until = match answer {
            Ok(claims) => {
                Instant::now() + self.config.revocation_budget.min(until_expiry(claims.exp))
            }
            Err(VerifyError::Inactive | VerifyError::WrongCertificate) => {
                Instant::now() + self.config.negative_ttl
            }
            Err(VerifyError::Unavailable(_)) => return,
        };
        let mut cache = self.cache.lock();
        if cache.len() >= self.config.max_entries {
            let now = Instant::now();
            cache.retain(|_, e| now < e.until);
            if cache.len() >= self.config.max_entries {
                cache.clear();
            }
        }
        cache.insert(
            key,
            Entry {
                answer: answer.clone(),
                until,
            },
        );
    }

    async fn introspect(&self, token: &str) -> Answer {
        VerifyMetrics::bump(&self.metrics.lookups, "lookups");
        let request = IntrospectRequest {
            token: token.to_owned(),
            token_type_hint: 1,
        };
        let mut client = self.client.clone();
        let response =
            match tokio::time::timeout(self.config.rpc_timeout, client.introspect(request)).await {
                Ok(Ok(response)) => response.into_inner(),
                Ok(Err(status)) => {
                    return Err(VerifyError::Unavailable(format!(
                        "{:?}: {}",
                        status.code(),
                        status.message()
                    )));
                }
                Err(_) => return Err(VerifyError::Unavailable("introspection timed out".into())),
            };
        if !response.active || response.token_type != "access_token" {
            return Err(VerifyError::Inactive);
        }
        if !response.aud.contains(&self.config.audience) {
            tracing::debug!("active token refused: not meant for this service's audience");
            return Err(VerifyError::Inactive);
        }
        Ok(Arc::new(VerifiedClaims {
            sub: response.sub,
            client_id: response.client_id,
            scopes: response.scopes,
            aud: response.aud,
            iss: response.iss,
            exp: response.exp,
            jti: response.jti,
            sid: response.sid,
            cnf_x5t_s256: Some(response.cnf_x5t_s256).filter(|c| !c.is_empty()),
            roles: response.roles,
        }))
    }
}

#[async_trait]
impl Verifier for IntrospectionVerifier {
    async fn verify(&self, token: &str) -> Result<Arc<VerifiedClaims>, VerifyError> {
        if token.is_empty() || token.len() > MAX_TOKEN_BYTES {
            return Err(VerifyError::Inactive);
        }
        let key = hash(token);
        let answer = match self.cached(&key) {
            Some(answer) => {
                VerifyMetrics::bump(&self.metrics.cache_hits, "cache_hits");
                answer
            }
            None => {
                let cell = Arc::clone(self.inflight.lock().entry(key).or_default());
                let span = tracing::debug_span!("tessera.verify", via = "introspect");
                let answer = cell
                    .get_or_init(|| async {
                        // A flight that ended between the cache check above
                        // and taking this cell has left its answer.
                        if let Some(answer) = self.cached(&key) {
                            VerifyMetrics::bump(&self.metrics.cache_hits, "cache_hits");
                            return answer;
                        }
                        let answer = self.introspect(token).await;
                        self.remember(key, &answer);
                        answer
                    })
                    .instrument(span)
                    .await
                    .clone();
                let mut inflight = self.inflight.lock();
                if inflight.get(&key).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
                    inflight.remove(&key);
                }
                answer
            }
        };
        match &answer {
            Err(VerifyError::Inactive | VerifyError::WrongCertificate) => {
                VerifyMetrics::bump(&self.metrics.inactive, "inactive");
            }
            Err(VerifyError::Unavailable(_)) => {
                VerifyMetrics::bump(&self.metrics.unavailable, "unavailable");
            }
            Ok(_) => {}
        }
        answer
    }
}

fn hash(token: &str) -> Key {
    let mut key = [0u8; 32];
    key.copy_from_slice(digest::digest(&digest::SHA256, token.as_bytes()).as_ref());
    key
}

/// Time left until a Unix-seconds expiry, by the local wall clock.
fn until_expiry(exp: i64) -> Duration {
    Duration::from_secs(u64::try_from(exp.saturating_sub(unix_now())).unwrap_or(0))
}
