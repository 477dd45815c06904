//! The byte bounds of replication that both ends of a link must agree on, in one place:
//! what one part of a bundle transfer holds and the largest pull message. A node cannot
//! know how its peers are configured, so these are fixed by the federation protocol, not
//! settings; nothing here reads or enforces them (the feed, the puller and the service
//! layer do).
//!
//! What one node spends on replication alone (the bytes a served stream's page gathers,
//! the messages it queues, the bytes a puller holds for one transfer) are `[limits]`
//! settings instead (`crate::limits::Limits`): either end may set its own without the
//! other noticing.

/// Bytes of header and disclosures packed into one part of a bundle transfer. A bundle
/// larger than this crosses as several parts; an item (at most 64 KiB) always fits one.
/// Fixed: every part must fit the largest pull message ([`MAX_PULL_MESSAGE_BYTES`])
/// that any puller reads, and the part size is part of the transfer digest, so that a
/// transfer continues on a new connection only when it is split the same way.
pub const PART_BYTES: usize = 1 << 20;

/// Largest pull message a puller decodes (after decompression). A part is at most
/// [`PART_BYTES`] of payload plus a few hundred bytes of fields, so this leaves room
/// and no more. The message types of a pull carry only scalar and bytes fields, so
/// decoding one takes about its own size again in memory (the undecoded buffer and the
/// decoded copy), never a multiple of it. Fixed: a puller that read less would refuse
/// the parts every sender makes.
pub const MAX_PULL_MESSAGE_BYTES: usize = 2 << 20;

/// Largest bundle signature accepted in a transfer (an ECDSA P-256 signature in DER is
/// at most 72 bytes).
pub const MAX_SIGNATURE_BYTES: usize = 512;
