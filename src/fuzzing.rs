//! Property checks over untrusted bytes, one per input the node reads from the network
//! or from files: signed bundles, the bundle log, ledger records, page tokens, operator
//! input (STIX, CSV, lists) and the configuration. Each takes arbitrary bytes, must not
//! panic on any of them, and asserts what the format promises (round trips, re-verification,
//! tamper detection). The coverage-guided fuzz targets under `fuzz/` call these, and the
//! test suite replays the kept inputs through them. Not part of the node's interface.
//!
//! The bundle checks sign with a P-256 key made for this purpose only: it is trusted by
//! nothing but the check itself, so inputs signed with it can be kept with the seeds.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use prost::Message;

use crate::crypto::{
    self, BundleSigner, CertificateSource, SignerError, SignerTrust, VerifiedBundle, VerifyError,
};
use crate::interop::{Defaults, InputFormat, ParsedInput, parse_input, to_stix};
use crate::model::{BundleId, Distribution, IndicatorType, Item, NodeId, Tlp, normalise};
use crate::policy::{PageTokenError, PageTokens, TokenScope};
use crate::store::ledger::{self, ChainWalk, Head};
use crate::store::log::{BundleLog, MAGIC, Span};
use crate::store::records::{self, ItemRecord};
use crate::store::{LedgerCheck, LedgerEntry};
use crate::wire;

/// "Now" for every check, so that results never depend on the clock.
pub const NOW_MS: i64 = 1_750_000_000_000;

/// The origin whose key signs the checks' bundles (its certificate's DNS name).
pub const ORIGIN: &str = "origin.fuzz";

/// PKCS#8 DER of the P-256 key the checks sign with (made for fuzzing, trusted by nothing).
const KEY_HEX: &str = "308187020100301306072a8648ce3d020106082a8648ce3d030107046d306b0201010420d9db123b5d7de2cf221503a96e2b5c43641a5b2dde006348ee74dfe1e955d089a1440342000460996764f66bb92aea70585b82781234bf3afb00bfa4f0aab94a517a10cf9fc3fc84c416eb3d3ea4aee76a83ac586b9936bbf415c879478e6d59e0012b1da175";

/// Its self-signed certificate (DNS name `origin.fuzz`, valid to 2126).
const CERT_HEX: &str = "3082019c30820141a00302010202147268332bdff747b73d53e9953c9cbc86cd973546300a06082a8648ce3d04030230163114301206035504030c0b6f726967696e2e66757a7a3020170d3236313230363032353734355a180f32313236313131323032353734355a30163114301206035504030c0b6f726967696e2e66757a7a3059301306072a8648ce3d020106082a8648ce3d0301070342000460996764f66bb92aea70585b82781234bf3afb00bfa4f0aab94a517a10cf9fc3fc84c416eb3d3ea4aee76a83ac586b9936bbf415c879478e6d59e0012b1da175a36b3069301d0603551d0e0416041430a5ccd41208061f479975084f055be003dc02bb301f0603551d2304183016801430a5ccd41208061f479975084f055be003dc02bb300f0603551d130101ff040530030101ff30160603551d11040f300d820b6f726967696e2e66757a7a300a06082a8648ce3d0403020349003046022100a90c599449258806d791d54a3b896a425774a83b189da36722277a44befb895f022100ade20211150d0b1135f9e2dbaf4247f89d7b5245e02ef2a4106573aeb7dd0845";

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("constant hex"))
        .collect()
}

/// Reads an input piece by piece; past the end every read gives zeros or nothing.
struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }

    fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        head
    }

    /// A piece of at most 255 bytes, its length given by one byte.
    fn piece(&mut self) -> &'a [u8] {
        let n = usize::from(self.byte());
        self.take(n)
    }

    fn u64(&mut self) -> u64 {
        let mut out = [0u8; 8];
        let got = self.take(8);
        out[..got.len()].copy_from_slice(got);
        u64::from_le_bytes(out)
    }

    fn rest(&mut self) -> &'a [u8] {
        self.take(self.0.len())
    }
}

// ---------------------------------------------------------------------------------
// Signed bundles
// ---------------------------------------------------------------------------------

/// The checks' signer and the certificate it is known by.
pub struct FuzzSigner {
    signer: BundleSigner,
    cert: Vec<u8>,
    cert_sha256: [u8; 32],
    origin: NodeId,
}

impl FuzzSigner {
    /// The one signer (made once per process).
    pub fn get() -> &'static FuzzSigner {
        static SIGNER: OnceLock<FuzzSigner> = OnceLock::new();
        SIGNER.get_or_init(|| {
            let origin = NodeId::new(ORIGIN).expect("a valid node id");
            let cert = unhex(CERT_HEX);
            let signer = BundleSigner::new(origin.clone(), &unhex(KEY_HEX), &cert)
                .expect("the fuzzing key is a P-256 PKCS#8 key");
            FuzzSigner {
                signer,
                cert_sha256: crypto::sha256(&cert),
                cert,
                origin,
            }
        })
    }

    /// Signs `items` as one bundle.
    pub fn sign(
        &self,
        items: &[Item],
        distribution: &Distribution,
        created_ms: i64,
    ) -> VerifiedBundle {
        self.signer
            .sign(items, distribution, created_ms)
            .expect("1 to 100,000 items sign")
    }

    /// Verifies a received bundle against this signer only.
    pub fn verify(&self, bundle: &wire::SignedBundle) -> Result<VerifiedBundle, VerifyError> {
        crypto::verify(bundle, self, self, NOW_MS)
    }
}

impl CertificateSource for FuzzSigner {
    fn certificate(&self, sha256: &[u8; 32]) -> Option<Vec<u8>> {
        (*sha256 == self.cert_sha256).then(|| self.cert.clone())
    }
}

impl SignerTrust for FuzzSigner {
    fn verify_signer(&self, cert_der: &[u8], _at_ms: i64) -> Result<NodeId, SignerError> {
        if cert_der == self.cert.as_slice() {
            Ok(self.origin.clone())
        } else {
            Err(SignerError::Untrusted("not the fuzzing certificate".into()))
        }
    }
}

/// Bundles: the first byte chooses between a received bundle (the rest is a
/// `SignedBundle` on the wire, verified; whatever verifies must verify again from its
/// own wire form) and a bundle signed here (the rest gives items; the wire form of any
/// selection of them must verify to exactly those items, and no altered header may).
pub fn bundle(data: &[u8]) {
    let mut input = Input(data);
    match input.byte() % 2 {
        0 => received_bundle(input.rest()),
        _ => signed_bundle(&mut input),
    }
}

fn received_bundle(bytes: &[u8]) {
    let Ok(bundle) = wire::SignedBundle::decode(bytes) else {
        return;
    };
    let signer = FuzzSigner::get();
    if let Ok((header, digests)) = crypto::parse_header(&bundle.header_bytes) {
        assert_eq!(header.item_count as usize, digests.len());
    }
    let Ok(verified) = signer.verify(&bundle) else {
        return;
    };
    check_verified(signer, &verified);
}

/// What holds of every verified bundle received: its structure, and its own wire form
/// verifies again (with every item, and with none).
fn check_verified(signer: &FuzzSigner, verified: &VerifiedBundle) {
    check_structure(verified);
    // The wire form of a verified bundle verifies again, to the same bundle, and
    // survives an encode and decode unchanged.
    let wire_all = verified.to_wire(|_| true);
    let decoded = wire::SignedBundle::decode(wire_all.encode_to_vec().as_slice())
        .expect("an encoded bundle decodes");
    assert_eq!(decoded, wire_all);
    assert_eq!(signer.verify(&decoded).as_ref(), Ok(verified));
    // Withholding every item keeps the header and signature valid.
    let withheld = signer
        .verify(&verified.to_wire(|_| false))
        .expect("a bundle with every item withheld verifies");
    assert_eq!(withheld.header(), verified.header());
    assert!(withheld.items().is_empty());
}

/// What holds of every verified bundle: the header parses to the one held, and each
/// item is in index order, matches its digest and is valid.
fn check_structure(verified: &VerifiedBundle) {
    let (header, digests) =
        crypto::parse_header(verified.header_bytes()).expect("a verified header parses");
    assert_eq!(&header, verified.header());
    let mut last = None;
    for item in verified.items() {
        assert!(last < Some(item.index), "items in index order, each once");
        last = Some(item.index);
        assert_eq!(
            crypto::leaf_digest(&item.salt, &item.item_bytes).as_slice(),
            digests[item.index as usize].as_slice()
        );
        assert_eq!(Item::decode(&item.item_bytes).as_ref(), Ok(&item.item));
        item.item.validate().expect("a verified item is valid");
    }
}

fn signed_bundle(input: &mut Input<'_>) {
    let flags = input.byte();
    let keep_mask = input.u64();
    let created_ms = NOW_MS - (input.u64() % (10 * 365 * 86_400_000)) as i64;
    let tamper_at = input.u64();
    let distribution = Distribution {
        max_hops: (flags & 1 == 1).then_some(u32::from(flags >> 4)),
        recipients: if flags & 2 == 2 {
            vec![NodeId::new("peer.fuzz").expect("a valid node id")]
        } else {
            Vec::new()
        },
    };
    let mut items = Vec::new();
    while !input.0.is_empty() && items.len() < 16 {
        let n = usize::from(u16::from_le_bytes([input.byte(), input.byte()]));
        if let Ok(item) = Item::decode(input.take(n)) {
            // Items encode to bytes that decode to the same item.
            assert_eq!(Item::decode(&item.encode()).as_ref(), Ok(&item));
            items.push(item);
        }
    }
    if items.is_empty() {
        return;
    }
    let signer = FuzzSigner::get();
    let signed = signer.sign(&items, &distribution, created_ms);
    let kept = |i: u32| keep_mask >> (i % 64) & 1 == 1;
    let wire = signed.to_wire(|item| kept(item.index));
    let decoded = wire::SignedBundle::decode(wire.encode_to_vec().as_slice())
        .expect("an encoded bundle decodes");
    let verified = signer
        .verify(&decoded)
        .expect("a bundle signed here verifies");
    check_structure(&verified);
    assert_eq!(verified.header().item_count as usize, items.len());
    assert_eq!(verified.header().distribution, distribution);
    let expected: Vec<&Item> = items
        .iter()
        .enumerate()
        .filter(|(i, _)| kept(*i as u32))
        .map(|(_, item)| item)
        .collect();
    let got: Vec<&Item> = verified.items().iter().map(|i| &i.item).collect();
    assert_eq!(got, expected);
    // Any altered header byte, and any altered byte of a disclosed item, is refused.
    let mut altered = decoded.clone();
    let at = (tamper_at % altered.header_bytes.len() as u64) as usize;
    altered.header_bytes[at] ^= 1 << ((tamper_at >> 32) % 8);
    assert!(
        signer.verify(&altered).is_err(),
        "an altered header verified"
    );
    if let Some(d) = altered.disclosures.first() {
        if !d.item_bytes.is_empty() {
            let mut altered = decoded.clone();
            let bytes = &mut altered.disclosures[0].item_bytes;
            let at = (tamper_at % bytes.len() as u64) as usize;
            bytes[at] ^= 1 << ((tamper_at >> 40) % 8);
            assert!(
                matches!(signer.verify(&altered), Err(VerifyError::DigestMismatch(_))),
                "an altered item verified"
            );
        }
    }
}

// ---------------------------------------------------------------------------------
// The bundle log
// ---------------------------------------------------------------------------------

/// A frame as read back, owned.
#[derive(Debug, PartialEq, Eq)]
struct ReadFrame {
    bundle_uuid: [u8; 16],
    feed_seq: u64,
    head: Option<(Span, Vec<u8>)>,
    items: Vec<(Span, Vec<u8>)>,
}

fn read_log(path: &Path, acknowledged: u64) -> (Result<BundleLog, String>, Vec<ReadFrame>) {
    let mut frames = Vec::new();
    let log = BundleLog::open(path, acknowledged, |frame| {
        frames.push(ReadFrame {
            bundle_uuid: frame.bundle_uuid,
            feed_seq: frame.feed_seq,
            head: frame.head.map(|(s, b)| (s, b.to_vec())),
            items: frame.items.iter().map(|(s, b)| (*s, b.to_vec())).collect(),
        });
        Ok(())
    })
    .map_err(|e| e.to_string());
    (log, frames)
}

/// A directory of this thread's own for log files (tests run checks on several threads
/// of one process at once, and each check clears its directory first).
fn scratch_dir() -> PathBuf {
    thread_local! {
        static DIR: tempfile::TempDir = {
            let shm = Path::new("/dev/shm");
            let made = if shm.is_dir() {
                tempfile::Builder::new()
                    .prefix("entente-fuzz")
                    .tempdir_in(shm)
            } else {
                tempfile::Builder::new().prefix("entente-fuzz").tempdir()
            };
            made.expect("a temporary directory")
        };
    }
    DIR.with(|dir| dir.path().to_owned())
}

fn clear(dir: &Path) -> PathBuf {
    for entry in std::fs::read_dir(dir)
        .expect("the scratch directory reads")
        .flatten()
    {
        let _ = std::fs::remove_file(entry.path());
    }
    dir.join(records::LOG_FILE)
}

/// The bundle log read from an arbitrary file. The first byte chooses whether the
/// format's magic is put in front of the rest and how much of the file counts as
/// acknowledged. Whatever opens must have kept every acknowledged byte, cut exactly the
/// unreadable tail (copied aside), read back every span as it was, and open again to
/// the same frames with nothing more cut; a refused log is left untouched. The store's
/// own replay (with its index) must not panic either, and its fast path must agree
/// with a full decode on every item record.
pub fn bundle_log(data: &[u8]) {
    let mut input = Input(data);
    let mode = input.byte();
    let mut file = if mode & 0x80 == 0 {
        MAGIC.to_vec()
    } else {
        Vec::new()
    };
    file.extend_from_slice(input.rest());
    let file_len = file.len() as u64;
    let acknowledged = match mode % 3 {
        0 => 0,
        1 => MAGIC.len() as u64,
        _ => file_len,
    };
    let dir = &scratch_dir();
    let path = clear(dir);
    std::fs::write(&path, &file).expect("the scratch file writes");
    let (log, frames) = read_log(&path, acknowledged);
    match log {
        Err(_) => {
            let now = std::fs::read(&path).expect("the log reads");
            assert_eq!(now, file, "a refused log was changed");
        }
        Ok(log) => {
            let end = log.len();
            assert!(end >= acknowledged, "acknowledged bytes were cut");
            assert!(end >= MAGIC.len() as u64 && end <= file_len);
            let now = std::fs::read(&path).expect("the log reads");
            assert_eq!(now.as_slice(), &file[..end as usize]);
            if end < file_len {
                let aside = dir.join(format!("{}.cut-{end}", records::LOG_FILE));
                let cut = std::fs::read(&aside).expect("the cut tail was copied aside");
                assert_eq!(cut.as_slice(), &file[end as usize..]);
            }
            let mut last_end = MAGIC.len() as u64;
            for frame in &frames {
                assert!(frame.feed_seq > 0);
                for (span, bytes) in frame.head.iter().chain(&frame.items) {
                    assert!(span.offset >= last_end, "spans in file order");
                    last_end = span.offset + u64::from(span.len);
                    assert!(last_end <= end);
                    assert_eq!(span.len as usize, bytes.len());
                    assert_eq!(&log.read(*span).expect("a span reads"), bytes);
                }
                for (_, record) in &frame.items {
                    fast_path_agrees(record);
                }
            }
            drop(log);
            let (again, frames_again) = read_log(&path, end);
            let again = again.expect("a log that opened opens again");
            assert_eq!(again.len(), end, "a second open cut more");
            assert_eq!(frames_again, frames);
        }
    }
    // The store's replay of the same file.
    let path = clear(dir);
    std::fs::write(&path, &file).expect("the scratch file writes");
    let _ = crate::store::replay_log(&path, acknowledged);
}

/// The index's fast read of an item record agrees with the full decode whenever both
/// read it.
fn fast_path_agrees(record: &[u8]) {
    let Some(fast) = records::index_fields(record) else {
        return;
    };
    let Ok(full) = ItemRecord::decode(record) else {
        return;
    };
    let Ok(item) = Item::decode_stored(&full.item_bytes) else {
        return;
    };
    assert_eq!(fast.index, full.index);
    assert_eq!(fast.uuid, item.id.uuid_bytes());
    let expected = records::value_of(&item);
    assert_eq!(fast.ty, expected.map_or(records::NOT_INDEXED, |(ty, _)| ty));
    assert_eq!(fast.value, expected.map(|(_, v)| v.as_bytes()));
}

// ---------------------------------------------------------------------------------
// Ledger records
// ---------------------------------------------------------------------------------

/// Ledger records: the first byte chooses between one stored record (decoded,
/// re-encoded, filtered), a chain built here (intact as built; any single altered byte
/// is found and attributed to its record; a removed record or head is found), and
/// arbitrary stored records walked as a chain (whatever the walk calls intact really
/// is). Item records of the bundle log are read both ways too.
pub fn ledger(data: &[u8]) {
    let mut input = Input(data);
    match input.byte() {
        b if b >= 0xf0 => ledger_segment(&mut input),
        b => match b % 3 {
            0 => one_record(input.rest()),
            1 => built_chain(&mut input),
            _ => walked_chain(&mut input),
        },
    }
}

/// The canonical form of a ledger record, which its hash is taken over.
pub fn ledger_canonical(record: &crate::store::LedgerRecord) -> Vec<u8> {
    ledger::encode_record(record.seq, &record.entry, &record.prev_hash)
}

/// Segment frames: entries built from the input are encoded as frames and decode to
/// the same entries; the rest of the input, read as frames, never panics and
/// decodes only to frames whose counts it holds.
fn ledger_segment(input: &mut Input<'_>) {
    use crate::store::ledger::segment::{self, Dictionary, Frame, Interner, Next};
    let mut interner = Interner::default();
    let mut bytes = Vec::new();
    let mut written = Vec::new();
    let mut seq = 1u64;
    for _ in 0..input.byte() % 4 {
        let entries: Vec<LedgerEntry> = (0..1 + input.byte() % 3)
            .map(|_| fuzz_entry(input))
            .collect();
        let link = [input.byte(); 8];
        let body = interner.records_body(seq, &link, &entries);
        segment::put_frame(&mut bytes, &body);
        written.push(Frame::Records {
            first: seq,
            link,
            entries: entries.clone(),
        });
        seq += entries.len() as u64;
    }
    let mut dict = Dictionary::default();
    let mut at = 0;
    let mut read = Vec::new();
    while let Next::Frame(raw) = segment::next_frame(&bytes, at) {
        assert!(raw.crc_ok);
        read.push(segment::decode_body(raw.body, &mut dict).expect("a frame written decodes"));
        at = raw.end;
    }
    assert_eq!(at, bytes.len());
    assert_eq!(read, written);
    let rest = input.rest();
    let mut dict = Dictionary::default();
    let mut at = 0;
    while let Next::Frame(raw) = segment::next_frame(rest, at) {
        if let Ok(Frame::Records { entries, .. }) = segment::decode_body(raw.body, &mut dict) {
            assert!(entries.len() <= raw.body.len());
        }
        at = raw.end;
    }
}

fn one_record(stored: &[u8]) {
    fast_path_agrees(stored);
    if let Some(head) = Head::decode(stored) {
        assert_eq!(head.encode().as_slice(), stored);
    }
    let Ok(record) = ledger::decode_record(stored) else {
        assert!(ledger::decode_if(stored, None, None).is_err());
        return;
    };
    assert_eq!(record.hash, ledger::link_hash(stored));
    assert_eq!(
        ledger::decode_if(stored, None, None).as_ref(),
        Ok(&Some(record.clone()))
    );
    let partner = &record.entry.partner;
    assert_eq!(
        ledger::decode_if(stored, Some(partner), Some(record.entry.time_ms)),
        Ok(Some(record.clone()))
    );
    if let Some(later) = record.entry.time_ms.checked_add(1) {
        assert_eq!(ledger::decode_if(stored, None, Some(later)), Ok(None));
    }
    let other = NodeId::new(if partner.as_str() == "a.fuzz" {
        "b.fuzz"
    } else {
        "a.fuzz"
    })
    .expect("a valid node id");
    assert_eq!(ledger::decode_if(stored, Some(&other), None), Ok(None));
    // Encoding the decoded record gives bytes that decode to the same record.
    let again = ledger::encode_record(record.seq, &record.entry, &record.prev_hash);
    let decoded = ledger::decode_record(&again).expect("an encoded record decodes");
    assert_eq!(decoded.seq, record.seq);
    assert_eq!(decoded.entry, record.entry);
    assert_eq!(decoded.prev_hash, record.prev_hash);
    assert_eq!(decoded.hash, ledger::link_hash(&again));
}

fn fuzz_entry(input: &mut Input<'_>) -> LedgerEntry {
    let partners = ["a.fuzz", "b.fuzz", "hq.example"];
    let partner = partners[usize::from(input.byte()) % partners.len()];
    let mut policy_hash = [0u8; 32];
    let got = input.take(32);
    policy_hash[..got.len()].copy_from_slice(got);
    let mut deliveries = Vec::new();
    for _ in 0..input.byte() % 4 {
        let mut uuid = [0u8; 16];
        let got = input.take(16);
        uuid[..got.len()].copy_from_slice(got);
        let indices = input.piece().iter().map(|&b| u32::from(b) * 1000).collect();
        deliveries.push((BundleId::from_uuid_bytes(uuid), indices));
    }
    LedgerEntry {
        time_ms: input.u64() as i64,
        partner: NodeId::new(partner).expect("a valid node id"),
        path: String::from_utf8_lossy(input.piece()).into_owned(),
        deliveries,
        policy_hash,
        note: String::from_utf8_lossy(input.piece()).into_owned(),
    }
}

fn walk(records: &[(u64, Vec<u8>)], head: Option<Head>) -> LedgerCheck {
    let mut walk = ChainWalk::new();
    for (seq, stored) in records {
        if let Err(broken) = walk.step(*seq, stored) {
            return broken.into();
        }
    }
    walk.finish(head)
}

fn built_chain(input: &mut Input<'_>) {
    let n = 1 + u64::from(input.byte() % 6);
    let tamper = input.byte();
    let target = input.u64();
    let mut records = Vec::new();
    let mut prev = ledger::GENESIS;
    for seq in 1..=n {
        let entry = fuzz_entry(input);
        let stored = ledger::encode_record(seq, &entry, &prev);
        prev = ledger::link_hash(&stored);
        records.push((seq, stored));
    }
    let head = Head { seq: n, hash: prev };
    assert_eq!(
        walk(&records, Some(head)),
        LedgerCheck::Intact {
            records: n,
            head: prev,
            from: 0
        }
    );
    let k = (target % n) as usize;
    match tamper % 3 {
        0 => {
            // One flipped bit in record k+1: found, and blamed on that record.
            let stored = &mut records[k].1;
            let at = ((target >> 8) % stored.len() as u64) as usize;
            stored[at] ^= 1 << ((target >> 4) % 8);
            match walk(&records, Some(head)) {
                LedgerCheck::Broken { seq, .. } => assert_eq!(seq, k as u64 + 1),
                intact => panic!("an altered record went unnoticed: {intact:?}"),
            }
        }
        1 => {
            records.remove(k);
            assert!(matches!(
                walk(&records, Some(head)),
                LedgerCheck::Broken { .. }
            ));
        }
        _ => {
            assert!(matches!(walk(&records, None), LedgerCheck::Broken { .. }));
        }
    }
}

fn walked_chain(input: &mut Input<'_>) {
    let head = match input.byte() % 3 {
        0 => None,
        1 => Head::decode(input.take(40)),
        _ => Some(Head {
            seq: u64::from(input.byte() % 8),
            hash: ledger::GENESIS,
        }),
    };
    let mut records = Vec::new();
    while !input.0.is_empty() && records.len() < 8 {
        let seq = u64::from(input.byte() % 10);
        records.push((seq, input.piece().to_vec()));
    }
    let check = walk(&records, head);
    if let LedgerCheck::Intact {
        records: n,
        head: hash,
        ..
    } = check
    {
        // Intact means: records 1..=n, each decoding, each linked to the one before,
        // and the head naming the last.
        assert_eq!(records.len() as u64, n);
        let mut prev = ledger::GENESIS;
        for (i, (seq, stored)) in records.iter().enumerate() {
            assert_eq!(*seq, i as u64 + 1);
            let record = ledger::decode_record(stored).expect("an intact record decodes");
            assert_eq!(record.seq, *seq);
            assert_eq!(record.prev_hash, prev);
            prev = record.hash;
        }
        assert_eq!(hash, prev);
        assert_eq!(head.map_or(ledger::GENESIS, |h| h.hash), prev);
    }
}

// ---------------------------------------------------------------------------------
// Page tokens
// ---------------------------------------------------------------------------------

fn fuzz_node_id(bytes: &[u8], fallback: &str) -> NodeId {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| NodeId::new(s).ok())
        .unwrap_or_else(|| NodeId::new(fallback).expect("a valid node id"))
}

/// Page tokens: arbitrary bytes never open; a sealed cursor opens to itself under its
/// scope and under no other; any altered, shortened or lengthened token is refused, and
/// every refusal is the same answer.
pub fn page_token(data: &[u8]) {
    static TOKENS: OnceLock<PageTokens> = OnceLock::new();
    let tokens = TOKENS.get_or_init(|| PageTokens::new().expect("the system random source"));
    let mut input = Input(data);
    let caller_a = fuzz_node_id(input.piece(), "alice.example");
    let path_a = String::from_utf8_lossy(input.piece()).into_owned();
    let query_a = input.piece();
    let caller_b = fuzz_node_id(input.piece(), "alice.example");
    let path_b = String::from_utf8_lossy(input.piece()).into_owned();
    let query_b = input.piece();
    let cursor = input.take(usize::from(input.0.first().copied().unwrap_or(0) % 20));
    let alter = input.u64();
    let forged = input.rest();

    let a = TokenScope {
        caller: &caller_a,
        path: &path_a,
        query: query_a,
    };
    let b = TokenScope {
        caller: &caller_b,
        path: &path_b,
        query: query_b,
    };
    assert_eq!(tokens.open(&a, forged), Err(PageTokenError::Invalid));

    let token = match tokens.seal(&a, cursor) {
        Ok(token) => token,
        Err(e) => {
            assert!(cursor.len() > 15);
            assert_eq!(e, PageTokenError::CursorTooLong(cursor.len()));
            return;
        }
    };
    let token_len = token.len();
    assert_eq!(
        token_len,
        tokens.seal(&b, &[]).expect("an empty cursor seals").len()
    );
    assert_eq!(tokens.open(&a, &token).as_deref(), Ok(cursor));
    let same = caller_a == caller_b && path_a == path_b && query_a == query_b;
    let opened_b = tokens.open(&b, &token);
    if same {
        assert_eq!(opened_b.as_deref(), Ok(cursor));
    } else {
        assert_eq!(opened_b, Err(PageTokenError::Invalid));
    }
    let mut altered = token.clone();
    let at = (alter % token_len as u64) as usize;
    altered[at] ^= ((alter >> 8) as u8).max(1);
    assert_eq!(tokens.open(&a, &altered), Err(PageTokenError::Invalid));
    assert_eq!(tokens.open(&a, &token[..at]), Err(PageTokenError::Invalid));
    let mut longer = token.clone();
    longer.push((alter >> 16) as u8);
    assert_eq!(tokens.open(&a, &longer), Err(PageTokenError::Invalid));
}

// ---------------------------------------------------------------------------------
// Operator input
// ---------------------------------------------------------------------------------

/// Items per input written out and read back (the rest get the common checks only),
/// so that long inputs do not slow the search down.
const ROUND_TRIPS: usize = 8;

/// Defaults chosen by one byte.
fn fuzz_defaults(choice: u8) -> Defaults {
    let tlp = match choice % 6 {
        5 => None,
        n => Some(Tlp::ALL[usize::from(n)]),
    };
    let indicator_type = match (choice / 6) % 11 {
        10 => None,
        n => Some(IndicatorType::ALL[usize::from(n)]),
    };
    Defaults {
        tlp,
        indicator_type,
        tags: if choice & 0x80 != 0 {
            vec!["fuzz".into()]
        } else {
            Vec::new()
        },
        origin: (choice & 0x40 != 0).then(|| "hq.fuzz".to_owned()),
    }
}

/// What holds of every parse: each item is valid, normalised (normalising its value
/// again changes nothing), survives its own encoding, carries the default tags, and
/// the input's records are all accounted for.
fn check_parsed(parsed: &ParsedInput, defaults: &Defaults) {
    for item in &parsed.items {
        item.validate().expect("every item returned is valid");
        if let Some(value) = item.value() {
            assert_eq!(
                normalise(item.indicator_type(), value).as_deref(),
                Ok(value),
                "a value that normalises to itself"
            );
        }
        assert_eq!(Item::decode(&item.encode()).as_ref(), Ok(item));
        for tag in &defaults.tags {
            assert!(item.tags.contains(tag));
        }
    }
}

fn split_input(data: &[u8]) -> Option<(Defaults, &str)> {
    let (&choice, rest) = data.split_first()?;
    Some((fuzz_defaults(choice), std::str::from_utf8(rest).ok()?))
}

/// STIX input: the common checks, and every item read comes back with the same id,
/// version, marking, tags, type and value when written out as STIX and read again, and
/// is then written out the same.
pub fn stix(data: &[u8]) {
    let Some((defaults, text)) = split_input(data) else {
        return;
    };
    let parsed = parse_input(InputFormat::Stix, text, &defaults, NOW_MS);
    check_parsed(&parsed, &defaults);
    for item in parsed.items.iter().take(ROUND_TRIPS) {
        let bundle = serde_json::json!({
            "type": "bundle",
            "id": "bundle--5d0092c5-5f74-4287-9642-33f4c354e56d",
            "objects": [to_stix(item)],
        });
        let again = parse_input(
            InputFormat::Stix,
            &bundle.to_string(),
            &Defaults::default(),
            NOW_MS,
        );
        assert_eq!(again.errors, [], "STIX written here reads back");
        let [back] = &again.items[..] else {
            panic!("one object read back as {} items", again.items.len());
        };
        assert_eq!(
            (&back.id, back.modified_ms, back.tlp, &back.tags),
            (&item.id, item.modified_ms, item.tlp, &item.tags),
            "STIX round trip"
        );
        assert_eq!(
            back.indicator_type(),
            item.indicator_type(),
            "STIX round trip"
        );
        assert_eq!(back.value(), item.value(), "STIX round trip");
        // What export fills in (a name, a description) is read back as given, so a
        // second export writes the same object.
        assert_eq!(to_stix(back), to_stix(item), "STIX export is a fixed point");
    }
}

/// Longest pattern the pattern check is fuzzed with (an indicator's value is bounded
/// well below a pattern this long anyway).
const MAX_FUZZED_PATTERN_BYTES: usize = 4096;

/// A STIX pattern, as the `pattern` of one GREEN indicator in a STIX bundle: the grammar
/// check (`check_pattern_syntax`) never fails on any text; an indicator the import
/// takes in is either one typed comparison or a pattern the check accepts; what the
/// node exports for it is a pattern the check accepts again, and reads back as the
/// same item.
pub fn pattern(data: &[u8]) {
    use crate::model::pattern_syntax::check_pattern_syntax;
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if text.len() > MAX_FUZZED_PATTERN_BYTES {
        return;
    }
    let accepted = check_pattern_syntax(text);
    let bundle = serde_json::json!({
        "type": "bundle",
        "id": "bundle--5d0092c5-5f74-4287-9642-33f4c354e56d",
        "objects": [{
            "type": "indicator",
            "spec_version": "2.1",
            "id": "indicator--0b7b7bb5-5d3a-4c7e-9a8e-43c9f3e6d1a2",
            "created": "2025-06-01T00:00:00.000Z",
            "modified": "2025-06-01T00:00:00.000Z",
            "pattern": text,
            "pattern_type": "stix",
            "valid_from": "2025-06-01T00:00:00.000Z",
            "object_marking_refs": ["marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb"],
        }],
    });
    let parsed = parse_input(
        InputFormat::Stix,
        &bundle.to_string(),
        &Defaults::default(),
        NOW_MS,
    );
    let [item] = &parsed.items[..] else {
        assert!(parsed.items.is_empty(), "one object read as several items");
        return;
    };
    if item.indicator_type() == IndicatorType::StixPattern {
        assert!(
            accepted.is_ok(),
            "a pattern the check refuses ({accepted:?}) was taken in: {text:?}"
        );
    }
    let exported = to_stix(item);
    let written = exported
        .get("pattern")
        .and_then(serde_json::Value::as_str)
        .expect("an exported indicator has a pattern");
    if let Err(e) = check_pattern_syntax(written) {
        panic!("the export of {text:?} has a pattern the check refuses: {written:?}: {e}");
    }
    let again = parse_input(
        InputFormat::Stix,
        &serde_json::json!({
            "type": "bundle",
            "id": "bundle--5d0092c5-5f74-4287-9642-33f4c354e56d",
            "objects": [exported],
        })
        .to_string(),
        &Defaults::default(),
        NOW_MS,
    );
    assert_eq!(again.errors, [], "the export of {text:?} reads back");
    let [back] = &again.items[..] else {
        panic!(
            "the export of {text:?} read back as {} items",
            again.items.len()
        );
    };
    assert_eq!(
        (back.indicator_type(), back.value()),
        (item.indicator_type(), item.value()),
        "pattern round trip of {text:?}"
    );
}

/// CSV input: the common checks, and the items' types, values, markings and tags,
/// written as CSV rows, read back the same.
pub fn csv(data: &[u8]) {
    let Some((defaults, text)) = split_input(data) else {
        return;
    };
    let parsed = parse_input(InputFormat::Csv, text, &defaults, NOW_MS);
    check_parsed(&parsed, &defaults);
    // One document for every row written, as building a CSV reader is the costly part.
    let written: Vec<&Item> = parsed.items.iter().take(ROUND_TRIPS).collect();
    if written.is_empty() {
        return;
    }
    let mut writer = ::csv::Writer::from_writer(Vec::new());
    for item in &written {
        writer
            .write_record([
                item.indicator_type().as_str(),
                item.value().expect("CSV gives indicators"),
                item.tlp.as_str(),
                &item.tags.join(";"),
            ])
            .expect("a row writes to memory");
    }
    let rows = String::from_utf8(writer.into_inner().expect("flushed")).expect("UTF-8");
    let again = parse_input(InputFormat::Csv, &rows, &Defaults::default(), NOW_MS);
    assert_eq!(
        again.errors,
        [],
        "CSV rows written here read back: {rows:?}"
    );
    let summary = |item: &Item| {
        (
            item.indicator_type(),
            item.value().map(str::to_owned),
            item.tlp,
            item.tags.clone(),
        )
    };
    assert_eq!(
        again.items.iter().map(summary).collect::<Vec<_>>(),
        written.iter().map(|item| summary(item)).collect::<Vec<_>>(),
        "CSV round trip of {rows:?}"
    );
}

/// List input: the common checks, and every item's value, given as a one-line list
/// with its type, reads back the same.
pub fn list(data: &[u8]) {
    let Some((defaults, text)) = split_input(data) else {
        return;
    };
    let parsed = parse_input(InputFormat::List, text, &defaults, NOW_MS);
    check_parsed(&parsed, &defaults);
    // Every line that is not blank or a comment (after a byte-order mark) is an item
    // or an error.
    let lines = text
        .strip_prefix('\u{feff}')
        .unwrap_or(text)
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.trim().starts_with('#'))
        .count();
    assert_eq!(parsed.items.len() + parsed.errors.len(), lines);
    for item in parsed.items.iter().take(ROUND_TRIPS) {
        let value = item.value().expect("a list gives indicators");
        let again = parse_input(
            InputFormat::List,
            value,
            &Defaults {
                tlp: Some(item.tlp),
                indicator_type: Some(item.indicator_type()),
                tags: Vec::new(),
                origin: None,
            },
            NOW_MS,
        );
        assert_eq!(again.errors, [], "a normalised value reads back: {value:?}");
        assert_eq!(
            again.items.iter().map(Item::value).collect::<Vec<_>>(),
            [Some(value)]
        );
    }
}

// ---------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------

/// The configuration: checked without reading any file it names (relative paths
/// resolve under a directory that does not exist). Whatever passes keeps the promises the node relies on: distinct partner ids other
/// than the node's own, roles in their places, bounded cache and clock skew, valid
/// group names, HTTP Basic credentials only for read-only clients.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let base = Path::new("/nonexistent/entente-fuzz");
    let path = base.join("node.toml");
    let Ok(settings) = crate::Config::check(text, &path, base) else {
        return;
    };
    let mut ids = std::collections::HashSet::from([settings.node.id.clone()]);
    for peer in &settings.peers {
        assert!(ids.insert(peer.id.clone()), "a partner id twice");
        assert!(matches!(
            peer.role,
            crate::Role::Peer | crate::Role::ReadOnly
        ));
    }
    for client in &settings.clients {
        assert!(ids.insert(client.id.clone()), "a partner id twice");
        assert_ne!(client.role, crate::Role::Peer);
    }
    assert!((4 << 20..=65_536 << 20).contains(&settings.node.store_cache_bytes));
    assert!((0..=86_400_000).contains(&settings.node.max_clock_skew_ms));
    for (name, members) in &settings.groups {
        assert!(!name.is_empty() && name.len() <= 64);
        assert!(!members.is_empty());
    }
    assert!(!settings.node.tls.trust_anchors.is_empty());
    if let Some(taxii) = &settings.taxii {
        assert!((1024..=crate::config::MAX_TAXII_MAX_BODY_BYTES).contains(&taxii.max_body_bytes));
        for basic in &taxii.basic {
            // HTTP Basic only for a configured read-only client.
            assert!(
                settings
                    .clients
                    .iter()
                    .any(|c| c.id == basic.client && c.role == crate::Role::ReadOnly)
            );
            assert!(crate::crypto::password::check_password_hash(&basic.password_hash).is_ok());
        }
    }
}

// ---------------------------------------------------------------------------------
// TAXII requests
// ---------------------------------------------------------------------------------

/// What a TAXII request brings before any engine call: the query string (the first
/// line) and an `Authorization` header (the rest). A query that parses is within every
/// bound the handlers rely on; Basic credentials that are read back encode to the same.
pub fn taxii_request(data: &[u8]) {
    use crate::taxii::params;
    use base64::Engine as _;
    let (query, header) = match data.iter().position(|b| *b == b'\n') {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &data[..0]),
    };
    if let Ok(query) = std::str::from_utf8(query) {
        if let Ok(parsed) = params::parse(Some(query)) {
            assert!(query.len() <= params::MAX_QUERY_BYTES);
            assert!((1..=params::MAX_LIMIT).contains(&parsed.limit));
            for list in [&parsed.ids, &parsed.types, &parsed.spec_versions]
                .into_iter()
                .flatten()
            {
                assert!(!list.is_empty() && list.len() <= params::MAX_MATCH_VALUES);
                assert!(list.iter().all(|v| !v.is_empty()));
            }
            assert!(parsed.version.exact.len() <= params::MAX_MATCH_VALUES);
            if let Some(next) = &parsed.next {
                assert!(!next.is_empty() && next.len() <= params::MAX_NEXT_CHARS);
            }
        }
    }
    if let Some((user, password)) = crate::taxii::basic_credentials(header) {
        assert!(
            !password.is_empty() && password.len() <= crate::crypto::password::MAX_PASSWORD_BYTES
        );
        assert!(!user.as_bytes().contains(&b':'));
        let mut plain = user.clone().into_bytes();
        plain.push(b':');
        plain.extend_from_slice(&password);
        let again = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(plain)
        );
        assert_eq!(
            crate::taxii::basic_credentials(again.as_bytes()),
            Some((user, password))
        );
    }
}

// ---------------------------------------------------------------------------------
// Seeds
// ---------------------------------------------------------------------------------

/// Inputs that reach deep into each check, as (target, name, bytes): the starting
/// corpus of the fuzz targets (`fuzz/seeds/`), and a test of the checks themselves.
pub fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut out = Vec::new();
    let defaults = Defaults {
        tlp: Some(Tlp::Amber),
        indicator_type: None,
        tags: vec!["seed".into()],
        origin: None,
    };
    let list_text = "# seeds\n1.2.3.4\n2001:DB8::1\n10.1.2.3/8\nExample.COM.\n\
                     HTTP://Evil.Example/x?y\nA@Example.com\n\
                     D41D8CD98F00B204E9800998ECF8427E\n[file:name = 'x.exe']\n";
    let mut items = parse_input(InputFormat::List, list_text, &defaults, NOW_MS).items;
    let revoked = Item {
        kind: crate::model::ItemKind::Revocation(crate::model::Revocation {
            indicator_type: IndicatorType::Domain,
            reason: "false positive".into(),
            indicator: None,
        }),
        ..items[3].clone()
    };
    items.push(revoked);

    // Bundles.
    let signer = FuzzSigner::get();
    let signed = signer.sign(&items[..3], &Distribution::default(), NOW_MS - 1000);
    let mut received = vec![0u8];
    received.extend(signed.to_wire(|_| true).encode_to_vec());
    out.push(("bundle", "received-all".into(), received));
    let mut partial = vec![0u8];
    partial.extend(signed.to_wire(|i| i.index == 1).encode_to_vec());
    out.push(("bundle", "received-one".into(), partial));
    let mut structured = vec![1u8, 0x33];
    structured.extend(0b1011u64.to_le_bytes());
    structured.extend(5_000u64.to_le_bytes());
    structured.extend(0x0102_0304_0506_0708u64.to_le_bytes());
    for item in &items {
        let bytes = item.encode();
        structured.extend((bytes.len() as u16).to_le_bytes());
        structured.extend(bytes);
    }
    out.push(("bundle", "signed-here".into(), structured));

    // The bundle log: three frames, the first with the bundle head.
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("log");
    {
        let log = BundleLog::create(
            &path,
            &crate::store::LogHeader {
                store_id: [9; 16],
                owner: "a.fuzz".into(),
                created_ms: NOW_MS,
                generation: 0,
            },
        )
        .expect("a new log opens");
        let wire = signed.to_wire(|_| true);
        let head = records::BundleHead {
            header_bytes: wire.header_bytes.clone(),
            signature: wire.signature.clone(),
        }
        .encode_to_vec();
        let uuid = signed.header().bundle_id.uuid_bytes();
        for (seq, chunk) in [(1u64, &items[..2]), (2, &items[2..5]), (5, &items[5..])] {
            let mut frame = crate::store::log::FrameBuilder::new(
                &uuid,
                seq,
                (seq == 1).then_some(head.as_slice()),
            );
            for (index, item) in chunk.iter().enumerate() {
                frame.record(&ItemRecord {
                    bundle_uuid: uuid.to_vec(),
                    index: index as u32,
                    salt: vec![7; 16],
                    item_bytes: item.encode(),
                    modified_ms: item.modified_ms,
                    origin: ORIGIN.into(),
                    received_from: "peer.fuzz".into(),
                    hops: 1,
                    accepted_ms: NOW_MS,
                });
            }
            log.append(frame).expect("the frame is written");
        }
        log.sync().expect("the log syncs");
    }
    let file = std::fs::read(&path).expect("the log reads");
    let mut whole = vec![0u8];
    whole.extend_from_slice(&file[MAGIC.len()..]);
    out.push(("bundle_log", "three-frames".into(), whole.clone()));
    let mut torn = whole.clone();
    torn[0] = 1;
    torn.truncate(torn.len() - 5);
    out.push(("bundle_log", "torn-tail".into(), torn));

    // Ledger records.
    let entry = LedgerEntry {
        time_ms: NOW_MS,
        partner: NodeId::new("a.fuzz").expect("a valid node id"),
        path: "query".into(),
        deliveries: vec![(signed.header().bundle_id.clone(), vec![0, 2])],
        policy_hash: [3; 32],
        note: String::new(),
    };
    let first = ledger::encode_record(1, &entry, &ledger::GENESIS);
    let second = ledger::encode_record(2, &entry, &ledger::link_hash(&first));
    let mut one = vec![0u8];
    one.extend_from_slice(&first);
    out.push(("ledger", "one-record".into(), one));
    let mut built = vec![1u8, 3, 0];
    built.extend(0x0000_1234_0000_0001u64.to_le_bytes());
    for i in 0..4u8 {
        built.extend([i, 0x5a]);
        built.extend([i; 31]);
        built.extend([1]);
        built.extend([9; 16]);
        built.extend([2, 1, 7]);
        built.extend(NOW_MS.to_le_bytes());
        built.extend([5]);
        built.extend(b"query");
    }
    out.push(("ledger", "built-chain".into(), built.clone()));
    let mut walked = vec![2u8, 1];
    walked.extend(
        Head {
            seq: 2,
            hash: ledger::link_hash(&second),
        }
        .encode(),
    );
    for (seq, stored) in [(1u8, &first), (2, &second)] {
        walked.push(seq);
        walked.push(stored.len() as u8);
        walked.extend_from_slice(stored);
    }
    out.push(("ledger", "walked-chain".into(), walked));
    // Segment frames: the built chain's entries, as frames, then garbage to read.
    let mut segment = vec![0xf0u8, 3];
    segment.extend_from_slice(&built[2..]);
    segment.extend([40, 1, 11, 0, 0, 0x80, 0x80]);
    out.push(("ledger", "segment-frames".into(), segment));

    // Page tokens.
    let mut token = Vec::new();
    for piece in [
        &b"alice.example"[..],
        b"query",
        b"value=1.2.3.4",
        b"bob.example",
        b"query",
        b"value=1.2.3.4",
    ] {
        token.push(piece.len() as u8);
        token.extend_from_slice(piece);
    }
    token.extend([4, 0, 0, 7]);
    token.extend(0x1234_5678u64.to_le_bytes());
    token.extend([0u8; 44]);
    out.push(("page_token", "two-callers".into(), token));

    // Operator input.
    let mut stix = vec![5u8];
    let objects: Vec<serde_json::Value> = items.iter().map(to_stix).collect();
    stix.extend(
        serde_json::json!({
            "type": "bundle",
            "id": "bundle--5d0092c5-5f74-4287-9642-33f4c354e56d",
            "objects": objects,
        })
        .to_string()
        .into_bytes(),
    );
    out.push(("stix", "written-here".into(), stix));
    for (name, pattern) in [
        ("typed", "[ipv4-addr:value = '198.51.100.7']"),
        (
            "compound",
            "([domain-name:value = 'a.example'] OR [ipv4-addr:value IN ('1.2.3.4', '5.6.7.8')]) FOLLOWEDBY [file:hashes.'SHA-256' = 'aec070645fe53ee3b3763059376134f058cc337247c978add178b6ccdfb0019f'] WITHIN 600 SECONDS",
        ),
        (
            "qualified",
            "[network-traffic:dst_ref.value ISSUBSET '10.0.0.0/8' AND NOT network-traffic:dst_port > 1024] REPEATS 5 TIMES START t'2025-01-01T00:00:00Z' STOP t'2025-02-01T00:00:00Z'",
        ),
        (
            "matches",
            "[file:name MATCHES '^x[0-9]+\\.exe$' OR file:extensions.'windows-pebinary-ext'.sections[*].entropy > 7.5]",
        ),
        ("exists", "[EXISTS windows-registry-key:values[0].name]"),
    ] {
        out.push(("pattern", name.into(), pattern.as_bytes().to_vec()));
    }
    let mut csv = vec![0x85u8];
    csv.extend_from_slice(
        b"type,value,tlp,tags,valid_until\nipv4,1.2.3.4,amber,a;b,2030-01-01T00:00:00Z\n\
          domain,Example.COM.,red,,\n,http://x.example/a,b,clear,c|d\nsha1,\"DA39A3EE5E6B4B0D3255BFEF95601890AFD80709\"\n",
    );
    out.push(("csv", "rows".into(), csv));
    let mut list = vec![0x85u8];
    list.extend_from_slice(list_text.as_bytes());
    out.push(("list", "values".into(), list));

    // The configuration.
    let id = NodeId::new("redmond.hq").expect("a valid node id");
    let mut config = crate::config::starter_config(&id, "0.0.0.0:7443", "certs");
    config.push_str(
        "\n[[peer]]\nid = \"berlin.office\"\naddress = \"berlin.example.org:7443\"\nrole = \"peer\"\n\
         max_tlp = \"amber\"\nembargo = \"6h\"\n\n[[client]]\nid = \"analyst.alice\"\nrole = \"analyst\"\n\n\
         [groups]\neu = [\"berlin.office\"]\n",
    );
    out.push(("config", "starter".into(), config.into_bytes()));
    let taxii = format!(
        "{}\n[[client]]\nid = \"siem.soc\"\nrole = \"read_only\"\n\n[taxii]\nlisten = \"0.0.0.0:8443\"\n\
         max_body_bytes = 65536\n\n[[taxii.basic]]\nclient = \"siem.soc\"\npassword_hash = \"{}\"\n",
        crate::config::starter_config(&id, "0.0.0.0:7443", "certs"),
        crate::crypto::password::DECOY_HASH,
    );
    out.push(("config", "taxii".into(), taxii.into_bytes()));

    // A TAXII request: every filter, and Basic credentials.
    out.push((
        "taxii_request",
        "filters".into(),
        b"added_after=2025-01-01T00%3A00%3A00.000Z&limit=50&next=AAAA&match%5Bid%5D=indicator--1,indicator--2\
          &match[type]=indicator&match[version]=first,2025-01-01T00:00:00Z&match[spec_version]=2.1\n\
          Basic c2llbS5zb2M6Y29ycmVjdCBob3JzZQ=="
            .to_vec(),
    ));
    out
}
