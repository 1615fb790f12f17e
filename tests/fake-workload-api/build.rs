//! Generates the gRPC server and client stubs from the vendored SPIFFE `workload.proto`.
//!
//! `proto/workload.proto` is the SPIFFE Workload API definition as published by the SPIFFE
//! project (go-spiffe `proto/spiffe/workload/workload.proto`; the `spiffe` crate 0.19 vendors
//! the same file). It is parsed with `protox`, so no `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/workload.proto");
    let fds = protox::compile(["workload.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
