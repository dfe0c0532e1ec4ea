//! Two jobs at compile time:
//! - `sqlx::migrate!` embeds the migrations when the crate is compiled: a
//!   migration added or changed must rebuild it.
//! - The server's own `tessera.v1.TokenService` stub, compiled from the same
//!   proto as the `tessera` crate (without a system `protoc`). Every message
//!   is the `tessera` crate's, except Introspect's answer: the server encodes
//!   it straight from a token's verified claims (`grpc::answer`), so the hot
//!   path copies no string into a generated message.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=migrations");
    let proto = "../proto/tessera/v1/token_service.proto";
    println!("cargo:rerun-if-changed=../proto");
    let descriptors = protox::compile([proto], ["../proto"])?;
    tonic_prost_build::configure()
        .build_client(false)
        .extern_path(".tessera.v1", "::tessera::pb")
        .extern_path(
            ".tessera.v1.IntrospectResponse",
            "crate::grpc::answer::IntrospectAnswer",
        )
        .skip_protoc_run()
        .compile_fds(descriptors)?;
    Ok(())
}
