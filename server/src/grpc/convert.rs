//! Protobuf ↔ domain: requests are validated into domain types here, and
//! answers turned back into messages.

use secrecy::{ExposeSecret, SecretString};
use tessera::pb::{IssueRequest, IssueResponse, RefreshResponse, issue_request::Grant as PbGrant};
use tessera_token::MAX_TOKEN_BYTES;
use tonic::metadata::MetadataMap;

use crate::{
    domain::{AuthError, Credentials, IssueCommand, Tokens},
    model::{Audience, ClientId, InvalidInput, Password, ScopeSet, Username},
    transport::PeerInfo,
};

/// Longest client secret accepted (Tessera's are 47 bytes).
const MAX_CLIENT_SECRET_BYTES: usize = 256;

/// `token`, unless it is empty (`missing` says which field) or over 8 KiB.
pub(super) fn required_token(token: String, missing: &'static str) -> Result<String, AuthError> {
    if token.is_empty() {
        return Err(InvalidInput::new(missing).into());
    }
    if token.len() > MAX_TOKEN_BYTES {
        return Err(InvalidInput::new("token is larger than 8 KiB").into());
    }
    Ok(token)
}

/// The token of `authorization: Bearer <token>`, if the header is present.
pub(super) fn bearer_token(metadata: &MetadataMap) -> Result<Option<&str>, tonic::Status> {
    metadata
        .get("authorization")
        .map(|value| {
            tessera_token::bearer_token(value.as_bytes())
                .map_err(|e| tonic::Status::unauthenticated(e.to_string()))
        })
        .transpose()
}

/// The caller's address, when the transport recorded it.
pub(super) fn peer_ip<T>(request: &tonic::Request<T>) -> Option<std::net::IpAddr> {
    request
        .extensions()
        .get::<PeerInfo>()
        .map(|peer| peer.remote_addr.ip())
}

/// An Issue request, validated, with the caller's address.
pub(super) fn issue_command(
    request: tonic::Request<IssueRequest>,
) -> Result<IssueCommand, AuthError> {
    let peer = peer_ip(&request);
    let certificate = request
        .extensions()
        .get::<PeerInfo>()
        .and_then(|peer| peer.client_certificate.clone());
    let request = request.into_inner();
    let credentials = match request.grant {
        None => {
            return Err(
                InvalidInput::new("a password or client_credentials grant is required").into(),
            );
        }
        Some(PbGrant::Password(p)) => Credentials::Password {
            username: Username::parse(&p.username)?,
            password: Password::parse(SecretString::from(p.password))?,
        },
        Some(PbGrant::ClientCredentials(c)) if c.client_secret.is_empty() => {
            let client_id = ClientId::parse(&c.client_id)?;
            let certificate = certificate.ok_or_else(|| {
                InvalidInput::new(
                    "client_secret is required, unless the client authenticates by its TLS \
                     certificate over mutual TLS (registered with --tls-subject or \
                     --tls-cert-sha256)",
                )
            })?;
            Credentials::ClientCertificate {
                client_id,
                certificate,
            }
        }
        Some(PbGrant::ClientCredentials(c)) => {
            if c.client_secret.len() > MAX_CLIENT_SECRET_BYTES {
                return Err(InvalidInput::new(format!(
                    "client_secret is longer than {MAX_CLIENT_SECRET_BYTES} bytes"
                ))
                .into());
            }
            Credentials::ClientSecret {
                client_id: ClientId::parse(&c.client_id)?,
                secret: SecretString::from(c.client_secret),
            }
        }
    };
    let audience = match request.audience.as_str() {
        "" => None,
        a => Some(Audience::parse(a)?),
    };
    Ok(IssueCommand {
        credentials,
        scopes: ScopeSet::parse_list(&request.scopes)?,
        audience,
        peer,
    })
}

/// Issue and Refresh answer with the same fields.
macro_rules! token_response {
    ($response:ty) => {
        impl From<Tokens> for $response {
            fn from(t: Tokens) -> Self {
                Self {
                    access_token: t.access_token,
                    token_type: "Bearer".into(),
                    expires_in: t.expires_in,
                    refresh_token: t
                        .refresh_token
                        .map(|r| r.expose_secret().to_owned())
                        .unwrap_or_default(),
                    refresh_expires_in: t.refresh_expires_in,
                    scopes: t.scopes.iter().map(str::to_owned).collect(),
                }
            }
        }
    };
}
token_response!(IssueResponse);
token_response!(RefreshResponse);
