//! Checking incoming bearer tokens in a service that receives calls:
//! through Tessera's `Introspect` ([`IntrospectionVerifier`], sees
//! revocations within a budget) or locally through the JWKS
//! ([`JwksVerifier`], no call per token, sees no revocations), and a tower
//! layer ([`VerifyLayer`]) that enforces scopes per gRPC method.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{SystemTime, UNIX_EPOCH},
};

use async_trait::async_trait;
use tessera_token::AccessClaims;

mod introspect;
mod jwks;
mod layer;

pub use introspect::{IntrospectionConfig, IntrospectionVerifier};
pub use jwks::{JwksConfig, JwksVerifier};
pub use layer::{ScopeRules, VerifyLayer, VerifyService};

/// What a verified token says, put into request extensions for handlers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedClaims {
    /// Subject: a user's stable id or a client id.
    pub sub: String,
    /// The client the token was issued to.
    pub client_id: String,
    /// Granted scopes.
    pub scopes: Vec<String>,
    /// Audiences.
    pub aud: Vec<String>,
    /// Issuer.
    pub iss: String,
    /// Expiry (Unix seconds).
    pub exp: i64,
    /// Token id.
    pub jti: String,
    /// Session id.
    pub sid: String,
    /// For a certificate-bound token (RFC 8705): the base64url SHA-256 of
    /// the client certificate it may only be presented with.
    pub cnf_x5t_s256: Option<String>,
    /// Roles (RFC 9068 §2.2.3.1 `roles`).
    pub roles: Vec<String>,
}

impl VerifiedClaims {
    /// True when the token carries `scope`.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }

    /// True when the token carries `role`.
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }

    /// True unless the token is bound to a certificate other than the one
    /// whose DER is `presented` (or bound, and none was presented).
    pub fn confirmed_by(&self, presented: Option<&[u8]>) -> bool {
        match &self.cnf_x5t_s256 {
            None => true,
            Some(bound) => presented.is_some_and(|der| *bound == tessera_token::x5t_s256(der)),
        }
    }
}

impl From<AccessClaims> for VerifiedClaims {
    fn from(claims: AccessClaims) -> Self {
        Self {
            scopes: claims.scopes().map(str::to_owned).collect(),
            aud: claims.aud.to_vec(),
            sub: claims.sub,
            client_id: claims.client_id,
            iss: claims.iss,
            exp: claims.exp,
            jti: claims.jti,
            sid: claims.sid,
            cnf_x5t_s256: claims.cnf.map(|cnf| cnf.x5t_s256),
            roles: claims.roles,
        }
    }
}

/// Seconds since the Unix epoch by the local clock.
pub(crate) fn unix_now() -> i64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since.as_secs()).unwrap_or(i64::MAX)
}

/// Why a token was not accepted.
#[derive(Debug, Clone, thiserror::Error)]
pub enum VerifyError {
    /// Invalid, expired, revoked or unknown.
    #[error("token is not active")]
    Inactive,
    /// The token could not be checked (the token service is unreachable).
    #[error("token could not be verified: {0}")]
    Unavailable(String),
    /// A certificate-bound token presented without that certificate: a
    /// stolen token is useless without the key (RFC 8705 §3).
    #[error("token is bound to another client certificate")]
    WrongCertificate,
}

/// Something that can check a bearer token.
#[async_trait]
pub trait Verifier: Send + Sync + 'static {
    /// The token's claims if it is active. A certificate-bound token is not
    /// checked against any connection here: use [`Self::verify_presented`]
    /// where the caller's certificate is known.
    async fn verify(&self, token: &str) -> Result<Arc<VerifiedClaims>, VerifyError>;

    /// The token's claims if it is active and, when it is bound to a client
    /// certificate, was presented over a connection with that certificate
    /// (`presented`: the DER of the caller's certificate, if any).
    async fn verify_presented(
        &self,
        token: &str,
        presented: Option<&[u8]>,
    ) -> Result<Arc<VerifiedClaims>, VerifyError> {
        let claims = self.verify(token).await?;
        if claims.confirmed_by(presented) {
            Ok(claims)
        } else {
            Err(VerifyError::WrongCertificate)
        }
    }
}

impl std::fmt::Debug for dyn Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Verifier")
    }
}

/// Counters kept by a verifier.
#[derive(Debug, Default)]
pub struct VerifyMetrics {
    /// Answers served from the cache.
    pub cache_hits: AtomicU64,
    /// Lookups that reached the token service (or fetched keys).
    pub lookups: AtomicU64,
    /// Tokens found inactive.
    pub inactive: AtomicU64,
    /// Checks that failed for want of the token service.
    pub unavailable: AtomicU64,
}

impl VerifyMetrics {
    /// Counts an event here and in the OpenTelemetry counter
    /// `tessera_client_verifications_total{event}` (through the global meter
    /// provider: nothing is exported unless the application sets one).
    pub(crate) fn bump(counter: &AtomicU64, event: &'static str) {
        counter.fetch_add(1, Ordering::Relaxed);
        crate::otel::verifications().add(1, &[opentelemetry::KeyValue::new("event", event)]);
    }

    /// A counter's value.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
