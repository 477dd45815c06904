//! Entente: a node for sharing cyber-threat indicators across a federation of
//! organisations, over mutually authenticated gRPC.
//!
//! Start a node from a validated configuration and stop it:
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! let config = entente::Config::load(std::path::Path::new("node.toml"))?;
//! let node = entente::Node::start(config).await?;
//! println!("serving on {}", node.local_addr());
//! node.shutdown(Duration::from_secs(10)).await?;
//! # Ok(())
//! # }
//! ```
//!
//! Module dependencies point one way: `model` ← `crypto`, `policy`, `store` ←
//! `engine` ← `sync` ← `rpc` ← `node`. Every sharing decision is made in `policy`, and
//! every path that discloses reaches it through `engine`. `transport` carries bytes and
//! identities, `config` turns TOML into validated settings (and the typed input of
//! `policy`), `certs` is the federation PKI tooling.

#![warn(missing_docs)]

pub mod allocator;
pub mod certs;
pub mod cli;
pub mod client;
pub mod config;
pub mod console;
pub mod crypto;
pub mod demo;
pub mod engine;
pub mod feeds;
#[doc(hidden)]
pub mod fuzzing;
pub mod interop;
pub mod limits;
pub mod model;
pub mod node;
pub mod policy;
pub mod rpc;
pub mod store;
pub mod sync;
pub mod taxii;
pub mod telemetry;
pub mod transport;
pub mod util;
pub mod wire;

pub use config::{Config, ConfigError};
pub use model::{NodeId, Role};
pub use node::{Node, NodeError};
