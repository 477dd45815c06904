//! Code generation for the wire contract in `proto/`; nothing else.
//!
//! `protoc` comes from `protoc-bin-vendored`, so a fresh machine needs no system package.
//! The signed formats of `bundle.proto` are generated on their own (plain prost
//! messages, no tonic) for `crate::wire`; the services refer to them by extern path.

use std::path::PathBuf;

const BUNDLE_TYPES: &[&str] = &[
    "Tlp",
    "Distribution",
    "BundleHeader",
    "Disclosure",
    "SignedBundle",
    "Item",
    "Indicator",
    "Revocation",
    "ContextObject",
    "Provenance",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var_os("PROTOC").is_none() {
        // SAFETY: build scripts are single-threaded; nothing else reads the environment here.
        unsafe { std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?) };
    }
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let wire_dir = out_dir.join("wire");
    std::fs::create_dir_all(&wire_dir)?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(false)
        // Boxed so that an `Item` (a revocation carries its indicator) stays small.
        .boxed(".entente.v1.Revocation.indicator")
        .out_dir(&wire_dir)
        .compile_protos(&["proto/entente/v1/bundle.proto"], &["proto"])?;

    // Every service and client decodes through `rpc::codec`, which bounds what a
    // message may cost to decode before prost allocates it.
    let mut services = tonic_prost_build::configure()
        .codec_path("crate::rpc::codec::BoundedCodec")
        .file_descriptor_set_path(out_dir.join("entente_v1_descriptor.bin"));
    for name in BUNDLE_TYPES {
        services = services.extern_path(
            format!(".entente.v1.{name}"),
            format!("crate::wire::{name}"),
        );
    }
    services.compile_protos(
        &[
            "proto/entente/v1/federation.proto",
            "proto/entente/v1/intel.proto",
            "proto/entente/v1/admin.proto",
        ],
        &["proto"],
    )?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
