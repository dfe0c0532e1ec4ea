//! Local verification against Tessera's JWKS: no call per token, hardened as
//! on the server (RFC 8725): `typ` must be `at+jwt`, no `crit` and no keys
//! carried by the token, the key is chosen by `kid` from the fetched set only
//! and pins its algorithm, `iss` and `aud` are required and checked. An
//! unknown `kid` triggers one refetch, at most once per `min_refetch`.
//! Revocations are not seen: use [`super::IntrospectionVerifier`] for that.

use std::{
    collections::HashMap,
    str::FromStr,
    sync::{Arc, Mutex, RwLock},
    time::Duration,
};

use async_trait::async_trait;
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, jwk::JwkSet};
use serde::Deserialize;
use tessera::pb::{GetJwksRequest, token_service_client::TokenServiceClient};
use tokio::time::Instant;
use tonic::transport::Channel;
use tracing::Instrument;

use super::{MAX_TOKEN_BYTES, VerifiedClaims, Verifier, VerifyError, VerifyMetrics};

/// What [`JwksVerifier`] accepts.
#[derive(Debug, Clone)]
pub struct JwksConfig {
    /// The only accepted `iss`.
    pub issuer: String,
    /// This service's audience; tokens must name it in `aud`.
    pub audience: String,
    /// Clock skew tolerated.
    pub leeway: Duration,
    /// Least time between two fetches of the key set.
    pub min_refetch: Duration,
}

/// Algorithms Tessera signs with; a key advertising anything else is ignored.
const ALGORITHMS: [&str; 3] = ["ES256", "EdDSA", "RS256"];

/// Header parameters that let a token pick its own key or demand processing.
const FORBIDDEN_HEADERS: [&str; 6] = ["crit", "jwk", "jku", "x5u", "x5c", "zip"];

struct Key {
    alg: Algorithm,
    decoding: DecodingKey,
}

/// Verifies tokens locally with keys from `GetJwks`.
pub struct JwksVerifier {
    client: TokenServiceClient<Channel>,
    config: JwksConfig,
    keys: RwLock<Arc<HashMap<String, Arc<Key>>>>,
    last_fetch: Mutex<Option<Instant>>,
    metrics: VerifyMetrics,
}

#[derive(Deserialize)]
struct Claims {
    iss: String,
    sub: String,
    aud: Audience,
    exp: i64,
    jti: String,
    client_id: String,
    #[serde(default)]
    scope: String,
    #[serde(default)]
    sid: String,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

impl JwksVerifier {
    /// A verifier fetching keys from the Tessera at `channel` (`GetJwks` is public).
    pub fn new(channel: Channel, config: JwksConfig) -> Self {
        Self {
            client: TokenServiceClient::new(channel),
            config,
            keys: RwLock::new(Arc::new(HashMap::new())),
            last_fetch: Mutex::new(None),
            metrics: VerifyMetrics::default(),
        }
    }

    /// The verifier's counters.
    pub fn metrics(&self) -> &VerifyMetrics {
        &self.metrics
    }

    fn key(&self, kid: &str) -> Option<Arc<Key>> {
        self.keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(kid)
            .cloned()
    }

    /// Fetches the key set unless it was fetched within `min_refetch`.
    async fn refetch(&self) -> Result<(), VerifyError> {
        {
            let mut last = self
                .last_fetch
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if last.is_some_and(|at| at.elapsed() < self.config.min_refetch) {
                return Ok(());
            }
            *last = Some(Instant::now());
        }
        VerifyMetrics::bump(&self.metrics.lookups);
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
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            let (Some(kid), Some(alg)) = (jwk.common.key_id.clone(), jwk.common.key_algorithm)
            else {
                continue;
            };
            let Ok(alg) = Algorithm::from_str(&alg.to_string()) else {
                continue;
            };
            if !ALGORITHMS.contains(&alg_name(alg)) {
                continue;
            }
            if let Ok(decoding) = DecodingKey::from_jwk(jwk) {
                keys.insert(kid, Arc::new(Key { alg, decoding }));
            }
        }
        *self
            .keys
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(keys);
        Ok(())
    }

    fn check(&self, token: &str, key: &Key) -> Result<VerifiedClaims, VerifyError> {
        let mut validation = Validation::new(key.alg);
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_audience(&[&self.config.audience]);
        validation.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
        validation.leeway = self.config.leeway.as_secs();
        validation.validate_nbf = true;
        let claims = jsonwebtoken::decode::<Claims>(token, &key.decoding, &validation)
            .map_err(|_| VerifyError::Inactive)?
            .claims;
        Ok(VerifiedClaims {
            sub: claims.sub,
            client_id: claims.client_id,
            scopes: claims
                .scope
                .split(' ')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
            aud: match claims.aud {
                Audience::One(a) => vec![a],
                Audience::Many(a) => a,
            },
            iss: claims.iss,
            exp: claims.exp,
            jti: claims.jti,
            sid: claims.sid,
        })
    }
}

fn alg_name(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::ES256 => "ES256",
        Algorithm::EdDSA => "EdDSA",
        Algorithm::RS256 => "RS256",
        _ => "",
    }
}

/// The `kid` of a token whose header passes the hardening checks.
fn checked_kid(token: &str) -> Option<String> {
    let mut segments = token.split('.');
    let header = segments.next()?;
    if segments.count() != 2 {
        return None;
    }
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).ok()?).ok()?;
    let typ = header.get("typ")?.as_str()?;
    let typ_ok =
        typ.eq_ignore_ascii_case("at+jwt") || typ.eq_ignore_ascii_case("application/at+jwt");
    if !typ_ok || FORBIDDEN_HEADERS.iter().any(|h| header.contains_key(*h)) {
        return None;
    }
    header.get("kid")?.as_str().map(str::to_owned)
}

#[async_trait]
impl Verifier for JwksVerifier {
    async fn verify(&self, token: &str) -> Result<Arc<VerifiedClaims>, VerifyError> {
        let span = tracing::debug_span!("tessera.verify", via = "jwks");
        self.verify_here(token).instrument(span).await
    }
}

impl JwksVerifier {
    async fn verify_here(&self, token: &str) -> Result<Arc<VerifiedClaims>, VerifyError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(VerifyError::Inactive);
        }
        let kid = checked_kid(token).ok_or(VerifyError::Inactive)?;
        let key = match self.key(&kid) {
            Some(key) => {
                VerifyMetrics::bump(&self.metrics.cache_hits);
                key
            }
            None => {
                self.refetch().await?;
                self.key(&kid).ok_or_else(|| {
                    VerifyMetrics::bump(&self.metrics.inactive);
                    VerifyError::Inactive
                })?
            }
        };
        // The header's `alg` must be the key's: jsonwebtoken rejects any
        // algorithm outside `validation.algorithms`, which holds only it.
        self.check(token, &key)
            .inspect_err(|_| VerifyMetrics::bump(&self.metrics.inactive))
            .map(Arc::new)
    }
}
