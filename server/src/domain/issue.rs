//! Issue: credentials for tokens (RFC 6749 §4.3 and §4.4).

use tracing::instrument;

use super::{AuthError, Authority, Credentials, Tokens};
use crate::{
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
}

impl Authority {
    /// Exchanges credentials for tokens: a user gets a new session with a
    /// refresh token; a client only an access token (RFC 6749 §4.4.3).
    #[instrument(skip_all, fields(grant))]
    pub(crate) async fn issue(&self, command: IssueCommand) -> Result<Tokens, AuthError> {
        let grant = match command.credentials {
            Credentials::Password { .. } => "password",
            Credentials::ClientSecret { .. } => "client_credentials",
        };
        tracing::Span::current().record("grant", grant);
        let principal = self.authenticate(command.credentials).await?;
        let entitlement = principal.entitlement(
            &command.scopes,
            command.audience,
            &self.settings.default_audience,
            random_id(),
        )?;
        let now = self.clock.now();
        if !principal.is_user {
            return self.mint(entitlement, None, now);
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
        self.mint(entitlement, Some(refresh_token), now)
    }
}
