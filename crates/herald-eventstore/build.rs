//! Generates the gRPC server side, and the client side `herald bench eventstore` drives
//! it with, from the vendored KurrentDB `.proto` files.
//!
//! `protox` parses and checks the files in Rust (so neither a developer nor CI needs a
//! `protoc` binary) and hands the descriptor set to `tonic-prost-build`, which writes
//! prost messages and tonic service traits into `OUT_DIR`.

use std::path::PathBuf;

/// Every file a client compiles; `shared.proto`, `code.proto` and `status.proto` come
/// in through imports.
const PROTOS: &[&str] = &[
    "streams.proto",
    "persistent.proto",
    "gossip.proto",
    "serverfeatures.proto",
    "projections.proto",
    "operations.proto",
    "users.proto",
    "monitoring.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let vendor = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?)
        .join("../../vendor/kurrentdb-protos")
        .canonicalize()?;
    println!("cargo:rerun-if-changed={}", vendor.display());
    let fds = protox::compile(PROTOS, [&vendor])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .build_transport(false)
        // Event data and metadata are `Bytes`: slices of the request buffer, not copies.
        .bytes(".")
        .compile_fds(fds)?;
    Ok(())
}
