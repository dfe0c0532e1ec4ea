//! Introspect: RFC 7662, the hot path. Access tokens are answered from
//! memory (key ring and revocation state); refresh tokens, which are opaque,
//! are looked up.

use std::sync::Arc;

use tessera_token::{AccessClaims, INTROSPECT_SCOPE, REFRESH_TOKEN_PREFIX, Rejected};
use tracing::instrument;

use super::{AuthError, Authority, PASSWORD_GRANT_CLIENT_ID};
use crate::{
    metrics::{label, metrics},
    model::SecretHash,
};

/// Proof that an Introspect caller was authorized: [`Authority::introspect`]
/// takes one, and only [`Authority::authorize_introspection`] makes one, so
/// no caller can skip the check.
#[derive(Debug)]
pub(crate) struct IntrospectionPermit(());

/// What is said about an active refresh token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TokenInfo {
    /// Granted scopes.
    pub(crate) scopes: Vec<String>,
    /// The client it was issued to.
    pub(crate) client_id: String,
    /// The user's name.
    pub(crate) username: String,
    /// Expiry.
    pub(crate) exp: i64,
    /// Issued at.
    pub(crate) iat: i64,
    /// Not before.
    pub(crate) nbf: i64,
    /// Subject.
    pub(crate) sub: String,
    /// Audiences.
    pub(crate) aud: Vec<String>,
    /// Issuer.
    pub(crate) iss: String,
    /// Session id.
    pub(crate) sid: String,
}

/// What Introspect reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Introspection {
    /// Invalid, expired, revoked or unknown: nothing more is said.
    Inactive,
    /// An active access token: its verified claims, shared with the cache
    /// of verified tokens (the answer is written from them, not copied).
    /// Access tokens carry no personal data, and Introspect does not look
    /// their user up.
    Access(Arc<AccessClaims>),
    /// An active refresh token, as its record says.
    Refresh(TokenInfo),
}

/// Counts an answer in `tessera_introspections_total`.
fn count(answer: &Introspection) {
    let result = match answer {
        Introspection::Inactive => "inactive",
        Introspection::Access(_) | Introspection::Refresh(_) => "active",
    };
    metrics().introspections.add(1, &label("result", result));
}

impl Authority {
    /// Checks the bearer token of an Introspect call: active, and carrying
    /// [`INTROSPECT_SCOPE`]. The permit it returns is what
    /// [`Self::introspect`] needs.
    pub(crate) fn authorize_introspection(
        &self,
        bearer: Option<&str>,
    ) -> Result<IntrospectionPermit, AuthError> {
        if !self.revocations.is_fresh() {
            return Err(AuthError::Stale);
        }
        let token = bearer.ok_or(AuthError::MissingBearer)?;
        let now = self.clock.now();
        // The signature is checked once per token (the key ring remembers);
        // revocation and scope on every call.
        let claims = match self.verify_with(token, &self.bearer_rules, now) {
            Ok(claims) => claims,
            Err(Rejected::WrongAudience) => return Err(AuthError::BearerNotForTessera),
            Err(Rejected::Expired) => return Err(AuthError::ExpiredBearer),
            Err(_) => return Err(AuthError::InvalidBearer),
        };
        if self.is_revoked(&claims) {
            return Err(AuthError::InvalidBearer);
        }
        if claims.has_scope(INTROSPECT_SCOPE) {
            Ok(IntrospectionPermit(()))
        } else {
            Err(AuthError::InsufficientScope)
        }
    }

    /// RFC 7662 introspection of `token`.
    #[instrument(skip_all)]
    pub(crate) async fn introspect(
        &self,
        _: IntrospectionPermit,
        token: &str,
    ) -> Result<Introspection, AuthError> {
        let now = self.clock.now();
        if token.starts_with(REFRESH_TOKEN_PREFIX) {
            let record = self
                .store
                .find_refresh_token(&SecretHash::of(token))
                .await?;
            let answer = match record {
                Some(r) if r.state.is_active() && r.expires_at > now => {
                    Introspection::Refresh(TokenInfo {
                        scopes: r.scopes.iter().map(str::to_owned).collect(),
                        client_id: PASSWORD_GRANT_CLIENT_ID.to_owned(),
                        username: r.username.as_str().to_owned(),
                        exp: r.expires_at.as_secs(),
                        iat: r.issued_at.as_secs(),
                        nbf: r.issued_at.as_secs(),
                        sub: r.user_id,
                        aud: vec![r.audience.as_str().to_owned()],
                        iss: self.settings.issuer.clone(),
                        sid: r.sid,
                    })
                }
                _ => Introspection::Inactive,
            };
            count(&answer);
            return Ok(answer);
        }
        let answer = match self.verify_access_token(token, now) {
            Some(claims) if !self.is_revoked(&claims) => Introspection::Access(claims),
            _ => Introspection::Inactive,
        };
        count(&answer);
        Ok(answer)
    }
}
