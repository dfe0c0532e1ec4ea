//! Refresh: rotation with reuse detection (RFC 6749 §6, RFC 9700 §4.14.2).
//! The decision and its writes happen in one store transaction, judged by
//! the database's clock, so concurrent presentations of one token on any
//! number of replicas get one consistent outcome.

use std::net::IpAddr;

use secrecy::{ExposeSecret, SecretString};
use tracing::instrument;

use super::{AuthError, Authority, Entitlement, PASSWORD_GRANT_CLIENT_ID, Tokens};
use crate::{
    metrics::{label, metrics},
    model::{ScopeSet, SecretHash},
    store::{Exchange, ExchangeRequest, RefreshTokenRecord},
};

impl Authority {
    /// Spends a refresh token and returns a new pair. The successor keeps
    /// the presented token's scopes; only the access token narrows to
    /// `requested`. A spent token presented again within the grace window,
    /// while its successor is unused, gets a pair that replaces that
    /// successor (a lost response must not log anyone out); any other reuse
    /// ends the session.
    #[instrument(skip_all)]
    pub(crate) async fn refresh(
        &self,
        token: &SecretString,
        requested: &ScopeSet,
        peer: Option<IpAddr>,
    ) -> Result<Tokens, AuthError> {
        let peer = peer.map(|p| p.to_string()).unwrap_or_default();
        let now = self.clock.now();
        let (refresh_token, successor) = self.new_successor(now);
        let exchange = self
            .store
            .exchange_refresh_token(&ExchangeRequest {
                presented: &SecretHash::of(token.expose_secret()),
                requested_scopes: requested,
                successor: &successor,
                now,
                rules: self.settings.exchange_rules(),
                theft_revocation_expires_at: self.settings.revocation_expiry(now),
            })
            .await?;
        let outcome = match &exchange {
            Exchange::Issued { replay: false, .. } => "rotated",
            Exchange::Issued { replay: true, .. } => "grace",
            Exchange::TheftDetected { .. } => "reuse_detected",
            Exchange::ScopeNotAllowed(_) | Exchange::Refused => "rejected",
        };
        metrics().refreshes.add(1, &label("outcome", outcome));
        match exchange {
            Exchange::Issued { record, replay } => {
                if replay {
                    tracing::info!(sid = %record.sid, "spent refresh token replayed within the grace window");
                }
                let scopes = record
                    .scopes
                    .narrow(requested)
                    .map_err(AuthError::ScopeNotAllowed)?;
                let tokens = self.mint(
                    session_entitlement(&record, scopes),
                    Some(refresh_token),
                    now,
                )?;
                tracing::info!(
                    target: "tessera::audit", event = "token_refreshed",
                    sub = %record.user_id, sid = %record.sid, jti = %tokens.jti, replay, %peer,
                );
                Ok(tokens)
            }
            Exchange::TheftDetected { record, revocation } => {
                tracing::warn!(
                    sid = %record.sid,
                    sub = %record.user_id,
                    user = %record.username,
                    %peer,
                    "refresh token reused outside the grace window; its session is revoked"
                );
                tracing::info!(
                    target: "tessera::audit", event = "refresh_reuse_detected",
                    sub = %record.user_id, sid = %record.sid, %peer,
                );
                self.revocations.apply_local(&revocation);
                Err(AuthError::InvalidGrant)
            }
            Exchange::ScopeNotAllowed(scope) => Err(AuthError::ScopeNotAllowed(scope)),
            Exchange::Refused => Err(AuthError::InvalidGrant),
        }
    }
}

/// What the access token of a session's refresh carries.
fn session_entitlement(record: &RefreshTokenRecord, scopes: ScopeSet) -> Entitlement {
    Entitlement {
        sub: record.user_id.clone(),
        client_id: PASSWORD_GRANT_CLIENT_ID.to_owned(),
        audience: record.audience.clone(),
        scopes,
        sid: record.sid.clone(),
        confirmation: None,
        roles: record.roles.clone(),
    }
}
