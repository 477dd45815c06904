//! The byte budgets of replication, in one place: what one pull message, one part of a
//! bundle transfer, one bundle held in part and one served stream may hold. Plain
//! constants for now, named so that they can later become configuration; nothing here
//! reads or enforces them (the feed, the puller and the service layer do).

/// Bytes of header and disclosures packed into one part of a bundle transfer. A bundle
/// larger than this crosses as several parts; an item (at most 64 KiB) always fits one.
pub const PART_BYTES: usize = 1 << 20;

/// Largest pull message a puller decodes (after decompression). A part is at most
/// [`PART_BYTES`] of payload plus a few hundred bytes of fields, so this leaves room
/// and no more. The message types of a pull carry only scalar and bytes fields, so
/// decoding one takes about its own size again in memory (the undecoded buffer and the
/// decoded copy), never a multiple of it.
pub const MAX_PULL_MESSAGE_BYTES: usize = 2 << 20;

/// Most bytes of disclosed items (item bytes and salts) one bundle transfer may bring.
/// A puller holds a transfer in memory until it is complete, so this (with the header,
/// at most `crypto::MAX_HEADER_BYTES`, and at most `crypto::MAX_ITEMS_PER_BUNDLE`
/// disclosures) bounds what one link holds. The items of a published bundle come in
/// one message of at most `limits.publish_message_bytes`, which may be set up to
/// `limits::MAX_PUBLISH_MESSAGE_BYTES`; the publishing node adds to each item an id and a
/// version (about 60 bytes) and a salt (16): [`PER_ITEM_ALLOWANCE`] covers both, so any
/// bundle a node could publish can cross any link.
pub const MAX_TRANSFER_ITEM_BYTES: usize = crate::limits::MAX_PUBLISH_MESSAGE_BYTES
    + crate::crypto::MAX_ITEMS_PER_BUNDLE * PER_ITEM_ALLOWANCE;

/// Bytes a published item may grow by between the publish request and the bundle: an
/// assigned id and version, and its salt.
pub const PER_ITEM_ALLOWANCE: usize = 128;

/// Largest bundle signature accepted in a transfer (an ECDSA P-256 signature in DER is
/// at most 72 bytes).
pub const MAX_SIGNATURE_BYTES: usize = 512;

/// Messages queued between a served feed and its reader: each at most one part
/// ([`PART_BYTES`] and its fields) or a checkpoint.
pub const FEED_QUEUE_MESSAGES: usize = 2;

pub use crate::engine::PULL_PAGE_BYTES;
