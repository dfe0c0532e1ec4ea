//! Minting: what a token carries ([`Entitlement`]) becomes a signed access
//! token, and for a session a new refresh token beside it.

use secrecy::{ExposeSecret, SecretString};
use tessera_token::{AccessClaims, Audience as AudienceClaim, Confirmation};

use super::{AuthError, Authority};
use crate::{
    model::{Audience, ScopeSet, SecretHash, UnixTime, new_refresh_token, random_id, secs},
    store::{NewRefreshToken, Successor},
};

/// What one access token carries, decided before it is signed.
#[derive(Debug, Clone)]
pub(crate) struct Entitlement {
    /// `sub`.
    pub sub: String,
    /// `client_id`.
    pub client_id: String,
    /// `aud`.
    pub audience: Audience,
    /// `scope`.
    pub scopes: ScopeSet,
    /// `sid`: the session, or a one-off id that still groups the token for
    /// revocation.
    pub sid: String,
    /// `cnf.x5t#S256`: the client certificate the token is bound to.
    pub confirmation: Option<String>,
    /// `roles`.
    pub roles: ScopeSet,
}

/// What Issue and Refresh return.
#[derive(Debug)]
pub struct Tokens {
    /// The signed JWT.
    pub access_token: String,
    /// Seconds until it expires.
    pub expires_in: i64,
    /// A new refresh token, for users.
    pub refresh_token: Option<SecretString>,
    /// Seconds until the refresh token expires, 0 without one.
    pub refresh_expires_in: i64,
    /// The granted scopes.
    pub scopes: ScopeSet,
    /// The access token's `jti`, for the audit log.
    pub jti: String,
}

impl Authority {
    /// Signs an access token for `entitlement` at `now`, returned beside
    /// `refresh_token` (already stored by the caller) if there is one.
    pub(super) fn mint(
        &self,
        entitlement: Entitlement,
        refresh_token: Option<SecretString>,
        now: UnixTime,
    ) -> Result<Tokens, AuthError> {
        let ttl = self.settings.access_token_ttl;
        let claims = AccessClaims {
            iss: self.settings.issuer.clone(),
            sub: entitlement.sub,
            aud: AudienceClaim::One(entitlement.audience.as_str().to_owned()),
            exp: now.plus(ttl).as_secs(),
            iat: now.as_secs(),
            nbf: now.as_secs(),
            jti: random_id(),
            client_id: entitlement.client_id,
            scope: entitlement.scopes.joined(),
            sid: entitlement.sid,
            cnf: entitlement
                .confirmation
                .map(|x5t_s256| Confirmation { x5t_s256 }),
            roles: entitlement.roles.iter().map(str::to_owned).collect(),
        };
        let access_token = self.keys.sign(&claims, now)?;
        let jti = claims.jti;
        let refresh_expires_in = if refresh_token.is_some() {
            secs(self.settings.refresh_token_ttl)
        } else {
            0
        };
        Ok(Tokens {
            access_token,
            expires_in: secs(ttl),
            refresh_token,
            refresh_expires_in,
            scopes: entitlement.scopes,
            jti,
        })
    }

    /// A new session's first refresh token, and what the store keeps of it
    /// (its hash).
    pub(super) fn new_refresh_token(
        &self,
        scopes: &ScopeSet,
        now: UnixTime,
    ) -> (SecretString, NewRefreshToken) {
        let (token, successor) = self.new_successor(now);
        let stored = NewRefreshToken {
            hash: successor.hash,
            scopes: scopes.clone(),
            issued_at: successor.issued_at,
            expires_at: successor.expires_at,
        };
        (token, stored)
    }

    /// A new refresh token to succeed a presented one (it inherits that
    /// token's scopes in the store).
    pub(super) fn new_successor(&self, now: UnixTime) -> (SecretString, Successor) {
        let token = new_refresh_token();
        let successor = Successor {
            hash: SecretHash::of(token.expose_secret()),
            issued_at: now,
            expires_at: now.plus(self.settings.refresh_token_ttl),
        };
        (token, successor)
    }
}
