//! The gRPC face: protobuf in, domain call, protobuf out. Handlers only
//! convert (`convert`); [`status`] is the one place domain errors become
//! statuses.

use std::sync::Arc;

use tessera::pb::token_service_server::TokenServiceServer;

use crate::domain::Authority;

mod convert;
mod deadline;
mod service;
mod status;

pub(crate) use deadline::DeadlineLayer;

pub(crate) use service::TokenApi;

/// Largest request message accepted, per RPC: the largest legitimate request
/// (an 8 KiB token, or 64 scopes) fits several times over.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// The `tessera.v1.TokenService` server, with its message size bounds.
pub(crate) fn token_service(authority: Arc<Authority>) -> TokenServiceServer<TokenApi> {
    TokenServiceServer::new(TokenApi::new(authority))
        .max_decoding_message_size(MAX_REQUEST_BYTES)
        .max_encoding_message_size(MAX_REQUEST_BYTES)
}
