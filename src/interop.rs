//! STIX 2.1 (and CSV / plain list) mapping: operator input files to items, items to
//! STIX 2.1 objects. No I/O here: callers pass text and get items and positioned errors.
//!
//! Provisional: the parsers arrive with the publish command.
