//! Retrying a unary call once with a fresh token when the server answers
//! UNAUTHENTICATED (the token was revoked, or the server rotated keys).

use std::future::Future;

use tonic::{Code, Request, Response, Status};

use crate::source::TokenSource;

/// Makes `call` with `message`; on UNAUTHENTICATED, invalidates the token,
/// waits for a fresh one and makes the call once more. The message is sent
/// again from a clone because an HTTP body cannot be replayed.
pub async fn with_fresh_token<M, R, F, Fut>(
    source: &TokenSource,
    message: M,
    mut call: F,
) -> Result<Response<R>, Status>
where
    M: Clone,
    F: FnMut(Request<M>) -> Fut,
    Fut: Future<Output = Result<Response<R>, Status>>,
{
    match call(Request::new(message.clone())).await {
        Err(status) if status.code() == Code::Unauthenticated => {
            source.invalidate();
            source
                .token()
                .await
                .map_err(|e| Status::unavailable(e.to_string()))?;
            call(Request::new(message)).await
        }
        other => other,
    }
}
