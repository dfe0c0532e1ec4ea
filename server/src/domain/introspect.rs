//! Introspect: RFC 7662, the hot path. Access tokens are answered from
//! memory (key ring and revocation state); refresh tokens, which are opaque,
//! are looked up.

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

/// Which kind of token an answer is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// A JWT access token.
    Access,
    /// An opaque refresh token.
    Refresh,
}

/// What is said about an active token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    /// Access or refresh.
    pub kind: TokenKind,
    /// Granted scopes.
    pub scopes: Vec<String>,
    /// The client it was issued to.
    pub client_id: String,
    /// The user's name: refresh tokens only (access tokens carry no
    /// personal data, and Introspect does not look them up).
    pub username: Option<String>,
    /// Expiry.
    pub exp: i64,
    /// Issued at.
    pub iat: i64,
    /// Not before.
    pub nbf: i64,
    /// Subject.
    pub sub: String,
    /// Audiences.
    pub aud: Vec<String>,
    /// Issuer.
    pub iss: String,
    /// Token id (access tokens).
    pub jti: Option<String>,
    /// Session id.
    pub sid: String,
    /// `x5t#S256` of the certificate a bound token is bound to.
    pub cnf_x5t_s256: Option<String>,
    /// Roles (access tokens).
    pub roles: Vec<String>,
}

/// What Introspect reports.
// Made once per call and moved straight into the response: boxing the
// active case would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Introspection {
    /// Invalid, expired, revoked or unknown: nothing more is said.
    Inactive,
    /// Active, with what is known of it.
    Active(TokenInfo),
}

/// Counts an answer in `tessera_introspections_total`.
fn count(answer: &Introspection) {
    let result = match answer {
        Introspection::Active(_) => "active",
        Introspection::Inactive => "inactive",
    };
    metrics().introspections.add(1, &label("result", result));
}

impl From<&AccessClaims> for TokenInfo {
    fn from(c: &AccessClaims) -> Self {
        Self {
            kind: TokenKind::Access,
            scopes: c.scopes().map(str::to_owned).collect(),
            aud: c.aud.to_vec(),
            client_id: c.client_id.clone(),
            username: None,
            exp: c.exp,
            iat: c.iat,
            nbf: c.nbf,
            sub: c.sub.clone(),
            iss: c.iss.clone(),
            jti: Some(c.jti.clone()),
            sid: c.sid.clone(),
            cnf_x5t_s256: c.cnf.as_ref().map(|cnf| cnf.x5t_s256.clone()),
            roles: c.roles.clone(),
        }
    }
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
                    Introspection::Active(TokenInfo {
                        kind: TokenKind::Refresh,
                        scopes: r.scopes.iter().map(str::to_owned).collect(),
                        client_id: PASSWORD_GRANT_CLIENT_ID.to_owned(),
                        username: Some(r.username.as_str().to_owned()),
                        exp: r.expires_at.as_secs(),
                        iat: r.issued_at.as_secs(),
                        nbf: r.issued_at.as_secs(),
                        sub: r.user_id,
                        aud: vec![r.audience.as_str().to_owned()],
                        iss: self.settings.issuer.clone(),
                        jti: None,
                        sid: r.sid,
                        cnf_x5t_s256: None,
                        roles: Vec::new(),
                    })
                }
                _ => Introspection::Inactive,
            };
            count(&answer);
            return Ok(answer);
        }
        let answer = match self.verify_access_token(token, now) {
            Some(claims) if !self.is_revoked(&claims) => {
                Introspection::Active(claims.as_ref().into())
            }
            _ => Introspection::Inactive,
        };
        count(&answer);
        Ok(answer)
    }
}
