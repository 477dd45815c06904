//! Replication between nodes (DESIGN section 7): pull loops per configured peer,
//! cursors in the serving node's change feed, forwarding rules. Talks to the store
//! and to peers through traits; no tonic types here.
