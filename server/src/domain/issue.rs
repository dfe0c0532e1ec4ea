//! Issue: credentials for tokens (RFC 6749 §4.3 and §4.4).

use std::net::{IpAddr, Ipv4Addr};

use opentelemetry::KeyValue;
use tracing::instrument;

use super::{AuthError, Authority, Credentials, Tokens, throttle::Refusal};
use crate::{
    metrics::{label, metrics},
    model::{Audience, ScopeSet, random_id},
    store::NewSession,
};

/// An Issue request, validated.
#[derive(Debug)]
pub(crate) struct IssueCommand {
    /// Who is asking.
    pub credentials: Credentials,
    /// Requested scopes; empty means all the principal's.
    pub scopes: ScopeSet,
    /// Requested audience; `None` means the default.
    pub audience: Option<Audience>,
    /// The caller's address, for throttling and the audit log.
    pub peer: Option<IpAddr>,
}

impl Authority {
    /// Exchanges credentials for tokens: a user gets a new session with a
    /// refresh token; a client only an access token (RFC 6749 §4.4.3).
    #[instrument(skip_all, fields(grant))]
    pub(crate) async fn issue(&self, command: IssueCommand) -> Result<Tokens, AuthError> {
        let (grant, hashes) = match command.credentials {
            Credentials::Password { .. } => ("password", true),
            Credentials::ClientSecret { .. } | Credentials::ClientCertificate { .. } => {
                ("client_credentials", false)
            }
        };
        tracing::Span::current().record("grant", grant);
        let account = command.credentials.account();
        let peer = command.peer.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let _admitted = self.throttle.admit(&account, peer, hashes).await.map_err(|refusal| {
            tracing::info!(target: "tessera::audit", event = "login_throttled", grant, account, %peer);
            metrics().logins_throttled.add(1, &[]);
            match refusal {
                Refusal::Delayed(wait) => AuthError::Throttled(wait),
                Refusal::Busy => AuthError::Busy,
            }
        })?;
        let principal = match self.authenticate(command.credentials).await {
            Ok(principal) => {
                self.throttle.succeeded(&account, peer);
                principal
            }
            Err(AuthError::InvalidCredentials) => {
                tracing::info!(target: "tessera::audit", event = "login_failed", grant, account, %peer);
                metrics().auth_failures.add(
                    1,
                    &[
                        KeyValue::new("grant", grant),
                        KeyValue::new("reason", "invalid_credentials"),
                    ],
                );
                if let Some(delay) = self.throttle.failed(&account, peer) {
                    tracing::warn!(
                        account, %peer, delay_secs = delay.as_secs(),
                        "repeated failed logins: throttling this account from this address"
                    );
                }
                return Err(AuthError::InvalidCredentials);
            }
            Err(e) => return Err(e),
        };
        let entitlement = principal.entitlement(
            &command.scopes,
            command.audience,
            &self.settings.default_audience,
            random_id(),
        )?;
        let now = self.clock.now();
        let audit = |tokens: &Tokens, sid: Option<&str>| {
            metrics().tokens_issued.add(1, &label("grant", grant));
            tracing::info!(
                target: "tessera::audit", event = "login_succeeded", grant,
                sub = %principal.subject, client_id = %principal.client_id,
                sid = sid.unwrap_or(""), jti = %tokens.jti, %peer,
            );
        };
        if !principal.is_user {
            let tokens = self.mint(entitlement, None, now)?;
            audit(&tokens, None);
            return Ok(tokens);
        }
        let session = NewSession {
            sid: entitlement.sid.clone(),
            user_id: entitlement.sub.clone(),
            audience: entitlement.audience.clone(),
            created_at: now,
        };
        let (refresh_token, stored) = self.new_refresh_token(&entitlement.scopes, now);
        // The user may have been disabled while the password was checked:
        // the store decides atomically, and a disabled user gets no session.
        if !self.store.create_session(&session, &stored).await? {
            return Err(AuthError::InvalidCredentials);
        }
        let tokens = self.mint(entitlement, Some(refresh_token), now)?;
        audit(&tokens, Some(&session.sid));
        Ok(tokens)
    }
}
