//! Administration behind the `tessera user` and `tessera client` commands
//! (and the test harness, which sets up principals the same way).

use std::sync::Arc;

use secrecy::{ExposeSecret, SecretString};

use super::{HashError, HashingSettings, PasswordHasher, TokenSettings};
use crate::{
    model::{
        Audience, ClientId, Clock, Password, Revocation, RevocationKind, ScopeSet, SecretHash,
        Username, new_client_secret, random_id,
    },
    store::{
        ClientChange, ClientCredential, ClientRecord, Store, StoreError, UserChange, UserRecord,
    },
};

/// How a new client will authenticate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NewClientCredential {
    /// A new secret, shown once.
    Secret,
    /// A TLS client certificate naming this in its subjectAltName.
    TlsSubject(String),
    /// The TLS client certificate with this SHA-256.
    TlsCertificate([u8; 32]),
}

/// Why an administrative command failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The name or id is taken.
    #[error("{what} already exists ({hint})")]
    Exists {
        /// The principal.
        what: String,
        /// What to do instead.
        hint: String,
    },
    /// No such user.
    #[error("no user named {0} (`tessera user list` shows them)")]
    UnknownUser(String),
    /// No such client.
    #[error("no client {0} (`tessera client list` shows them)")]
    UnknownClient(String),
    /// No such client with a secret.
    #[error(
        "no client {0} with a secret (`tessera client list` shows them; a client that \
         authenticates by certificate has none to rotate)"
    )]
    NoSecret(String),
    /// A password shorter than the configured minimum.
    #[error("the password is shorter than {0} characters (TESSERA_PASSWORD_MIN_LENGTH)")]
    PasswordTooShort(usize),
    /// The store failed.
    #[error(transparent)]
    Store(StoreError),
    /// Hashing failed.
    #[error(transparent)]
    Hash(#[from] HashError),
}

/// An admin change, as an audit event: `sub` (a user's id or a client id)
/// and the name an operator knows it by.
fn audit(event: &'static str, sub: &str, name: &str) {
    tracing::info!(target: "tessera::audit", event, sub, name);
}

/// A conflict means `what` already exists; `hint` says what to do instead.
fn store_error(what: String, hint: String) -> impl FnOnce(StoreError) -> AdminError {
    move |e| match e {
        StoreError::Conflict => AdminError::Exists { what, hint },
        other => AdminError::Store(other),
    }
}

/// User and client administration over a store.
#[derive(Debug, Clone)]
pub struct Admin {
    store: Arc<dyn Store>,
    tokens: TokenSettings,
    hashing: HashingSettings,
    password_min_length: usize,
    clock: Arc<dyn Clock>,
}

impl Admin {
    /// Administration of `store`, with the deployment's token and hashing settings.
    pub fn new(
        store: Arc<dyn Store>,
        tokens: TokenSettings,
        hashing: HashingSettings,
        password_min_length: usize,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            store,
            tokens,
            hashing,
            password_min_length,
            clock,
        }
    }

    /// Creates a user; returns their stable id (the `sub` of their tokens).
    pub async fn add_user(
        &self,
        username: Username,
        password: &Password,
        scopes: ScopeSet,
        audiences: Vec<Audience>,
        roles: ScopeSet,
    ) -> Result<String, AdminError> {
        if password.chars() < self.password_min_length {
            return Err(AdminError::PasswordTooShort(self.password_min_length));
        }
        let hasher = PasswordHasher::new(&self.hashing)?;
        let user = UserRecord {
            id: random_id(),
            password_hash: hasher.hash(password).await?,
            username,
            scopes,
            audiences,
            roles,
            disabled: false,
        };
        self.store
            .insert_user(&user, self.clock.now())
            .await
            .map_err(store_error(
                format!("user {}", user.username),
                format!(
                    "`tessera user set-password {}`, `set-scopes` or `set-roles` change it",
                    user.username
                ),
            ))?;
        audit("user_added", &user.id, user.username.as_str());
        Ok(user.id)
    }

    /// Disables a user and revokes all their tokens: sessions (so refresh
    /// tokens) in the store, access tokens through a subject entry in the
    /// revocation log that every replica follows.
    pub async fn disable_user(&self, username: &Username) -> Result<String, AdminError> {
        let now = self.clock.now();
        let id = self
            .store
            .disable_user(username, now, self.tokens.revocation_expiry(now))
            .await
            .map_err(AdminError::Store)?
            .ok_or_else(|| AdminError::UnknownUser(username.to_string()))?;
        audit("user_disabled", &id, username.as_str());
        Ok(id)
    }

    /// Creates a client; returns its new secret (for a secret credential),
    /// which is shown once and stored only as a hash.
    pub async fn add_client(
        &self,
        id: ClientId,
        scopes: ScopeSet,
        audiences: Vec<Audience>,
        roles: ScopeSet,
        credential: NewClientCredential,
    ) -> Result<Option<SecretString>, AdminError> {
        let (secret, credential) = match credential {
            NewClientCredential::Secret => {
                let secret = new_client_secret();
                let hash = SecretHash::of(secret.expose_secret());
                (Some(secret), ClientCredential::Secret(hash))
            }
            NewClientCredential::TlsSubject(subject) => {
                (None, ClientCredential::TlsSubject(subject))
            }
            NewClientCredential::TlsCertificate(sha256) => {
                (None, ClientCredential::TlsCertificate(sha256))
            }
        };
        let client = ClientRecord {
            credential,
            id,
            scopes,
            audiences,
            roles,
            disabled: false,
            previous_secret: None,
        };
        self.store
            .insert_client(&client, self.clock.now())
            .await
            .map_err(store_error(
                format!("client {}", client.id),
                format!(
                    "`tessera client rotate-secret {}` gives it a new secret; `set-scopes` \
                     or `set-roles` change it",
                    client.id
                ),
            ))?;
        audit("client_added", client.id.as_str(), client.id.as_str());
        Ok(secret)
    }

    /// Enables a disabled user again (their revoked tokens stay revoked).
    pub async fn enable_user(&self, username: &Username) -> Result<(), AdminError> {
        if self
            .store
            .enable_user(username)
            .await
            .map_err(AdminError::Store)?
        {
            Ok(())
        } else {
            Err(AdminError::UnknownUser(username.to_string()))
        }
    }

    /// Every user.
    pub async fn users(&self) -> Result<Vec<UserRecord>, AdminError> {
        self.store.users().await.map_err(AdminError::Store)
    }

    /// Changes a client (disables, deletes, or gives it new scopes or
    /// roles) and revokes every token it holds, on every replica: it gets
    /// new tokens under the new terms. Tokens issued in the same second,
    /// or up to `directory::MAX_AGE` later, are denied too: replicas may
    /// still issue from their in-memory copy of the client that long, and
    /// revocations are kept to the second.
    pub async fn change_client(
        &self,
        id: &ClientId,
        change: ClientChange,
    ) -> Result<(), AdminError> {
        let event = match change {
            ClientChange::Disable => "client_disabled",
            ClientChange::Scopes(_) => "client_scopes_set",
            ClientChange::Roles(_) => "client_roles_set",
            ClientChange::Delete => "client_deleted",
        };
        let now = self.clock.now();
        if self
            .store
            .change_client(
                id,
                &change,
                now,
                crate::directory::revocation_cutoff(self.clock.now_ms()),
                self.tokens.revocation_expiry(now),
            )
            .await
            .map_err(AdminError::Store)?
        {
            audit(event, id.as_str(), id.as_str());
            Ok(())
        } else {
            Err(AdminError::UnknownClient(id.to_string()))
        }
    }

    /// Enables a disabled client again (its revoked tokens stay revoked).
    pub async fn enable_client(&self, id: &ClientId) -> Result<(), AdminError> {
        if self
            .store
            .enable_client(id)
            .await
            .map_err(AdminError::Store)?
        {
            Ok(())
        } else {
            Err(AdminError::UnknownClient(id.to_string()))
        }
    }

    /// Every client.
    pub async fn clients(&self) -> Result<Vec<ClientRecord>, AdminError> {
        self.store.clients().await.map_err(AdminError::Store)
    }

    /// Operator revocation, in force on every replica once the log is
    /// followed: every token of a subject (a user's id or a client id)
    /// issued until now, with the user's sessions; a session and its
    /// tokens; or one access token by `jti` (kept until the longest
    /// lifetime has passed).
    pub async fn revoke(&self, kind: RevocationKind, value: &str) -> Result<(), AdminError> {
        let now = self.clock.now();
        let expires_at = self.tokens.revocation_expiry(now);
        let entry = Revocation {
            kind,
            value: value.to_owned(),
            at: now,
            expires_at,
        };
        match kind {
            RevocationKind::Subject => self.store.revoke_subject(value, now, expires_at).await,
            // A session the store does not know (a client token's one-off
            // `sid`) is still denied through the log.
            RevocationKind::Session => match self.store.revoke_session(&entry).await {
                Ok(true) => Ok(()),
                Ok(false) => self.store.append_revocation(&entry).await,
                Err(e) => Err(e),
            },
            RevocationKind::Token => self.store.append_revocation(&entry).await,
        }
        .map_err(AdminError::Store)?;
        tracing::info!(
            target: "tessera::audit", event = "revoked_by_operator",
            kind = kind.as_str(), value,
        );
        Ok(())
    }

    /// Gives a secret client a new secret (returned, shown once); the old
    /// one keeps working for `overlap`, so callers can be moved over without
    /// an outage. A leaked secret: rotate with no overlap (or disable).
    pub async fn rotate_client_secret(
        &self,
        id: &ClientId,
        overlap: std::time::Duration,
    ) -> Result<SecretString, AdminError> {
        let secret = new_client_secret();
        let until = self.clock.now().plus(overlap);
        let rotated = self
            .store
            .rotate_client_secret(id, &SecretHash::of(secret.expose_secret()), until)
            .await
            .map_err(AdminError::Store)?;
        if !rotated {
            return Err(AdminError::NoSecret(id.to_string()));
        }
        tracing::info!(
            target: "tessera::audit", event = "client_secret_rotated",
            sub = id.as_str(), old_valid_until = until.as_secs(),
        );
        Ok(secret)
    }

    /// Changes a user (a new password, new scopes, or deletion) and revokes
    /// every session and token of theirs: they log in again under the new
    /// terms.
    pub async fn change_user(
        &self,
        username: &Username,
        change: AdminUserChange<'_>,
    ) -> Result<(), AdminError> {
        let (change, event) = match change {
            AdminUserChange::Password(password) => {
                if password.chars() < self.password_min_length {
                    return Err(AdminError::PasswordTooShort(self.password_min_length));
                }
                let hasher = PasswordHasher::new(&self.hashing)?;
                (
                    UserChange::Password(hasher.hash(password).await?),
                    "user_password_set",
                )
            }
            AdminUserChange::Scopes(scopes) => (UserChange::Scopes(scopes), "user_scopes_set"),
            AdminUserChange::Roles(roles) => (UserChange::Roles(roles), "user_roles_set"),
            AdminUserChange::Delete => (UserChange::Delete, "user_deleted"),
        };
        let now = self.clock.now();
        let id = self
            .store
            .change_user(username, &change, now, self.tokens.revocation_expiry(now))
            .await
            .map_err(AdminError::Store)?
            .ok_or_else(|| AdminError::UnknownUser(username.to_string()))?;
        audit(event, &id, username.as_str());
        Ok(())
    }
}

/// A change [`Admin::change_user`] makes.
#[derive(Debug)]
pub enum AdminUserChange<'a> {
    /// A new password (checked against the minimum length, then hashed).
    Password(&'a Password),
    /// New scopes.
    Scopes(ScopeSet),
    /// New roles.
    Roles(ScopeSet),
    /// Delete the user.
    Delete,
}
