//! One deadline for every call on every service: the caller's
//! `grpc-timeout` when it is shorter than the server's own bound. A call
//! still waiting (for the database, for hashing) just before the deadline
//! is answered UNAVAILABLE, so a caller learns this replica cannot serve it
//! now rather than only that its time ran out; and the request body is
//! bounded by the same deadline, so a client trickling a streaming request
//! (reflection) cannot hold a buffer past it.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::time::{Instant, Sleep};
use tonic::{Status, body::Body};
use tower::{Layer, Service};

/// Applies the deadline; `max` is the server's own bound.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DeadlineLayer {
    max: Duration,
}

impl DeadlineLayer {
    pub(crate) fn new(max: Duration) -> Self {
        Self { max }
    }
}

impl<S> Layer<S> for DeadlineLayer {
    type Service = DeadlineService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        DeadlineService {
            inner,
            max: self.max,
        }
    }
}

/// The service [`DeadlineLayer`] makes.
#[derive(Debug, Clone)]
pub(crate) struct DeadlineService<S> {
    inner: S,
    max: Duration,
}

impl<S> Service<http::Request<Body>> for DeadlineService<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let budget = caller_timeout(request.headers()).map_or(self.max, |t| t.min(self.max));
        // Answer a little before the caller gives up, so the answer arrives.
        let budget = budget.saturating_sub((budget / 10).min(Duration::from_millis(50)));
        let deadline = Instant::now() + budget;
        let request = request.map(|body| Body::new(DeadlineBody::new(body, deadline)));
        let call = self.inner.call(request);
        Box::pin(async move {
            match tokio::time::timeout_at(deadline, call).await {
                Ok(response) => response,
                Err(_) => Ok(Status::unavailable(
                    "no answer within the call's deadline; this replica is overloaded or cannot \
                     reach its database: retry, or try another replica",
                )
                .into_http()),
            }
        })
    }
}

/// The caller's `grpc-timeout` (gRPC over HTTP/2: up to eight digits and a
/// unit), if it sent a valid one.
fn caller_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// A request body that fails once the call's deadline has passed.
struct DeadlineBody {
    inner: Body,
    deadline: Pin<Box<Sleep>>,
}

impl DeadlineBody {
    fn new(inner: Body, deadline: Instant) -> Self {
        Self {
            inner,
            deadline: Box::pin(tokio::time::sleep_until(deadline)),
        }
    }
}

impl HttpBody for DeadlineBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(Status::deadline_exceeded(
                "the request was not received within the call's deadline",
            )))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timeout_of(value: &str) -> Option<Duration> {
        let mut headers = http::HeaderMap::new();
        headers.insert("grpc-timeout", value.parse().unwrap());
        caller_timeout(&headers)
    }

    #[test]
    fn grpc_timeout_units_are_read() {
        assert_eq!(timeout_of("2S"), Some(Duration::from_secs(2)));
        assert_eq!(timeout_of("500m"), Some(Duration::from_millis(500)));
        assert_eq!(timeout_of("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(
            timeout_of("99999999u"),
            Some(Duration::from_micros(99_999_999))
        );
    }

    #[test]
    fn malformed_grpc_timeouts_are_ignored() {
        for value in ["", "S", "5", "5x", "123456789m", "-5S", "5.5S"] {
            assert_eq!(timeout_of(value), None, "{value:?}");
        }
    }
}
