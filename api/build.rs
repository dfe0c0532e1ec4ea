//! Compiles `../proto/` into Rust without a system `protoc`: `protox` parses
//! the protobuf sources in pure Rust and hands tonic-prost-build the
//! descriptors.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "../proto/tessera/v1/token_service.proto";
    println!("cargo:rerun-if-changed=../proto");

    let descriptors = protox::compile([proto], ["../proto"])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let descriptor_path = out_dir.join("tessera_descriptor.bin");
    std::fs::write(
        &descriptor_path,
        prost::Message::encode_to_vec(&descriptors),
    )?;

    tonic_prost_build::configure()
        .file_descriptor_set_path(&descriptor_path)
        .skip_protoc_run()
        .compile_fds(descriptors)?;
    Ok(())
}
