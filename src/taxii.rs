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
/// With them, the decoy hash checked for an unknown user name, made with the
/// parameters of the costliest configured hash.
#[derive(Debug, Default)]
pub struct Credentials {
    entries: RwLock<(Arc<Vec<BasicCredential>>, Arc<str>)>,
    generation: AtomicU64,
}

/// The decoy for `entries`; warns when their parameters differ.
fn decoy_for(entries: &[BasicCredential]) -> Arc<str> {
    let hashes = || entries.iter().map(|e| e.password_hash.as_str());
    if !crate::crypto::password::same_parameters(hashes()) {
        tracing::warn!(
            "the [[taxii.basic]] password hashes have different Argon2 parameters: a wrong password for one client may take a different time to refuse than for another, which tells which names are configured; hash them all alike (entente taxii hash-password)"
        );
    }
    crate::crypto::password::decoy_hash(hashes()).into()
}

impl Credentials {
    /// Credentials holding `entries`.
    pub fn new(entries: Vec<BasicCredential>) -> Self {
        let decoy = decoy_for(&entries);
        Self {
            entries: RwLock::new((Arc::new(entries), decoy)),
            generation: AtomicU64::new(0),
        }
    }

    /// Puts `entries` in force (a reload).
    pub fn replace(&self, entries: Vec<BasicCredential>) {
        let decoy = decoy_for(&entries);
        let mut held = self.entries.write().unwrap_or_else(|p| p.into_inner());
        *held = (Arc::new(entries), decoy);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// The entries in force and their generation.
    fn current(&self) -> (Arc<Vec<BasicCredential>>, u64) {
        let held = self.entries.read().unwrap_or_else(|p| p.into_inner());
        (held.0.clone(), self.generation.load(Ordering::Acquire))
    }

    /// The decoy hash checked for a user name not among the entries in force.
    fn decoy(&self) -> Arc<str> {
        let held = self.entries.read().unwrap_or_else(|p| p.into_inner());
        held.1.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_decoy_follows_the_configured_hashes() {
        let entry = |hash: &str| BasicCredential {
            client: crate::model::NodeId::new("siem.soc").unwrap(),
            password_hash: hash.to_owned(),
        };
        let credentials = Credentials::new(vec![]);
        assert_eq!(&*credentials.decoy(), crate::crypto::password::DECOY_HASH);
        let costly = "$argon2id$v=19$m=131072,t=6,p=1$c2FsdHNhbHRzYWx0$2O7Sg4XJZ5d0XQhK0sfFvPZ4v4q9yY0qG0Y1nN1rT2c";
        credentials.replace(vec![entry(costly)]);
        assert!(credentials.decoy().contains("$m=131072,t=6,p=1$"));
        credentials.replace(vec![]);
        assert_eq!(&*credentials.decoy(), crate::crypto::password::DECOY_HASH);
    }
}
