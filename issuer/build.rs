//! Generates the identity API from `proto/identity.proto` with protox (a
//! pure-Rust protobuf compiler, so no `protoc` is needed) and tonic's
//! code generator.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/identity.proto");
    let descriptors = protox::compile(["proto/identity.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(descriptors)?;
    Ok(())
}
