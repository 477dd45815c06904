//! TAXII 2.1 over HTTPS: the node's own listener (`[taxii]`) for the tools partners
//! already run. It owns HTTP parsing, caller authentication (the gRPC listener's client
//! certificates and directory, or per-client HTTP Basic credentials), the TAXII
//! resources and their JSON. It decides no sharing: every read and write goes through
//! the same [`Engine`](crate::engine::Engine) calls as the gRPC services (`get`,
//! `query_blocking`, `sign`, `store_own`), so the same policy gate and ledger apply,
//! and STIX objects come from [`crate::interop`] only.

mod handlers;
mod listener;
mod next;
pub(crate) mod params;
mod statuses;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

pub use crate::crypto::password::{check_password_hash, hash_password};
pub(crate) use listener::basic_credentials;
pub use listener::{TaxiiError, TaxiiServer};

use crate::config::BasicCredential;

/// The HTTP Basic credentials in force: replaced as a whole at each configuration
/// reload, and numbered so a connection's remembered check is dropped when they change.
#[derive(Debug, Default)]
pub struct Credentials {
    entries: RwLock<Arc<Vec<BasicCredential>>>,
    generation: AtomicU64,
}

impl Credentials {
    /// Credentials holding `entries`.
    pub fn new(entries: Vec<BasicCredential>) -> Self {
        Self {
            entries: RwLock::new(Arc::new(entries)),
            generation: AtomicU64::new(0),
        }
    }

    /// Puts `entries` in force (a reload).
    pub fn replace(&self, entries: Vec<BasicCredential>) {
        let mut held = self.entries.write().unwrap_or_else(|p| p.into_inner());
        *held = Arc::new(entries);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// The entries in force and their generation.
    fn current(&self) -> (Arc<Vec<BasicCredential>>, u64) {
        let held = self.entries.read().unwrap_or_else(|p| p.into_inner());
        (held.clone(), self.generation.load(Ordering::Acquire))
    }
}
