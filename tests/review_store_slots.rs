//! The store's packed index slots (`Slot` in `src/store/index.rs`): a slot keeps an
//! item's index in its bundle in 23 bits of one word, beside the liveness bit and the
//! type code. Indices that arrive over the network are below 100,000 (a signed header
//! holds at most that many digests), but at open the index of each item record is read
//! back from the bundle log, a file, and an index of 2^23 or more was folded into those
//! 23 bits without a word: the store then answered two different indices for one item.
//! Now such a record is refused at open as damage.

mod common;

use common::Pki;
use entente::crypto::BundleSigner;
use entente::model::{Distribution, Indicator, IndicatorType, Item, ItemId, ItemKind, Tlp};
use entente::store::prelude::*;
use entente::store::{LOG_FILE, Source};

/// The time the item record is stamped with (`accepted_ms`, field 9): a varint of six
/// bytes, found once in the log.
const ACCEPTED_MS: i64 = 1_765_000_000_123;

fn varint(mut value: u64, out: &mut Vec<u8>) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// A log written by this store, then changed on disk (as damage or a hand with write
/// access to the data directory would) so that its one item record says index 2^23,
/// with the frame's checksum made to match: the open must refuse the record (no bundle
/// has that many items, and a slot cannot hold the index), or else keep it whole.
#[test]
fn a_logged_index_no_slot_can_hold_is_refused_at_open() {
    let pki = Pki::new();
    let hq = pki.material(&pki.node("redmond.hq"));
    let dir = pki.path().join("store");
    let now = entente::engine::now_ms();
    let item = Item {
        id: ItemId::new_random(),
        modified_ms: now - 10_000,
        tlp: Tlp::Green,
        tags: vec![],
        kind: ItemKind::Indicator(Indicator {
            indicator_type: IndicatorType::Domain,
            value: "folded-index.example".into(),
            description: String::new(),
            confidence: 50,
            kill_chain_phases: vec![],
            valid_from_ms: now - 10_000,
            valid_until_ms: None,
            properties: Default::default(),
        }),
    };
    let signer = BundleSigner::new(
        hq.id.clone(),
        hq.private_key_pkcs8().unwrap(),
        hq.certificate_der(),
    )
    .unwrap();
    let bundle = signer
        .sign(std::slice::from_ref(&item), &Distribution::default(), now)
        .unwrap();
    let bundle_id = bundle.header().bundle_id.clone();
    {
        let store = common::open_store(&dir, &hq.id, 16 << 20).unwrap();
        let source = Source {
            received_from: hq.id.clone(),
            hops: 0,
        };
        store.accept(&bundle, &source, ACCEPTED_MS).unwrap();
        store.flush().unwrap();
    }

    // The record held index 0 (not written, as protobuf leaves out zeros) and
    // `accepted_ms` in six bytes: the same seven bytes now say `accepted_ms = 1` and
    // `index = 2^23`, so no length changes.
    let path = dir.join(LOG_FILE);
    let mut log = std::fs::read(&path).unwrap();
    let mut from = vec![0x48];
    varint(ACCEPTED_MS as u64, &mut from);
    assert_eq!(from.len(), 7);
    let mut to = vec![0x48, 0x01, 0x10];
    varint(1 << 23, &mut to);
    assert_eq!(to.len(), 7);
    let found: Vec<usize> = log
        .windows(from.len())
        .enumerate()
        .filter(|(_, w)| *w == from.as_slice())
        .map(|(at, _)| at)
        .collect();
    assert_eq!(found.len(), 1, "the record's accepted_ms is found once");
    let at = found[0];
    log[at..at + 7].copy_from_slice(&to);
    // The frame around it: "ENTF" | body_len u32 LE | crc32 u32 LE | body.
    let frame = log[..at]
        .windows(4)
        .rposition(|w| w == b"ENTF")
        .expect("a frame marker before the record");
    let body_len = u32::from_le_bytes(log[frame + 4..frame + 8].try_into().unwrap()) as usize;
    let body = frame + 12..frame + 12 + body_len;
    assert!(body.contains(&at), "the record lies in that frame");
    let crc = crc32fast::hash(&log[body]);
    log[frame + 8..frame + 12].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&path, &log).unwrap();

    match common::open_store(&dir, &hq.id, 16 << 20) {
        // Refused with the reason: what a store should do with such a record.
        Err(error) => assert!(error.to_string().contains("index"), "{error}"),
        Ok(store) => {
            let held = store.held_bundle(&bundle_id).unwrap().expect("held");
            let stored = store.get(&item.id).unwrap().expect("held");
            assert_eq!(
                (held.items[0].index, held.items[0].stored.index),
                (stored.index, stored.index),
                "one item, two indices"
            );
        }
    }
}
