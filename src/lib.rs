//! Generated code for the `tessera.v1` protobuf package.
//!
//! # Layout
//! - [`pb`]: messages, the `TokenService` client (`token_service_client`) and
//!   server (`token_service_server`) stubs, generated at build time from
//!   `proto/tessera/v1/token_service.proto`.
//! - [`FILE_DESCRIPTOR_SET`]: the encoded descriptor set, for gRPC reflection.

/// The `tessera.v1` package: messages and gRPC stubs.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("tessera.v1");
}

/// Encoded `FileDescriptorSet` of the Tessera API, for tonic-reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("tessera_descriptor");
