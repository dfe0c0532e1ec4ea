//! Administration behind the `tessera user` and `tessera client` commands.

use secrecy::{ExposeSecret, SecretString};

use super::{
    Audience, ClientId, Password, PasswordHasher, Policy, ScopeSet, SecretHash, Username, secrets,
};
use crate::{
    clock::UnixTime,
    store::{ClientRecord, Store, StoreError, UserRecord},
};

/// Why an administrative command failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The name or id is taken.
    #[error("{0} already exists")]
    Exists(String),
    /// No such user.
    #[error("no user named {0}")]
    UnknownUser(String),
    /// The store failed.
    #[error(transparent)]
    Store(StoreError),
    /// Hashing failed.
    #[error(transparent)]
    Hash(#[from] super::HashError),
}

fn store_error(what: String) -> impl FnOnce(StoreError) -> AdminError {
    move |e| match e {
        StoreError::Conflict => AdminError::Exists(what),
        other => AdminError::Store(other),
    }
}

/// Creates a user; returns their stable id (the `sub` of their tokens).
pub async fn add_user(
    store: &dyn Store,
    hasher: &PasswordHasher,
    username: Username,
    password: &Password,
    scopes: ScopeSet,
    audiences: Vec<Audience>,
    now: UnixTime,
) -> Result<String, AdminError> {
    let user = UserRecord {
        id: secrets::random_id(),
        password_hash: hasher.hash(password).await?,
        username,
        scopes,
        audiences,
        disabled: false,
    };
    store
        .insert_user(&user, now)
        .await
        .map_err(store_error(format!("user {}", user.username)))?;
    Ok(user.id)
}

/// Disables a user and revokes all their tokens: sessions (so refresh tokens)
/// in the store, access tokens through a subject entry in the revocation log
/// that every replica follows.
pub async fn disable_user(
    store: &dyn Store,
    policy: &Policy,
    username: &Username,
    now: UnixTime,
) -> Result<String, AdminError> {
    store
        .disable_user(username, now, policy.revocation_expiry(now))
        .await
        .map_err(AdminError::Store)?
        .ok_or_else(|| AdminError::UnknownUser(username.to_string()))
}

/// Creates a client; returns its new secret, which is shown once and stored
/// only as a hash.
pub async fn add_client(
    store: &dyn Store,
    id: ClientId,
    scopes: ScopeSet,
    audiences: Vec<Audience>,
    now: UnixTime,
) -> Result<SecretString, AdminError> {
    let secret = secrets::new_client_secret();
    let client = ClientRecord {
        secret_hash: SecretHash::of(secret.expose_secret()),
        id,
        scopes,
        audiences,
        disabled: false,
    };
    store
        .insert_client(&client, now)
        .await
        .map_err(store_error(format!("client {}", client.id)))?;
    Ok(secret)
}
