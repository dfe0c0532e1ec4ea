//! A tower layer for servers: maps each gRPC method to the scopes it needs,
//! verifies the bearer token, and hands the claims to handlers through
//! request extensions. Health and reflection pass without a token.

use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use tonic::{
    Status,
    body::Body,
    transport::server::{TcpConnectInfo, TlsConnectInfo},
};
use tower::{Layer, Service};

use super::{VerifiedClaims, Verifier, VerifyError};

/// Paths that need no token: health checks and reflection.
const PUBLIC_PREFIXES: [&str; 3] = [
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
];

/// Which scopes and roles each method needs. A method with no rule (and no
/// rule for its service) is refused: forgetting a rule must not open a
/// method.
#[derive(Debug, Clone, Default)]
pub struct ScopeRules {
    /// `/pkg.Service/Method` or `/pkg.Service/` → every scope required.
    rules: HashMap<String, Vec<String>>,
    /// The same, for roles (RFC 9068 `roles`).
    roles: HashMap<String, Vec<String>>,
}

impl ScopeRules {
    /// No methods allowed yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// `path` (a method, `/pkg.Service/Method`, or a whole service,
    /// `/pkg.Service/`) requires every scope in `scopes`; an empty list
    /// requires only a valid token.
    #[must_use]
    pub fn require<S: AsRef<str>>(mut self, path: &str, scopes: &[S]) -> Self {
        self.rules.insert(
            path.to_owned(),
            scopes.iter().map(|s| s.as_ref().to_owned()).collect(),
        );
        self
    }

    /// `path` (a method or a whole service, as for [`Self::require`])
    /// requires every role in `roles`, besides any scopes.
    #[must_use]
    pub fn require_roles<S: AsRef<str>>(mut self, path: &str, roles: &[S]) -> Self {
        self.roles.insert(
            path.to_owned(),
            roles.iter().map(|s| s.as_ref().to_owned()).collect(),
        );
        self
    }

    /// The scopes `path` needs; `None` when no rule covers it.
    fn required(&self, path: &str) -> Option<&[String]> {
        lookup(&self.rules, path)
    }

    /// The roles `path` needs; `None` when no role rule covers it.
    fn required_roles(&self, path: &str) -> Option<&[String]> {
        lookup(&self.roles, path)
    }
}

/// The rule for a method, else for its service.
fn lookup<'a>(rules: &'a HashMap<String, Vec<String>>, path: &str) -> Option<&'a [String]> {
    if let Some(rule) = rules.get(path) {
        return Some(rule);
    }
    let service = &path[..=path[1..].find('/').map_or(0, |i| i + 1)];
    rules.get(service).map(Vec::as_slice)
}

/// Verifies bearer tokens and enforces [`ScopeRules`].
#[derive(Clone, Debug)]
pub struct VerifyLayer {
    verifier: Arc<dyn Verifier>,
    rules: Arc<ScopeRules>,
}

impl VerifyLayer {
    /// A layer checking tokens with `verifier` against `rules`.
    pub fn new(verifier: Arc<dyn Verifier>, rules: ScopeRules) -> Self {
        Self {
            verifier,
            rules: Arc::new(rules),
        }
    }
}

impl<S> Layer<S> for VerifyLayer {
    type Service = VerifyService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        VerifyService {
            inner,
            verifier: Arc::clone(&self.verifier),
            rules: Arc::clone(&self.rules),
        }
    }
}

/// The service [`VerifyLayer`] makes.
#[derive(Clone, Debug)]
pub struct VerifyService<S> {
    inner: S,
    verifier: Arc<dyn Verifier>,
    rules: Arc<ScopeRules>,
}

impl<S> Service<http::Request<Body>> for VerifyService<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let verifier = Arc::clone(&self.verifier);
        let rules = Arc::clone(&self.rules);
        Box::pin(async move {
            let path = request.uri().path().to_owned();
            if PUBLIC_PREFIXES.iter().any(|p| path.starts_with(p)) {
                return inner.call(request).await;
            }
            // The caller's client certificate, when the service speaks TLS
            // through tonic: a certificate-bound token must come with it.
            let presented = request
                .extensions()
                .get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(TlsConnectInfo::peer_certs)
                .and_then(|certs| certs.first().map(|der| der.to_vec()));
            match authorize(
                &*verifier,
                &rules,
                &path,
                request.headers(),
                presented.as_deref(),
            )
            .await
            {
                Ok(claims) => {
                    request.extensions_mut().insert(claims);
                    inner.call(request).await
                }
                Err(status) => Ok(status.into_http()),
            }
        })
    }
}

/// The claims of the request's bearer token, if it may call `path`. Scopes
/// are checked on every request, whether the answer came from a cache or not.
async fn authorize(
    verifier: &dyn Verifier,
    rules: &ScopeRules,
    path: &str,
    headers: &http::HeaderMap,
    presented: Option<&[u8]>,
) -> Result<Arc<VerifiedClaims>, Status> {
    let token = headers
        .get(http::header::AUTHORIZATION)
        .ok_or_else(|| Status::unauthenticated("missing `authorization: Bearer <token>`"))
        .and_then(|value| {
            tessera_token::bearer_token(value.as_bytes())
                .map_err(|e| Status::unauthenticated(e.to_string()))
        })?;
    let claims = verifier
        .verify_presented(token, presented)
        .await
        .map_err(|e| match e {
            VerifyError::Inactive => {
                Status::unauthenticated("bearer token is invalid, expired or revoked")
            }
            VerifyError::WrongCertificate => Status::unauthenticated(
                "bearer token is bound to a client certificate this connection did not present",
            ),
            VerifyError::Unavailable(_) => {
                Status::unavailable("cannot verify the bearer token right now")
            }
        })?;
    let (scopes, roles) = (rules.required(path), rules.required_roles(path));
    if scopes.is_none() && roles.is_none() {
        return Err(Status::permission_denied(format!(
            "no access rule allows {path}"
        )));
    }
    if let Some(missing) = scopes
        .unwrap_or_default()
        .iter()
        .find(|s| !claims.has_scope(s))
    {
        return Err(Status::permission_denied(format!(
            "{path} needs the scope {missing}"
        )));
    }
    if let Some(missing) = roles
        .unwrap_or_default()
        .iter()
        .find(|r| !claims.has_role(r))
    {
        return Err(Status::permission_denied(format!(
            "{path} needs the role {missing}"
        )));
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_method_rule_wins_over_its_service_rule() {
        let rules = ScopeRules::new()
            .require("/a.S/", &["read"])
            .require("/a.S/Write", &["write"]);
        assert_eq!(rules.required("/a.S/Get"), Some(&["read".to_owned()][..]));
        assert_eq!(
            rules.required("/a.S/Write"),
            Some(&["write".to_owned()][..])
        );
    }

    #[test]
    fn a_method_without_a_rule_has_no_requirement_to_meet() {
        let rules = ScopeRules::new().require("/a.S/Get", &["read"]);
        assert_eq!(rules.required("/b.T/Get"), None);
        assert_eq!(rules.required("/"), None);
    }
}
