//! Attaching tokens to outgoing calls: [`AuthInterceptor`] for tonic's
//! synchronous interceptor slot (never waits), and [`AuthLayer`] for a
//! channel that should wait for the first token instead of failing.
//!
//! Both also propagate the current trace: the `tracing` span's OpenTelemetry
//! context goes out as W3C `traceparent`/`tracestate`, through the global
//! propagator (set one, e.g. `opentelemetry_sdk`'s
//! `TraceContextPropagator`, with
//! `opentelemetry::global::set_text_map_propagator`; the default sends
//! nothing), so Tessera's spans and the callee's join the caller's trace.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use tonic::{Request, Status, service::Interceptor, transport::Endpoint};
use tower::{Layer, Service};

use crate::{
    source::{SourceError, TokenSource},
    transport::{Transport, TransportError},
};

/// A `tonic` interceptor adding `authorization: Bearer ...` from a
/// [`TokenSource`]. It only reads the latest published token: it never
/// blocks or awaits, and answers UNAVAILABLE locally when there is no usable
/// token yet.
#[derive(Clone, Debug)]
pub struct AuthInterceptor {
    /// Keeps the source (and its refresher) alive as long as any channel uses it.
    source: TokenSource,
}

impl AuthInterceptor {
    /// An interceptor for calls to `endpoint` made over `transport`
    /// (build the channel with [`Transport::prepare`]); refused when that
    /// would send the token where `transport` forbids.
    pub fn new(
        source: &TokenSource,
        endpoint: &Endpoint,
        transport: &Transport,
    ) -> Result<Self, TransportError> {
        transport.check(endpoint)?;
        Ok(Self {
            source: source.clone(),
        })
    }
}

impl Interceptor for AuthInterceptor {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        match self.source.current() {
            Some(token) => {
                request
                    .metadata_mut()
                    .insert("authorization", token.header().clone());
                inject_trace_context(request.metadata_mut().as_mut());
                Ok(request)
            }
            None => Err(Status::unavailable(
                "no access token yet from the token service",
            )),
        }
    }
}

/// A tower layer that awaits a usable token before each call (so a service
/// can start before the token service) and attaches it.
#[derive(Clone, Debug)]
pub struct AuthLayer {
    source: TokenSource,
}

impl AuthLayer {
    /// A layer for a channel to `endpoint` made over `transport`; refused
    /// when that would send the token where `transport` forbids.
    pub fn new(
        source: TokenSource,
        endpoint: &Endpoint,
        transport: &Transport,
    ) -> Result<Self, TransportError> {
        transport.check(endpoint)?;
        Ok(Self { source })
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            source: self.source.clone(),
        }
    }
}

/// The service [`AuthLayer`] makes.
#[derive(Clone, Debug)]
pub struct AuthService<S> {
    inner: S,
    source: TokenSource,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<S, B> Service<http::Request<B>> for AuthService<S>
where
    S: Service<http::Request<B>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // The clone is not the instance that was polled ready; swap so the
        // ready one serves this call (the usual tower pattern).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let source = self.source.clone();
        // The caller's span is current here, not inside the future.
        inject_trace_context(request.headers_mut());
        Box::pin(async move {
            let token = match source.current() {
                Some(token) => token,
                None => source
                    .token()
                    .await
                    .map_err(|e: SourceError| Box::new(e) as BoxError)?,
            };
            let mut value = http::HeaderValue::from_bytes(token.header().as_bytes())?;
            value.set_sensitive(true);
            request
                .headers_mut()
                .insert(http::header::AUTHORIZATION, value);
            inner.call(request).await.map_err(Into::into)
        })
    }
}

/// Writes the current span's trace context into `headers` (W3C
/// `traceparent`, through the global propagator).
fn inject_trace_context(headers: &mut http::HeaderMap) {
    use opentelemetry::propagation::Injector;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    struct Headers<'a>(&'a mut http::HeaderMap);
    impl Injector for Headers<'_> {
        fn set(&mut self, key: &str, value: String) {
            if let (Ok(name), Ok(value)) = (
                http::HeaderName::from_bytes(key.as_bytes()),
                http::HeaderValue::from_str(&value),
            ) {
                self.0.insert(name, value);
            }
        }
    }
    let context = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut Headers(headers));
    });
}
