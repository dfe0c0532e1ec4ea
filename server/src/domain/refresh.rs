//! Refresh: rotation with reuse detection (RFC 6749 §6, RFC 9700 §4.14.2).

use secrecy::{ExposeSecret, SecretString};
use tracing::instrument;

use super::{AuthError, Authority, Entitlement, PASSWORD_GRANT_CLIENT_ID, Tokens};
use crate::{
    model::{Presentation, ScopeSet, SecretHash},
    store::RefreshTokenRecord,
};

impl Authority {
    /// Spends a refresh token and returns a new pair. A spent token
    /// presented again within the grace window gets a pair too (a lost
    /// response must not log anyone out); after it, the session ends.
    #[instrument(skip_all)]
    pub(crate) async fn refresh(
        &self,
        token: &SecretString,
        requested: &ScopeSet,
    ) -> Result<Tokens, AuthError> {
        let now = self.clock.now();
        let grace = self.settings.refresh_reuse_grace;
        let hash = SecretHash::of(token.expose_secret());
        let mut record = self.find_refresh_token(&hash).await?;
        let scopes = record
            .scopes
            .narrow(requested)
            .map_err(AuthError::ScopeNotAllowed)?;
        let (refresh_token, successor) = self.new_refresh_token(&scopes, now);

        let mut presentation = record.state.on_presented(record.expires_at, now, grace);
        if presentation == Presentation::Rotate {
            record
                .state
                .spend(now)
                .map_err(|_| AuthError::InvalidGrant)?;
            if self
                .store
                .spend_refresh_token(&hash, &successor, now)
                .await?
            {
                return self.mint(
                    session_entitlement(&record, scopes),
                    Some(refresh_token),
                    now,
                );
            }
            // A concurrent exchange of the same token won the race: decide
            // again on what it left behind (a rotation cannot happen twice).
            record = self.find_refresh_token(&hash).await?;
            presentation = record.state.on_presented(record.expires_at, now, grace);
        }
        match presentation {
            Presentation::GraceReplay => {
                if !self
                    .store
                    .add_refresh_token(&record.sid, &successor)
                    .await?
                {
                    return Err(AuthError::InvalidGrant);
                }
                self.mint(
                    session_entitlement(&record, scopes),
                    Some(refresh_token),
                    now,
                )
            }
            Presentation::Theft => {
                tracing::warn!(sid = %record.sid, "refresh token reused after the grace window; revoking its session");
                self.revoke_session(&record.sid, now).await?;
                Err(AuthError::InvalidGrant)
            }
            Presentation::Rotate | Presentation::Refuse => Err(AuthError::InvalidGrant),
        }
    }

    async fn find_refresh_token(&self, hash: &SecretHash) -> Result<RefreshTokenRecord, AuthError> {
        self.store
            .find_refresh_token(hash)
            .await?
            .ok_or(AuthError::InvalidGrant)
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
    }
}
