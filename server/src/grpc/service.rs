//! `tessera.v1.TokenService` handlers: parse, call the domain, convert back.

use std::sync::Arc;

use secrecy::SecretString;
use tessera::pb::{
    GetJwksRequest, GetJwksResponse, IntrospectRequest, IssueRequest, IssueResponse,
    RefreshRequest, RefreshResponse, RevokeRequest, RevokeResponse,
};
use tonic::{Request, Response, Status};

use super::{
    answer::IntrospectAnswer,
    convert::{bearer_token, issue_command, peer_ip, required_token},
    stub::token_service_server::TokenService,
};
use tokio::time::Instant;

use crate::{
    domain::{AuthError, Authority},
    metrics::metrics,
    model::{InvalidInput, ScopeSet},
};
use tessera_token::REFRESH_TOKEN_PREFIX;

/// The handlers; all state is in the [`Authority`].
#[derive(Debug)]
pub(crate) struct TokenApi {
    authority: Arc<Authority>,
}

impl TokenApi {
    pub(super) fn new(authority: Arc<Authority>) -> Self {
        Self { authority }
    }
}

/// Records `result`'s duration and code in `tessera_rpc_duration_seconds`.
fn timed<T>(
    method: &'static str,
    started: Instant,
    result: Result<T, Status>,
) -> Result<T, Status> {
    let code = result
        .as_ref()
        .map_or_else(Status::code, |_| tonic::Code::Ok);
    metrics().rpc(method, started, code);
    result
}

#[tonic::async_trait]
impl TokenService for TokenApi {
    async fn issue(
        &self,
        request: Request<IssueRequest>,
    ) -> Result<Response<IssueResponse>, Status> {
        timed("Issue", Instant::now(), self.issue_call(request).await)
    }

    async fn refresh(
        &self,
        request: Request<RefreshRequest>,
    ) -> Result<Response<RefreshResponse>, Status> {
        timed("Refresh", Instant::now(), self.refresh_call(request).await)
    }

    async fn revoke(
        &self,
        request: Request<RevokeRequest>,
    ) -> Result<Response<RevokeResponse>, Status> {
        timed("Revoke", Instant::now(), self.revoke_call(request).await)
    }

    async fn introspect(
        &self,
        request: Request<IntrospectRequest>,
    ) -> Result<Response<IntrospectAnswer>, Status> {
        timed(
            "Introspect",
            Instant::now(),
            self.introspect_call(request).await,
        )
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

impl TokenApi {
    async fn issue_call(
        &self,
        request: Request<IssueRequest>,
    ) -> Result<Response<IssueResponse>, Status> {
        let command = issue_command(request)?;
        let tokens = self.authority.issue(command).await?;
        Ok(Response::new(tokens.into()))
    }

    async fn refresh_call(
        &self,
        request: Request<RefreshRequest>,
    ) -> Result<Response<RefreshResponse>, Status> {
        let peer = peer_ip(&request);
        let request = request.into_inner();
        let token = required_token(request.refresh_token, "refresh_token is required")?;
        if !token.starts_with(REFRESH_TOKEN_PREFIX) {
            // Says nothing about any real token: only what the field wants.
            return Err(AuthError::from(InvalidInput::new(
                "refresh_token is not a refresh token: they begin with tsr_ (the refreshToken \
                 Issue returned); an access token cannot be refreshed",
            ))
            .into());
        }
        let scopes = ScopeSet::parse_list(&request.scopes).map_err(AuthError::from)?;
        let tokens = self
            .authority
            .refresh(&SecretString::from(token), &scopes, peer)
            .await?;
        Ok(Response::new(tokens.into()))
    }

    async fn revoke_call(
        &self,
        request: Request<RevokeRequest>,
    ) -> Result<Response<RevokeResponse>, Status> {
        let peer = peer_ip(&request);
        let token = required_token(request.into_inner().token, "token is required")?;
        self.authority.revoke(&token, peer).await?;
        Ok(Response::new(RevokeResponse {}))
    }

    async fn introspect_call(
        &self,
        request: Request<IntrospectRequest>,
    ) -> Result<Response<IntrospectAnswer>, Status> {
        let bearer = bearer_token(request.metadata())?;
        let permit = self.authority.authorize_introspection(bearer)?;
        let token = required_token(request.into_inner().token, "token is required")?;
        let answer = self.authority.introspect(permit, &token).await?;
        Ok(Response::new(answer.into()))
    }
}
