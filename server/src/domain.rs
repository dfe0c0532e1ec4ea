//! What Tessera does, free of gRPC and SQL: issue, refresh, revoke and
//! introspect tokens, over a [`Store`], a [`KeyRing`], the in-memory
//! [`RevocationState`] and an injected [`Clock`].

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use secrecy::{ExposeSecret, SecretString};
use tracing::instrument;

use crate::{
    clock::{Clock, UnixTime},
    keys::{
        KeyError, KeyRing,
        jwt::{AccessClaims, OneOrMany, VerifyRules},
    },
    revocation::{RevocationState, TokenFacts},
    store::{
        NewRefreshToken, NewSession, RefreshTokenRecord, Revocation, RevocationKind, Store,
        StoreError,
    },
};

pub mod admin;
pub mod names;
pub mod password;
pub mod secrets;

pub use names::{Audience, ClientId, Scope, ScopeSet, Username};
pub use password::{HashError, HashingSettings, PasswordHasher};
pub use secrets::{Password, SecretHash};

/// The `client_id` written into tokens obtained with a password grant, which
/// names a user but no OAuth client.
pub const PASSWORD_GRANT_CLIENT_ID: &str = "tessera-password-grant";

/// The scope a bearer token needs to call Introspect.
pub const INTROSPECT_SCOPE: &str = "tessera:introspect";

/// Revocation entries for sessions and subjects outlive the last access token
/// they could deny by this much, covering a token minted in the same instant.
const REVOCATION_SLACK: Duration = Duration::from_secs(60);

/// Bound on cached Introspect bearers (one per calling service instance, in practice).
const MAX_CACHED_BEARERS: usize = 4096;

/// A request field that failed validation; the text is safe to show.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidInput(pub &'static str);

/// Why a request failed. Each variant maps to one gRPC status in
/// `grpc::status`; the sources are logged there, never shown.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Malformed input.
    #[error(transparent)]
    InvalidInput(#[from] InvalidInput),
    /// Unknown principal, wrong secret or disabled principal: deliberately one case.
    #[error("invalid credentials")]
    InvalidCredentials,
    /// A refresh token that is unknown, spent, expired or revoked.
    #[error("invalid refresh token")]
    InvalidGrant,
    /// No bearer token where one is required.
    #[error("missing bearer token")]
    MissingBearer,
    /// A bearer token that is not an active access token.
    #[error("invalid bearer token")]
    InvalidBearer,
    /// An active bearer token without the scope the call needs.
    #[error("insufficient scope")]
    InsufficientScope,
    /// Scopes beyond what the principal or token allows.
    #[error("scope not allowed")]
    ScopeNotAllowed,
    /// An audience the principal may not ask for.
    #[error("audience not allowed")]
    AudienceNotAllowed,
    /// Too much password hashing is already waiting.
    #[error("throttled")]
    Throttled,
    /// The revocation state is older than its bound: answering could honour a
    /// revoked token, so nothing is answered.
    #[error("revocation state is stale")]
    Stale,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Signing failed.
    #[error(transparent)]
    Keys(#[from] KeyError),
    /// Password hashing failed.
    #[error(transparent)]
    Hash(HashError),
}

impl From<HashError> for AuthError {
    fn from(e: HashError) -> Self {
        match e {
            HashError::Throttled => Self::Throttled,
            other => Self::Hash(other),
        }
    }
}

/// Token lifetimes and names.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Written as `iss`, required when verifying.
    pub issuer: String,
    /// Written as `aud` when a request names none.
    pub default_audience: Audience,
    /// Access token lifetime (also the longest accepted `exp - iat`).
    pub access_token_ttl: Duration,
    /// Refresh token lifetime, renewed on each rotation.
    pub refresh_token_ttl: Duration,
    /// How long a spent refresh token may be presented again and still work.
    pub refresh_reuse_grace: Duration,
    /// Clock skew tolerated when verifying.
    pub leeway: Duration,
}

impl Policy {
    /// The rules every access token is verified against.
    pub fn verify_rules(&self) -> VerifyRules {
        VerifyRules {
            issuer: self.issuer.clone(),
            leeway: self.leeway,
            max_lifetime: self.access_token_ttl,
        }
    }

    /// How long after a key stops signing a token it signed may be live.
    pub fn key_retention(&self) -> Duration {
        self.access_token_ttl + self.leeway
    }

    /// When a session or subject revocation made at `now` can be forgotten.
    pub fn revocation_expiry(&self, now: UnixTime) -> UnixTime {
        now.plus(self.access_token_ttl + self.leeway + REVOCATION_SLACK)
    }
}

/// Credentials presented to Issue.
pub enum Grant {
    /// A user's name and password.
    Password {
        /// Who.
        username: Username,
        /// Their password.
        password: Password,
    },
    /// A client's id and secret.
    ClientCredentials {
        /// Which client.
        client_id: ClientId,
        /// Its secret.
        secret: SecretString,
    },
}

/// An Issue request, validated.
pub struct IssueCommand {
    /// Credentials.
    pub grant: Grant,
    /// Requested scopes; empty means all the principal's.
    pub scopes: ScopeSet,
    /// Requested audience; `None` means the default.
    pub audience: Option<Audience>,
}

/// What Issue and Refresh return.
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
}

/// What Introspect reports.
#[derive(Debug)]
pub enum Introspection {
    /// Invalid, expired, revoked or unknown: nothing more is said.
    Inactive,
    /// An active access token.
    Access(AccessClaims),
    /// An active refresh token.
    Refresh {
        /// The stored token.
        record: RefreshTokenRecord,
        /// Issuer, for `iss`.
        issuer: String,
    },
}

/// The token authority: everything the RPCs do.
pub struct Authority {
    store: Arc<dyn Store>,
    keys: Arc<KeyRing>,
    revocations: Arc<RevocationState>,
    hasher: PasswordHasher,
    clock: Arc<dyn Clock>,
    policy: Policy,
    /// Derived from `policy` once, not per request.
    rules: VerifyRules,
    /// Claims of Introspect callers' bearer tokens whose signature was
    /// already checked: a microservice presents the same bearer on every
    /// call, and a signature check costs far more than the rest of the call.
    verified_bearers: Mutex<HashMap<String, Arc<AccessClaims>>>,
}

/// Proof that an Introspect caller was authorized; [`Authority::introspect`] takes it.
#[derive(Debug)]
pub struct IntrospectionGrant(());

impl Authority {
    /// Wires the parts together.
    pub fn new(
        store: Arc<dyn Store>,
        keys: Arc<KeyRing>,
        revocations: Arc<RevocationState>,
        hasher: PasswordHasher,
        clock: Arc<dyn Clock>,
        policy: Policy,
    ) -> Self {
        let rules = policy.verify_rules();
        Self {
            store,
            keys,
            revocations,
            hasher,
            clock,
            policy,
            rules,
            verified_bearers: Mutex::new(HashMap::new()),
        }
    }

    /// Exchanges credentials for tokens.
    #[instrument(skip_all, fields(grant))]
    pub async fn issue(&self, command: IssueCommand) -> Result<Tokens, AuthError> {
        match command.grant {
            Grant::Password { username, password } => {
                tracing::Span::current().record("grant", "password");
                let user = self.store.find_user(&username).await?;
                // Verified even for an unknown user (against a dummy hash) so
                // the answer takes as long either way.
                let matches = self
                    .hasher
                    .verify(&password, user.as_ref().map(|u| u.password_hash.as_str()))
                    .await?;
                let user = match user {
                    Some(user) if matches && !user.disabled => user,
                    _ => return Err(AuthError::InvalidCredentials),
                };
                let scopes = user
                    .scopes
                    .grant(&command.scopes)
                    .ok_or(AuthError::ScopeNotAllowed)?;
                let audience = self.audience_for(&user.audiences, command.audience)?;
                let now = self.clock.now();
                let session = NewSession {
                    sid: secrets::random_id(),
                    user_id: user.id,
                    audience,
                    created_at: now,
                };
                let (refresh_token, stored) = self.new_refresh_token(&scopes, now);
                self.store.create_session(&session, &stored).await?;
                self.tokens(
                    &session.user_id,
                    PASSWORD_GRANT_CLIENT_ID,
                    &session.audience,
                    scopes,
                    session.sid,
                    Some(refresh_token),
                    now,
                )
            }
            Grant::ClientCredentials { client_id, secret } => {
                tracing::Span::current().record("grant", "client_credentials");
                let client = self.store.find_client(&client_id).await?;
                let presented = SecretHash::of(secret.expose_secret());
                // Compared even for an unknown client, for the same timing.
                let expected = client
                    .as_ref()
                    .map_or_else(|| SecretHash::of(""), |c| c.secret_hash.clone());
                let client = match client {
                    Some(client) if expected.matches(&presented) && !client.disabled => client,
                    _ => return Err(AuthError::InvalidCredentials),
                };
                let scopes = client
                    .scopes
                    .grant(&command.scopes)
                    .ok_or(AuthError::ScopeNotAllowed)?;
                let audience = self.audience_for(&client.audiences, command.audience)?;
                let id = client.id.as_str();
                // No refresh token (RFC 6749 §4.4.3); the sid still groups the
                // token for revocation.
                self.tokens(
                    id,
                    id,
                    &audience,
                    scopes,
                    secrets::random_id(),
                    None,
                    self.clock.now(),
                )
            }
        }
    }

    /// Rotates a refresh token: spends it and returns a new pair.
    #[instrument(skip_all)]
    pub async fn refresh(
        &self,
        token: &SecretString,
        requested: &ScopeSet,
    ) -> Result<Tokens, AuthError> {
        let now = self.clock.now();
        let hash = SecretHash::of(token.expose_secret());
        let record = self
            .store
            .find_refresh_token(&hash)
            .await?
            .ok_or(AuthError::InvalidGrant)?;
        if record.session_revoked || record.expires_at <= now {
            return Err(AuthError::InvalidGrant);
        }
        let scopes = record
            .scopes
            .grant(requested)
            .ok_or(AuthError::ScopeNotAllowed)?;
        let (refresh_token, successor) = self.new_refresh_token(&scopes, now);

        let rotated = record.spent_at.is_none()
            && self
                .store
                .spend_refresh_token(&hash, &successor, now)
                .await?;
        if !rotated {
            // Spent before, or just now by a concurrent exchange of the same token.
            let spent_at = match record.spent_at {
                Some(at) => Some(at),
                None => self
                    .store
                    .find_refresh_token(&hash)
                    .await?
                    .and_then(|r| r.spent_at),
            };
            match spent_at {
                Some(at) if now <= at.plus(self.policy.refresh_reuse_grace) => {
                    // A retry after a lost response: must not log the user out.
                    if !self
                        .store
                        .add_refresh_token(&record.sid, &successor)
                        .await?
                    {
                        return Err(AuthError::InvalidGrant);
                    }
                }
                Some(_) => {
                    // RFC 9700 §4.14.2: a spent token replayed after the grace
                    // window means it leaked; end the whole session.
                    tracing::warn!(sid = %record.sid, "refresh token reused after the grace window; revoking its session");
                    self.revoke_session(&record.sid, now).await?;
                    return Err(AuthError::InvalidGrant);
                }
                None => return Err(AuthError::InvalidGrant),
            }
        }
        self.tokens(
            &record.user_id,
            PASSWORD_GRANT_CLIENT_ID,
            &record.audience,
            scopes,
            record.sid,
            Some(refresh_token),
            now,
        )
    }

    /// RFC 7009 revocation. Returns once the revocation is durable and in
    /// force on this replica; unknown and invalid tokens are a silent success.
    #[instrument(skip_all)]
    pub async fn revoke(&self, token: &str) -> Result<(), AuthError> {
        let now = self.clock.now();
        if secrets::looks_like_refresh_token(token) {
            let record = self
                .store
                .find_refresh_token(&SecretHash::of(token))
                .await?;
            if let Some(record) = record.filter(|r| !r.session_revoked) {
                self.revoke_session(&record.sid, now).await?;
            }
            return Ok(());
        }
        let Some(claims) = self.verify_access_token(token, now) else {
            return Ok(());
        };
        if self.revocations.is_revoked(facts(&claims)) {
            return Ok(());
        }
        let entry = Revocation {
            kind: RevocationKind::Token,
            value: claims.jti,
            at: now,
            expires_at: UnixTime::from_secs(claims.exp).plus(self.policy.leeway),
        };
        self.store.append_revocation(&entry).await?;
        self.revocations.apply_local(&entry);
        Ok(())
    }

    /// Checks the bearer token of an Introspect call: active, and carrying
    /// [`INTROSPECT_SCOPE`]. The grant it returns is what [`Self::introspect`]
    /// needs, so no caller can skip this step.
    pub fn authorize_introspection(
        &self,
        bearer: Option<&str>,
    ) -> Result<IntrospectionGrant, AuthError> {
        if !self.revocations.is_fresh() {
            return Err(AuthError::Stale);
        }
        let token = bearer.ok_or(AuthError::MissingBearer)?;
        let now = self.clock.now();
        let claims = match self.verified_bearer(token, now) {
            Some(claims) => claims,
            None => {
                let claims = Arc::new(
                    self.verify_access_token(token, now)
                        .ok_or(AuthError::InvalidBearer)?,
                );
                self.remember_bearer(token, &claims);
                claims
            }
        };
        // Revocation and scope are checked on every call, cached or not.
        if self.revocations.is_revoked(facts(&claims)) {
            return Err(AuthError::InvalidBearer);
        }
        if claims.scope.split(' ').any(|s| s == INTROSPECT_SCOPE) {
            Ok(IntrospectionGrant(()))
        } else {
            Err(AuthError::InsufficientScope)
        }
    }

    /// RFC 7662 introspection. Access tokens are answered from memory alone;
    /// refresh tokens (opaque) are looked up.
    pub async fn introspect(
        &self,
        _: IntrospectionGrant,
        token: &str,
    ) -> Result<Introspection, AuthError> {
        if secrets::looks_like_refresh_token(token) {
            let now = self.clock.now();
            let record = self
                .store
                .find_refresh_token(&SecretHash::of(token))
                .await?;
            return Ok(match record {
                Some(r) if !r.session_revoked && r.spent_at.is_none() && r.expires_at > now => {
                    Introspection::Refresh {
                        record: r,
                        issuer: self.policy.issuer.clone(),
                    }
                }
                _ => Introspection::Inactive,
            });
        }
        Ok(self
            .active_access_token(token)
            .map_or(Introspection::Inactive, Introspection::Access))
    }

    /// The cached claims of a bearer token already verified, unless expired.
    fn verified_bearer(&self, token: &str, now: UnixTime) -> Option<Arc<AccessClaims>> {
        let cache = self
            .verified_bearers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let claims = cache.get(token)?;
        (claims.exp > now.minus(self.policy.leeway).as_secs()).then(|| Arc::clone(claims))
    }

    fn remember_bearer(&self, token: &str, claims: &Arc<AccessClaims>) {
        let mut cache = self
            .verified_bearers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if cache.len() >= MAX_CACHED_BEARERS {
            cache.clear();
        }
        cache.insert(token.to_owned(), Arc::clone(claims));
    }

    /// The public signing keys.
    pub fn jwks_json(&self) -> String {
        self.keys.jwks_json()
    }

    /// True when this replica can answer correctly: a key can sign and the
    /// revocation state is fresh.
    pub fn is_ready(&self) -> bool {
        self.revocations.is_fresh() && self.keys.is_ready(self.clock.now())
    }

    fn active_access_token(&self, token: &str) -> Option<AccessClaims> {
        let claims = self.verify_access_token(token, self.clock.now())?;
        (!self.revocations.is_revoked(facts(&claims))).then_some(claims)
    }

    /// Signature, form and time checks; not revocation.
    fn verify_access_token(&self, token: &str, now: UnixTime) -> Option<AccessClaims> {
        self.keys
            .verify(token, &self.rules, now)
            .inspect_err(|reason| tracing::debug!(%reason, "token rejected"))
            .ok()
    }

    fn audience_for(
        &self,
        allowed: &[Audience],
        requested: Option<Audience>,
    ) -> Result<Audience, AuthError> {
        match requested {
            None => Ok(self.policy.default_audience.clone()),
            Some(a) if a == self.policy.default_audience || allowed.contains(&a) => Ok(a),
            Some(_) => Err(AuthError::AudienceNotAllowed),
        }
    }

    fn new_refresh_token(
        &self,
        scopes: &ScopeSet,
        now: UnixTime,
    ) -> (SecretString, NewRefreshToken) {
        let token = secrets::new_refresh_token();
        let stored = NewRefreshToken {
            hash: SecretHash::of(token.expose_secret()),
            scopes: scopes.clone(),
            issued_at: now,
            expires_at: now.plus(self.policy.refresh_token_ttl),
        };
        (token, stored)
    }

    async fn revoke_session(&self, sid: &str, now: UnixTime) -> Result<(), AuthError> {
        let entry = Revocation {
            kind: RevocationKind::Session,
            value: sid.to_owned(),
            at: now,
            expires_at: self.policy.revocation_expiry(now),
        };
        self.store.revoke_session(&entry).await?;
        self.revocations.apply_local(&entry);
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn tokens(
        &self,
        sub: &str,
        client_id: &str,
        audience: &Audience,
        scopes: ScopeSet,
        sid: String,
        refresh_token: Option<SecretString>,
        now: UnixTime,
    ) -> Result<Tokens, AuthError> {
        let ttl = self.policy.access_token_ttl;
        let claims = AccessClaims {
            iss: self.policy.issuer.clone(),
            sub: sub.to_owned(),
            aud: OneOrMany::One(audience.as_str().to_owned()),
            exp: now.plus(ttl).as_secs(),
            iat: now.as_secs(),
            nbf: now.as_secs(),
            jti: secrets::random_id(),
            client_id: client_id.to_owned(),
            scope: scopes.joined(),
            sid,
        };
        let access_token = self.keys.sign(&claims, now)?;
        let refresh_expires_in = if refresh_token.is_some() {
            crate::clock::secs(self.policy.refresh_token_ttl)
        } else {
            0
        };
        Ok(Tokens {
            access_token,
            expires_in: crate::clock::secs(ttl),
            refresh_token,
            refresh_expires_in,
            scopes,
        })
    }
}

fn facts(claims: &AccessClaims) -> TokenFacts<'_> {
    TokenFacts {
        jti: &claims.jti,
        sid: &claims.sid,
        sub: &claims.sub,
        iat: claims.iat,
    }
}
