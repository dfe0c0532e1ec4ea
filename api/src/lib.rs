//! Generated code for the `tessera.v1` protobuf package.
//!
//! # Layout
//! - [`pb`]: messages, the `TokenService` client (`token_service_client`) and
//!   server (`token_service_server`) stubs, generated at build time from
//!   `proto/tessera/v1/token_service.proto`.
//! - [`FILE_DESCRIPTOR_SET`]: the encoded descriptor set, for gRPC reflection.

/// The `tessera.v1` package: messages and gRPC stubs.
#[allow(
    missing_docs,
    unreachable_pub,
    missing_debug_implementations,
    clippy::all,
    clippy::pedantic
)]
pub mod pb {
    tonic::include_proto!("tessera.v1");
}

/// Encoded `FileDescriptorSet` of the Tessera API, for tonic-reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("tessera_descriptor");

#[cfg(test)]
mod tests {
    #[test]
    fn the_descriptor_set_decodes_and_names_the_token_service() {
        let set = prost_types_free::decode(super::FILE_DESCRIPTOR_SET);
        assert!(set.contains("tessera.v1"), "{set}");
    }

    /// Reads the package names out of the descriptor set without pulling in
    /// prost-types: field 1 of `FileDescriptorSet` is repeated
    /// `FileDescriptorProto`, whose field 2 is `package`.
    mod prost_types_free {
        use prost::Message;

        #[derive(Clone, PartialEq, Message)]
        struct FileDescriptorSet {
            #[prost(message, repeated, tag = "1")]
            file: Vec<FileDescriptorProto>,
        }

        #[derive(Clone, PartialEq, Message)]
        struct FileDescriptorProto {
            #[prost(string, optional, tag = "2")]
            package: Option<String>,
        }

        pub(super) fn decode(bytes: &[u8]) -> String {
            let set = FileDescriptorSet::decode(bytes).expect("a valid descriptor set");
            set.file
                .iter()
                .filter_map(|f| f.package.clone())
                .collect::<Vec<_>>()
                .join(",")
        }
    }
}
