//! The only tonic code: service adapters that turn requests into domain calls and
//! back, the generated wire types, and the mapping of errors to `tonic::Status`.
//! No business rule lives here; `rpc` never decides policy.

pub mod admin;
pub mod auth;
pub mod codec;
mod convert;
mod error;
pub mod federation;
pub mod intel;
pub mod peer_client;

/// Types and service stubs generated from `proto/entente/v1/`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("entente.v1");

    /// The encoded file descriptor set of the wire contract, served by reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("entente_v1_descriptor");
}

/// Version of the federation protocol this build speaks. Version 4 carries items whose
/// kept STIX properties may hold a `confidence` of 0, `revoked: false` and kill chain
/// phases as given, which a node of version 3 refuses (and would pass over for good);
/// version 3 carries feed positions as sealed tokens (`sync::positions`) and checkpoints
/// without counts; version 2 (bundles in bounded parts, positions as numbers) and
/// version 1 (whole bundles in one message) are not spoken any more, and a peer of an
/// earlier version is refused with a message that says so, in both directions.
pub const PROTOCOL_VERSION: u32 = 4;

/// Capabilities this build announces in `Hello`.
pub const CAPABILITIES: &[&str] = &["hello", "bundle-parts", "sealed-positions"];

pub use convert::bundle_responses;
