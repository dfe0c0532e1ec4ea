//! Revoke: RFC 7009. Possession of a token is the right to revoke it.

use std::net::IpAddr;

use tessera_token::REFRESH_TOKEN_PREFIX;
use tracing::instrument;

use super::{AuthError, Authority};
use crate::metrics::{label, metrics};
use crate::model::{RefreshTokenState, Revocation, RevocationKind, SecretHash, UnixTime};

impl Authority {
    /// Revokes a token. A refresh token ends its session (and the session's
    /// access tokens); an access token only itself. Returns once the
    /// revocation is durable and in force on this replica; unknown and
    /// invalid tokens are a silent success (no oracle).
    #[instrument(skip_all)]
    pub(crate) async fn revoke(&self, token: &str, peer: Option<IpAddr>) -> Result<(), AuthError> {
        let now = self.clock.now();
        let peer = peer.map(|p| p.to_string()).unwrap_or_default();
        if token.starts_with(REFRESH_TOKEN_PREFIX) {
            let record = self
                .store
                .find_refresh_token(&SecretHash::of(token))
                .await?;
            if let Some(record) = record.filter(|r| r.state != RefreshTokenState::Revoked) {
                self.revoke_session(&record.sid, now).await?;
                metrics().revocations.add(1, &label("kind", "session"));
                tracing::info!(
                    target: "tessera::audit", event = "session_revoked",
                    sub = %record.user_id, sid = %record.sid, %peer,
                );
            }
            return Ok(());
        }
        let Some(claims) = self.verify_access_token(token, now) else {
            return Ok(());
        };
        if self.is_revoked(&claims) {
            return Ok(());
        }
        let entry = Revocation {
            kind: RevocationKind::Token,
            value: claims.jti.clone(),
            at: now,
            expires_at: UnixTime::from_secs(claims.exp).plus(self.settings.leeway),
        };
        self.store.append_revocation(&entry).await?;
        self.revocations.apply_local(&entry);
        metrics().revocations.add(1, &label("kind", "token"));
        tracing::info!(
            target: "tessera::audit", event = "token_revoked",
            sub = %claims.sub, client_id = %claims.client_id, jti = %claims.jti, %peer,
        );
        Ok(())
    }
}
