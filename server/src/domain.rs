//! What Tessera does, free of gRPC and SQL: issue, refresh, revoke and
//! introspect tokens, and administer users and clients, over a [`Store`], a
//! [`KeyRing`], the in-memory [`RevocationState`] and an injected [`Clock`].
//!
//! # Layout
//! - [`Authority`] (here): the parts every use case shares.
//! - `authenticate`: credentials → [`Principal`], one step for both grants.
//! - `mint`: an [`Entitlement`] → signed access token (+ refresh token).
//! - `issue`, `refresh`, `revoke`, `introspect`: one use case each.
//! - `admin`: [`Admin`], behind the `tessera user` and `tessera client` commands.
//! - `hashing`: argon2id on a bounded pool; `settings`: [`TokenSettings`];
//!   `error`: [`AuthError`], classified here and mapped to a status in `grpc`.

use std::sync::Arc;

use tessera_token::{AccessClaims, VerifyRules};

use crate::{
    directory::ClientDirectory,
    keys::KeyRing,
    model::{Clock, Revocation, RevocationKind, UnixTime},
    revocation::{RevocationState, TokenFacts},
    store::Store,
};

mod admin;
mod authenticate;
mod error;
mod hashing;
mod introspect;
mod issue;
mod mint;
mod refresh;
mod revoke;
mod settings;
mod throttle;

pub use admin::{Admin, AdminError, AdminUserChange, NewClientCredential};
pub(crate) use authenticate::Credentials;
pub(crate) use error::AuthError;
pub use hashing::HashingSettings;
pub(crate) use hashing::{HashError, PasswordHasher};
pub(crate) use introspect::Introspection;
pub(crate) use issue::IssueCommand;
pub(crate) use mint::{Entitlement, Tokens};
pub(crate) use settings::MAX_REFRESH_REUSE_GRACE;
pub use settings::TokenSettings;
pub use throttle::ThrottleSettings;

/// The `client_id` written into tokens obtained with a password grant, which
/// names a user but no OAuth client.
pub(crate) const PASSWORD_GRANT_CLIENT_ID: &str = "tessera-password-grant";

/// The token authority: everything the RPCs do.
#[derive(Debug)]
pub(crate) struct Authority {
    store: Arc<dyn Store>,
    /// Clients in memory, for client logins.
    clients: Arc<ClientDirectory>,
    keys: Arc<KeyRing>,
    revocations: Arc<RevocationState>,
    hasher: PasswordHasher,
    clock: Arc<dyn Clock>,
    settings: TokenSettings,
    /// Derived from `settings` once, not per request: for any token, and
    /// for an Introspect caller's bearer (which must be meant for Tessera).
    rules: VerifyRules,
    bearer_rules: VerifyRules,
    /// Slows credential guessing.
    throttle: throttle::LoginThrottle,
}

impl Authority {
    /// Wires the parts together.
    pub(crate) fn new(
        store: Arc<dyn Store>,
        keys: Arc<KeyRing>,
        revocations: Arc<RevocationState>,
        hasher: PasswordHasher,
        clock: Arc<dyn Clock>,
        settings: TokenSettings,
        throttle: ThrottleSettings,
    ) -> Self {
        let rules = settings.verify_rules();
        let bearer_rules = settings.introspect_bearer_rules();
        Self {
            store,
            clients: Arc::new(ClientDirectory::new()),
            keys,
            revocations,
            hasher,
            clock,
            settings,
            rules,
            bearer_rules,
            throttle: throttle::LoginThrottle::new(throttle),
        }
    }

    /// The in-memory clients, for start-up to load and follow.
    pub(crate) fn clients(&self) -> &Arc<ClientDirectory> {
        &self.clients
    }

    /// The public signing keys, as an RFC 7517 JWK Set.
    pub(crate) fn jwks_json(&self) -> String {
        self.keys.jwks_json()
    }

    /// Why this replica cannot answer correctly now; empty when it can.
    pub(crate) fn unready_reasons(&self) -> Vec<&'static str> {
        let mut reasons = Vec::new();
        if !self.revocations.is_fresh() {
            reasons
                .push("the revocation log could not be read recently (revocation state is stale)");
        }
        if !self.keys.is_ready(self.clock.now()) {
            reasons.push("no signing key is active");
        }
        reasons
    }

    /// Signature, form and time checks; not revocation.
    fn verify_access_token(&self, token: &str, now: UnixTime) -> Option<Arc<AccessClaims>> {
        self.verify_with(token, &self.rules, now).ok()
    }

    fn verify_with(
        &self,
        token: &str,
        rules: &VerifyRules,
        now: UnixTime,
    ) -> Result<Arc<AccessClaims>, tessera_token::Rejected> {
        self.keys
            .verify(token, rules, now)
            .inspect_err(|reason| tracing::debug!(%reason, "token rejected"))
    }

    fn is_revoked(&self, claims: &AccessClaims) -> bool {
        self.revocations.is_revoked(TokenFacts::from(claims))
    }

    /// Ends a session for good: its refresh tokens in the store, its access
    /// tokens through the revocation log. In force here before returning.
    async fn revoke_session(&self, sid: &str, now: UnixTime) -> Result<(), AuthError> {
        let entry = Revocation {
            kind: RevocationKind::Session,
            value: sid.to_owned(),
            at: now,
            expires_at: self.settings.revocation_expiry(now),
        };
        self.store.revoke_session(&entry).await?;
        self.revocations.apply_local(&entry);
        Ok(())
    }
}
