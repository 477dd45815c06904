//! The `next` of the TAXII object and manifest listings: where the listing goes on
//! from, and which marking definitions and origin identities it has already served, so
//! that each is served once per listing, on the first page that refers to it.
//!
//! A `next` leaves the node only sealed (ChaCha20-Poly1305 under a key drawn at start
//! and kept in memory), bound to its caller, its path and its query without `next`; any
//! `next` that does not open is one error, whatever the node holds. The cursor inside is
//! either the engine's own sealed page token or a place in the caller's `match[id]`
//! list (with, part way through an id's versions, the last version served of it),
//! which the caller wrote and was served anyway.

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

use crate::model::{NodeId, Tlp};

/// Origins a listing remembers having served the identity of; past it, an identity may
/// be served again on a later page (the object is the same each time).
pub const MAX_REMEMBERED_ORIGINS: usize = 32;
/// Longest engine page token carried.
const MAX_ENGINE_TOKEN: usize = 128;

const KIND_ENGINE: u8 = 1;
const KIND_IDS: u8 = 2;
const KIND_AFTER: u8 = 3;
const KIND_ID_VERSIONS: u8 = 4;
/// Bits of the flags byte: each of the revocation extension's two objects (its
/// definition, the identity that defines it) was served.
const REVOCATION_EXTENSION_SENT: [u8; 2] = [0x80, 0x40];

/// Where a listing goes on from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cursor {
    /// The engine's sealed page token (empty: from the start).
    Engine(Vec<u8>),
    /// The next place in the caller's `match[id]` list.
    Ids(usize),
    /// After this version (ms since the epoch) of one object: an object's versions are
    /// strictly increasing, so the place holds when a compaction drops older ones.
    After(i64),
    /// A place in the caller's `match[id]` list part way through one id's versions:
    /// that id again, after this version (ms since the epoch).
    IdVersions(usize, i64),
}

/// What a listing has served so far, and where it goes on from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    /// The cursor.
    pub cursor: Cursor,
    /// Bit per TLP (see [`tlp_bit`]) whose marking definition was served, and
    /// [`REVOCATION_EXTENSION_SENT`].
    flags: u8,
    /// First 8 bytes of SHA-256 of each origin whose identity was served.
    origins: Vec<[u8; 8]>,
}

fn tlp_bit(tlp: Tlp) -> u8 {
    match tlp {
        Tlp::Clear => 1,
        Tlp::Green => 2,
        Tlp::Amber => 4,
        Tlp::AmberStrict => 8,
        Tlp::Red => 16,
    }
}

fn origin_key(origin: &NodeId) -> [u8; 8] {
    let digest = ring::digest::digest(&ring::digest::SHA256, origin.as_str().as_bytes());
    let mut key = [0u8; 8];
    key.copy_from_slice(&digest.as_ref()[..8]);
    key
}

impl Session {
    /// A listing from its start.
    pub fn start(cursor: Cursor) -> Self {
        Self {
            cursor,
            flags: 0,
            origins: Vec::new(),
        }
    }

    /// Whether `tlp`'s definition was served.
    pub fn served_marking(&self, tlp: Tlp) -> bool {
        self.flags & tlp_bit(tlp) != 0
    }

    /// Whether object `part` (0 or 1) of the revocation extension was served.
    pub fn served_revocation_extension(&self, part: usize) -> bool {
        self.flags & REVOCATION_EXTENSION_SENT[part & 1] != 0
    }

    /// Whether `origin`'s identity was served (as far as the listing remembers).
    pub fn served_origin(&self, origin: &NodeId) -> bool {
        self.origins.contains(&origin_key(origin))
    }

    /// Marks `tlp`'s definition as served; false if it was already.
    pub fn first_marking(&mut self, tlp: Tlp) -> bool {
        let bit = tlp_bit(tlp);
        let first = self.flags & bit == 0;
        self.flags |= bit;
        first
    }

    /// Marks object `part` (0 or 1) of the revocation extension as served.
    pub fn mark_revocation_extension(&mut self, part: usize) {
        self.flags |= REVOCATION_EXTENSION_SENT[part & 1];
    }

    /// Marks `origin`'s identity as served; false if it was already (as far as the
    /// listing remembers).
    pub fn first_origin(&mut self, origin: &NodeId) -> bool {
        let key = origin_key(origin);
        if self.origins.contains(&key) {
            return false;
        }
        // The oldest is forgotten to make room: a listing must remember the identity it
        // has just served, or a page too small for an item and its identity would serve
        // that identity again and again.
        if self.origins.len() == MAX_REMEMBERED_ORIGINS {
            self.origins.remove(0);
        }
        self.origins.push(key);
        true
    }

    fn encode(&self) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        match &self.cursor {
            Cursor::Engine(token) => {
                if token.len() > MAX_ENGINE_TOKEN {
                    return None;
                }
                out.push(KIND_ENGINE);
            }
            Cursor::Ids(_) => out.push(KIND_IDS),
            Cursor::After(_) => out.push(KIND_AFTER),
            Cursor::IdVersions(..) => out.push(KIND_ID_VERSIONS),
        }
        out.push(self.flags);
        out.push(u8::try_from(self.origins.len()).ok()?);
        for key in &self.origins {
            out.extend_from_slice(key);
        }
        match &self.cursor {
            Cursor::Engine(token) => out.extend_from_slice(token),
            Cursor::Ids(at) => out.extend_from_slice(&u32::try_from(*at).ok()?.to_be_bytes()),
            Cursor::After(ms) => out.extend_from_slice(&ms.to_be_bytes()),
            Cursor::IdVersions(at, ms) => {
                out.extend_from_slice(&u32::try_from(*at).ok()?.to_be_bytes());
                out.extend_from_slice(&ms.to_be_bytes());
            }
        }
        Some(out)
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        let (&kind, rest) = bytes.split_first()?;
        let (&flags, rest) = rest.split_first()?;
        let (&count, rest) = rest.split_first()?;
        let count = usize::from(count);
        if count > MAX_REMEMBERED_ORIGINS || rest.len() < count * 8 {
            return None;
        }
        let (keys, rest) = rest.split_at(count * 8);
        let origins = keys
            .chunks_exact(8)
            .map(|k| k.try_into().expect("chunks of 8"))
            .collect();
        let cursor = match kind {
            KIND_ENGINE if rest.len() <= MAX_ENGINE_TOKEN => Cursor::Engine(rest.to_vec()),
            KIND_IDS => Cursor::Ids(u32::from_be_bytes(rest.try_into().ok()?) as usize),
            KIND_AFTER => Cursor::After(i64::from_be_bytes(rest.try_into().ok()?)),
            KIND_ID_VERSIONS if rest.len() == 12 => {
                let (at, ms) = rest.split_at(4);
                Cursor::IdVersions(
                    u32::from_be_bytes(at.try_into().ok()?) as usize,
                    i64::from_be_bytes(ms.try_into().ok()?),
                )
            }
            _ => return None,
        };
        Some(Self {
            cursor,
            flags,
            origins,
        })
    }
}

/// Seals and opens listing sessions.
pub struct NextTokens {
    key: LessSafeKey,
    random: SystemRandom,
}

/// What a `next` is bound to.
pub struct Scope<'a> {
    /// The caller.
    pub caller: &'a NodeId,
    /// The resource (`taxii-objects` or `taxii-manifest`).
    pub path: &'a str,
    /// The query's canonical text without `next`.
    pub query: &'a str,
}

impl Scope<'_> {
    fn aad(&self) -> Vec<u8> {
        let mut out = b"entente/taxii-next/v1".to_vec();
        for part in [self.caller.as_str(), self.path, self.query] {
            out.extend_from_slice(&(part.len() as u32).to_be_bytes());
            out.extend_from_slice(part.as_bytes());
        }
        out
    }
}

impl NextTokens {
    /// Tokens under a new random key.
    pub fn new() -> Result<Self, ring::error::Unspecified> {
        let random = SystemRandom::new();
        let mut key = [0u8; 32];
        random.fill(&mut key)?;
        let key = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &key)?);
        Ok(Self { key, random })
    }

    /// `session` sealed for `scope`, in base64url.
    pub fn seal(&self, scope: &Scope<'_>, session: &Session) -> Option<String> {
        use base64::Engine as _;
        let mut text = session.encode()?;
        let mut nonce = [0u8; NONCE_LEN];
        self.random.fill(&mut nonce).ok()?;
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(scope.aad()),
                &mut text,
            )
            .ok()?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&text);
        Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(out))
    }

    /// The session a `next` holds, if this node sealed it for `scope`.
    pub fn open(&self, scope: &Scope<'_>, next: &str) -> Option<Session> {
        use base64::Engine as _;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(next)
            .ok()?;
        if bytes.len() < NONCE_LEN + CHACHA20_POLY1305.tag_len() {
            return None;
        }
        let (nonce, sealed) = bytes.split_at(NONCE_LEN);
        let mut sealed = sealed.to_vec();
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let text = self
            .key
            .open_in_place(nonce, Aad::from(scope.aad()), &mut sealed)
            .ok()?;
        Session::decode(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_open_only_in_their_scope() {
        let tokens = NextTokens::new().unwrap();
        let caller = NodeId::new("researcher.uni-x").unwrap();
        let other = NodeId::new("analyst.soc").unwrap();
        let scope = Scope {
            caller: &caller,
            path: "taxii-objects",
            query: "limit=3",
        };
        let mut session = Session::start(Cursor::Engine(vec![7; 44]));
        assert!(session.first_marking(Tlp::Green));
        assert!(!session.first_marking(Tlp::Green));
        assert!(session.first_origin(&caller));
        assert!(!session.first_origin(&caller));
        let next = tokens.seal(&scope, &session).unwrap();
        assert!(next.len() <= crate::taxii::params::MAX_NEXT_CHARS);
        let mut opened = tokens.open(&scope, &next).unwrap();
        assert_eq!(opened, session);
        assert!(!opened.first_marking(Tlp::Green) && opened.first_marking(Tlp::Clear));
        for wrong in [
            Scope {
                caller: &other,
                path: "taxii-objects",
                query: "limit=3",
            },
            Scope {
                caller: &caller,
                path: "taxii-manifest",
                query: "limit=3",
            },
            Scope {
                caller: &caller,
                path: "taxii-objects",
                query: "limit=4",
            },
        ] {
            assert!(tokens.open(&wrong, &next).is_none());
        }
        assert!(tokens.open(&scope, "AAAA").is_none());
        assert!(NextTokens::new().unwrap().open(&scope, &next).is_none());
        // A full session still fits in a `next`.
        let mut full = Session::start(Cursor::Engine(vec![1; MAX_ENGINE_TOKEN]));
        for n in 0..100 {
            full.first_origin(&NodeId::new(&format!("node-{n}.example")).unwrap());
        }
        let next = tokens.seal(&scope, &full).unwrap();
        assert!(next.len() <= crate::taxii::params::MAX_NEXT_CHARS);
        assert_eq!(tokens.open(&scope, &next).unwrap(), full);
        let ids = Session::start(Cursor::Ids(42));
        let next = tokens.seal(&scope, &ids).unwrap();
        assert_eq!(tokens.open(&scope, &next).unwrap().cursor, Cursor::Ids(42));
        let after = Session::start(Cursor::After(-5));
        let next = tokens.seal(&scope, &after).unwrap();
        assert_eq!(
            tokens.open(&scope, &next).unwrap().cursor,
            Cursor::After(-5)
        );
        let within = Session::start(Cursor::IdVersions(7, 1_735_689_600_001));
        let next = tokens.seal(&scope, &within).unwrap();
        assert_eq!(
            tokens.open(&scope, &next).unwrap().cursor,
            Cursor::IdVersions(7, 1_735_689_600_001)
        );
    }
}
