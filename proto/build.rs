//! Generates the Rust types for `aviary.v1` with prost/tonic at build time.
//!
//! Needs `protoc` (Debian's `protobuf-compiler`, installed by `scripts/bootstrap.sh`), or a
//! compiler named by the `PROTOC` environment variable.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "aviary/v1/rollout.proto",
        "aviary/v1/bus.proto",
        "aviary/v1/control.proto",
    ];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("aviary_v1_descriptor.bin"))
        .compile_protos(&files, &["."])?;
    Ok(())
}
