//! `tessera.v1.TokenService` handlers: parse, call the domain, convert back.

use std::sync::Arc;

use secrecy::{ExposeSecret, SecretString};
use tessera::pb::{
    GetJwksRequest, GetJwksResponse, IntrospectRequest, IntrospectResponse, IssueRequest,
    IssueResponse, RefreshRequest, RefreshResponse, RevokeRequest, RevokeResponse,
    issue_request::Grant as PbGrant, token_service_server::TokenService,
};
use tonic::{Request, Response, Status, metadata::MetadataMap};

use crate::domain::{
    Audience, AuthError, Authority, ClientId, Grant, Introspection, InvalidInput, IssueCommand,
    Password, ScopeSet, Tokens, Username, secrets::MAX_TOKEN_BYTES,
};

/// Longest client secret accepted (Tessera's are 47 bytes).
const MAX_CLIENT_SECRET_BYTES: usize = 256;

/// The handlers; all state is in the [`Authority`].
pub struct TokenApi {
    authority: Arc<Authority>,
}

impl TokenApi {
    pub(super) fn new(authority: Arc<Authority>) -> Self {
        Self { authority }
    }
}

#[tonic::async_trait]
impl TokenService for TokenApi {
    async fn issue(
        &self,
        request: Request<IssueRequest>,
    ) -> Result<Response<IssueResponse>, Status> {
        let command = IssueCommand::try_from(request.into_inner())?;
        let tokens = self.authority.issue(command).await?;
        Ok(Response::new(tokens.into()))
    }

    async fn refresh(
        &self,
        request: Request<RefreshRequest>,
    ) -> Result<Response<RefreshResponse>, Status> {
        let request = request.into_inner();
        let token = required_token(request.refresh_token, "refresh_token is required")?;
        let scopes = ScopeSet::parse_list(&request.scopes).map_err(AuthError::from)?;
        let tokens = self
            .authority
            .refresh(&SecretString::from(token), &scopes)
            .await?;
        Ok(Response::new(tokens.into()))
    }

    async fn revoke(
        &self,
        request: Request<RevokeRequest>,
    ) -> Result<Response<RevokeResponse>, Status> {
        let token = required_token(request.into_inner().token, "token is required")?;
        self.authority.revoke(&token).await?;
        Ok(Response::new(RevokeResponse {}))
    }

    async fn introspect(
        &self,
        request: Request<IntrospectRequest>,
    ) -> Result<Response<IntrospectResponse>, Status> {
        let bearer = bearer_token(request.metadata())?;
        let grant = self.authority.authorize_introspection(bearer)?;
        let token = required_token(request.into_inner().token, "token is required")?;
        let answer = self.authority.introspect(grant, &token).await?;
        Ok(Response::new(answer.into()))
    }

    async fn get_jwks(
        &self,
        _request: Request<GetJwksRequest>,
    ) -> Result<Response<GetJwksResponse>, Status> {
        Ok(Response::new(GetJwksResponse {
            jwks_json: self.authority.jwks_json(),
        }))
    }
}

/// `token`, unless it is empty (`missing` says which field) or over 8 KiB.
fn required_token(token: String, missing: &'static str) -> Result<String, AuthError> {
    if token.is_empty() {
        return Err(AuthError::InvalidInput(InvalidInput(missing)));
    }
    if token.len() > MAX_TOKEN_BYTES {
        return Err(AuthError::InvalidInput(InvalidInput(
            "token is larger than 8 KiB",
        )));
    }
    Ok(token)
}

/// The token of `authorization: Bearer <token>`, if the header is present.
fn bearer_token(metadata: &MetadataMap) -> Result<Option<&str>, Status> {
    let Some(value) = metadata.get("authorization") else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| Status::unauthenticated("authorization metadata is not valid ASCII"))?;
    match value.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(Some(token.trim()))
        }
        _ => Err(Status::unauthenticated(
            "authorization metadata must be `Bearer <token>`",
        )),
    }
}

impl TryFrom<IssueRequest> for IssueCommand {
    type Error = AuthError;

    fn try_from(request: IssueRequest) -> Result<Self, Self::Error> {
        let grant = match request.grant {
            None => {
                return Err(AuthError::InvalidInput(InvalidInput(
                    "a password or client_credentials grant is required",
                )));
            }
            Some(PbGrant::Password(p)) => Grant::Password {
                username: Username::parse(&p.username).map_err(AuthError::from)?,
                password: Password::parse(SecretString::from(p.password))
                    .map_err(AuthError::from)?,
            },
            Some(PbGrant::ClientCredentials(c)) => {
                if c.client_secret.is_empty() {
                    return Err(AuthError::InvalidInput(InvalidInput(
                        "client_secret is required",
                    )));
                }
                if c.client_secret.len() > MAX_CLIENT_SECRET_BYTES {
                    return Err(AuthError::InvalidInput(InvalidInput(
                        "client_secret is longer than 256 bytes",
                    )));
                }
                Grant::ClientCredentials {
                    client_id: ClientId::parse(&c.client_id).map_err(AuthError::from)?,
                    secret: SecretString::from(c.client_secret),
                }
            }
        };
        let audience = match request.audience.as_str() {
            "" => None,
            a => Some(Audience::parse(a).map_err(AuthError::from)?),
        };
        Ok(Self {
            grant,
            scopes: ScopeSet::parse_list(&request.scopes).map_err(AuthError::from)?,
            audience,
        })
    }
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

impl From<Introspection> for IntrospectResponse {
    fn from(answer: Introspection) -> Self {
        match answer {
            Introspection::Inactive => Self::default(),
            Introspection::Access(c) => Self {
                active: true,
                scopes: c
                    .scope
                    .split(' ')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect(),
                client_id: c.client_id,
                username: String::new(),
                token_type: "access_token".into(),
                exp: c.exp,
                iat: c.iat,
                nbf: c.nbf,
                sub: c.sub,
                aud: c.aud.to_vec(),
                iss: c.iss,
                jti: c.jti,
                sid: c.sid,
            },
            Introspection::Refresh { record, issuer } => Self {
                active: true,
                scopes: record.scopes.iter().map(str::to_owned).collect(),
                client_id: crate::domain::PASSWORD_GRANT_CLIENT_ID.into(),
                username: record.username,
                token_type: "refresh_token".into(),
                exp: record.expires_at.as_secs(),
                iat: record.issued_at.as_secs(),
                nbf: record.issued_at.as_secs(),
                sub: record.user_id,
                aud: vec![record.audience.as_str().to_owned()],
                iss: issuer,
                jti: String::new(),
                sid: record.sid,
            },
        }
    }
}
