//! Generates the identity API from `proto/identity.proto` with protox (a
//! pure-Rust protobuf compiler, so no `protoc` is needed) and tonic's code
//! generator: the client always, the server only with the `server` feature,
//! so the pod's agent carries no server code.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/identity.proto");
    let server = std::env::var_os("CARGO_FEATURE_SERVER").is_some();
    let descriptors = protox::compile(["proto/identity.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(server)
        .build_client(true)
        .build_transport(false)
        .compile_fds(descriptors)?;
    Ok(())
}
