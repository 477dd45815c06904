//! Code generation for the wire contract in `proto/`; nothing else.
//!
//! `protoc` comes from `protoc-bin-vendored`, so a fresh machine needs no system package.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var_os("PROTOC").is_none() {
        // SAFETY: build scripts are single-threaded; nothing else reads the environment here.
        unsafe { std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?) };
    }
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("entente_v1_descriptor.bin"))
        .compile_protos(
            &[
                "proto/entente/v1/bundle.proto",
                "proto/entente/v1/federation.proto",
                "proto/entente/v1/intel.proto",
            ],
            &["proto"],
        )?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
