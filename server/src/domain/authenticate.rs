//! One authentication step for both grants: credentials in, a [`Principal`]
//! out, or one indistinguishable [`AuthError::InvalidCredentials`].

use std::sync::Arc;

use secrecy::{ExposeSecret, SecretString};

use super::{AuthError, Authority, Entitlement, PASSWORD_GRANT_CLIENT_ID};
use crate::{
    model::{
        Audience, ClientCertificate, ClientId, Password, ScopeSet, SecretHash, Username, random_id,
    },
    store::{ClientCredential, ClientRecord},
};

/// Credentials presented to Issue.
#[derive(Debug)]
pub(crate) enum Credentials {
    /// A user's name and password (password grant).
    Password {
        /// Who.
        username: Username,
        /// Their password.
        password: Password,
    },
    /// A client's id and secret (client credentials grant).
    ClientSecret {
        /// Which client.
        client_id: ClientId,
        /// Its secret.
        secret: SecretString,
    },
    /// A client's id, proved by the TLS client certificate of the
    /// connection (RFC 8705 mutual-TLS client authentication).
    ClientCertificate {
        /// Which client.
        client_id: ClientId,
        /// The connection's verified certificate.
        certificate: Arc<ClientCertificate>,
    },
}

/// Who authenticated, and what they may be granted.
#[derive(Debug, Clone)]
pub(crate) struct Principal {
    /// `sub`: a user's stable id, or the client id.
    pub subject: String,
    /// `client_id`: the client, or [`PASSWORD_GRANT_CLIENT_ID`] for a user.
    pub client_id: String,
    /// True for a user (who gets a session and refresh tokens).
    pub is_user: bool,
    /// Scopes the principal may be granted.
    pub scopes: ScopeSet,
    /// Audiences the principal may ask for besides the server default.
    pub audiences: Vec<Audience>,
    /// For a client that authenticated by certificate: the certificate's
    /// `x5t#S256`, which its tokens are bound to (RFC 8705 §3).
    pub confirmation: Option<String>,
    /// Roles its tokens carry.
    pub roles: ScopeSet,
}

impl Credentials {
    /// What the throttle and the audit log call the account: the username
    /// or client id as presented (known or not).
    pub(crate) fn account(&self) -> String {
        match self {
            Self::Password { username, .. } => format!("user:{username}"),
            Self::ClientSecret { client_id, .. } | Self::ClientCertificate { client_id, .. } => {
                format!("client:{client_id}")
            }
        }
    }
}

impl Principal {
    /// What a token for this principal carries, given the scopes and
    /// audience asked for (empty scopes: all allowed; no audience: the
    /// default), in session `sid`.
    pub(crate) fn entitlement(
        &self,
        requested_scopes: &ScopeSet,
        requested_audience: Option<Audience>,
        default_audience: &Audience,
        sid: String,
    ) -> Result<Entitlement, AuthError> {
        let scopes = self
            .scopes
            .narrow(requested_scopes)
            .map_err(AuthError::ScopeNotAllowed)?;
        let audience = match requested_audience {
            None => default_audience.clone(),
            Some(a) if a == *default_audience || self.audiences.contains(&a) => a,
            Some(a) => return Err(AuthError::AudienceNotAllowed(a)),
        };
        Ok(Entitlement {
            sub: self.subject.clone(),
            client_id: self.client_id.clone(),
            audience,
            scopes,
            sid,
            confirmation: self.confirmation.clone(),
            roles: self.roles.clone(),
        })
    }
}

impl Authority {
    /// Checks credentials. Unknown, disabled and wrong all give the same
    /// error after the same work: an unknown user's password is checked
    /// against a dummy hash, an unknown client's secret against a dummy hash.
    pub(super) async fn authenticate(
        &self,
        credentials: Credentials,
    ) -> Result<Principal, AuthError> {
        match credentials {
            Credentials::Password { username, password } => {
                let user = self.store.find_user(&username).await?;
                let verified = self
                    .hasher
                    .verify(&password, user.as_ref().map(|u| u.password_hash.as_str()))
                    .await?;
                match user {
                    Some(user) if verified.matches && !user.disabled => {
                        if verified.needs_rehash {
                            self.rehash(user.id.clone(), user.password_hash, password);
                        }
                        Ok(Principal {
                            subject: user.id,
                            client_id: PASSWORD_GRANT_CLIENT_ID.to_owned(),
                            is_user: true,
                            scopes: user.scopes,
                            audiences: user.audiences,
                            confirmation: None,
                            roles: user.roles,
                        })
                    }
                    _ => Err(AuthError::InvalidCredentials),
                }
            }
            Credentials::ClientSecret { client_id, secret } => {
                let presented = SecretHash::of(secret.expose_secret());
                let now = self.clock.now();
                self.client_login(&client_id, |client| {
                    // Compared even for an unknown client (or one that uses
                    // a certificate), so every answer costs the same.
                    let expected = match client.as_ref().map(|c| &c.credential) {
                        Some(ClientCredential::Secret(hash)) => hash.clone(),
                        _ => SecretHash::of(&random_id()),
                    };
                    // A rotated-out secret still works during its overlap;
                    // both comparisons are always made.
                    let previous = match client.as_ref().and_then(|c| c.previous_secret.as_ref()) {
                        Some((hash, until)) if *until > now => hash.clone(),
                        _ => SecretHash::of(&random_id()),
                    };
                    let matches = expected.matches(&presented) | previous.matches(&presented);
                    client_principal(client.filter(|_| matches), None)
                })
                .await
            }
            Credentials::ClientCertificate {
                client_id,
                certificate,
            } => {
                self.client_login(&client_id, |client| {
                    let matches = client.as_ref().is_some_and(|c| match &c.credential {
                        ClientCredential::TlsSubject(subject) => {
                            certificate.names.contains(subject)
                        }
                        ClientCredential::TlsCertificate(sha256) => certificate.has_sha256(sha256),
                        ClientCredential::Secret(_) => false,
                    });
                    client_principal(client.filter(|_| matches), Some(certificate.x5t_s256()))
                })
                .await
            }
        }
    }

    /// A client login checked by `check` against the in-memory copy of the
    /// client, and against the database when the copy does not hold it or
    /// refuses (it may lag a change that admits: a new secret, an enable);
    /// what the database returns is held for the next login.
    async fn client_login(
        &self,
        client_id: &ClientId,
        check: impl Fn(Option<ClientRecord>) -> Result<Principal, AuthError>,
    ) -> Result<Principal, AuthError> {
        if let Some(client) = self.clients.cached(client_id)
            && let Ok(principal) = check(Some(client))
        {
            return Ok(principal);
        }
        let begun = self.clients.begin_read();
        let client = self.store.find_client(client_id).await?;
        if let Some(record) = &client {
            self.clients.remember(begun, record.clone());
        }
        check(client)
    }
}

/// The principal of a client whose credential matched (`None`: it did not,
/// or there is no such client), unless the client is disabled.
fn client_principal(
    client: Option<ClientRecord>,
    confirmation: Option<String>,
) -> Result<Principal, AuthError> {
    match client {
        Some(client) if !client.disabled => Ok(Principal {
            subject: client.id.as_str().to_owned(),
            client_id: client.id.as_str().to_owned(),
            is_user: false,
            scopes: client.scopes,
            audiences: client.audiences,
            confirmation,
            roles: client.roles,
        }),
        _ => Err(AuthError::InvalidCredentials),
    }
}

impl Authority {
    /// Stores a new hash of a password that just verified against a hash
    /// made with older parameters, in the background (the login does not
    /// wait), unless the hash changed meanwhile (a `set-password`).
    fn rehash(&self, user_id: String, old_hash: String, password: Password) {
        let hasher = self.hasher.clone();
        let store = std::sync::Arc::clone(&self.store);
        tokio::spawn(async move {
            let result = match hasher.hash(&password).await {
                Ok(new_hash) => store
                    .replace_password_hash(&user_id, &old_hash, &new_hash)
                    .await
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match result {
                Ok(true) => {
                    tracing::info!(sub = %user_id, "password rehashed with the current argon2 parameters");
                }
                Ok(false) => {}
                Err(error) => tracing::warn!(sub = %user_id, %error, "could not rehash a password"),
            }
        });
    }
}
