//! Compiles the example's `shop.proto` (examples only) without a system protoc.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=examples/proto");
    let descriptors = protox::compile(["examples/proto/shop.proto"], ["examples/proto"])?;
    tonic_prost_build::configure()
        .skip_protoc_run()
        .compile_fds(descriptors)?;
    Ok(())
}
