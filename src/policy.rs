//! Sharing policy (DESIGN section 6): one decision function that every outbound
//! path calls. No I/O here.
//!
//! Until policies are configurable, the only rule in force is the default: an
//! identity that is not configured receives nothing and is refused at the TLS
//! handshake (see `transport::tls`).
