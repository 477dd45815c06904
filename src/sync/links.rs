//! Link state for `entente status` and `Admin.Links`: what each pull loop reports about
//! its peer. Owns [`LinkState`], [`Links`] and their update; must not touch the engine,
//! the store or any connection.

use std::sync::Arc;

use crate::model::NodeId;

/// What a pull loop reports about its link (for `entente status`).
#[derive(Clone, Debug, Default)]
pub struct LinkState {
    /// The peer's address.
    pub address: String,
    /// Whether a pull stream is open.
    pub connected: bool,
    /// Bundles accepted from this link.
    pub received: u64,
    /// Bundles rejected from this link.
    pub rejected: u64,
    /// The last error, if any.
    pub last_error: Option<String>,
    /// When the last message arrived, ms.
    pub last_message_ms: i64,
    /// Items stored from this link.
    pub items_received: u64,
    /// Items from this link that were rejected (in rejected bundles, or by the
    /// single-writer rule).
    pub items_rejected: u64,
    /// Since when the link has been behind the peer's feed: from the connection (or
    /// an earlier one that did not catch up) until the peer's checkpoint says it is
    /// caught up (`None` then).
    pub behind_since_ms: Option<i64>,
    /// Whether a checkpoint arrived on the current connection.
    pub checkpoint_since_connect: bool,
    /// Whether the peer's last checkpoint on the current connection said the feed was
    /// served up to its head. The peer's positions are sealed: this node knows whether
    /// it is caught up, not by how many entries.
    pub peer_caught_up: bool,
    /// Bundles of the current connection refused for a passing reason (a signer
    /// certificate not supplied yet, a time ahead of this node's clock) and waiting to
    /// be pulled again: neither received nor rejected yet, and the link is not caught
    /// up while any waits.
    pub held_back: u64,
}

impl LinkState {
    /// Whether the link has pulled the peer's whole change feed as of the peer's last
    /// checkpoint on the current connection.
    pub fn caught_up(&self) -> bool {
        self.connected
            && self.checkpoint_since_connect
            && self.peer_caught_up
            && self.held_back == 0
    }
}

/// The state of every link, shared between the pull loops and the Admin service.
pub type Links = Arc<std::sync::Mutex<std::collections::BTreeMap<NodeId, LinkState>>>;

/// Applies `f` to the state of the link to `peer` (created empty on first use).
pub(super) fn update(links: &Links, peer: &NodeId, f: impl FnOnce(&mut LinkState)) {
    let mut map = links.lock().unwrap_or_else(|p| p.into_inner());
    f(map.entry(peer.clone()).or_default());
}

#[cfg(test)]
mod tests {
    use super::LinkState;

    #[test]
    fn a_link_is_caught_up_only_after_a_checkpoint_on_its_current_connection() {
        // A fresh link that has received bundles but no checkpoint yet.
        let mut link = LinkState {
            connected: true,
            ..Default::default()
        };
        assert!(!link.caught_up());
        // A checkpoint while the peer's feed is still being served.
        link.checkpoint_since_connect = true;
        assert!(!link.caught_up());
        link.peer_caught_up = true;
        assert!(link.caught_up());
        // A reconnect: the old checkpoint no longer counts until the new stream's.
        link.connected = false;
        link.checkpoint_since_connect = false;
        assert!(!link.caught_up());
        link.connected = true;
        assert!(!link.caught_up());
    }
}
