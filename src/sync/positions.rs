//! Feed positions as a partner sees them: sealed tokens. This node's change-feed
//! positions count every entry it holds, including those the delivery rule withholds
//! from a partner; handed out as numbers, they would let the partner count what it does
//! not see. So every position given to a partner (a checkpoint's cursor, the position
//! to store after a bundle) is sealed with ChaCha20-Poly1305 under a key kept in the
//! store directory, with a fresh random nonce each time and, as associated data, the
//! partner's node id and the fingerprint of the partner's policy the position was
//! reached under: tokens have one length, two tokens for one position differ, a token
//! issued to one partner does not open for another, and one issued under a policy since
//! changed does not open either. A token that does not open (another partner's, of
//! another policy, altered, sealed under a lost key, garbage) is taken as no cursor at
//! all: the feed is served from the start, and the puller passes over what it holds.
//!
//! The engine and the store keep plain positions; only the service layer seals and
//! opens, at the edge of the wire.

use std::io::Write;
use std::path::{Path, PathBuf};

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

use crate::model::NodeId;

/// The key's file in the store directory (32 random bytes, mode 0600).
pub const KEY_FILE: &str = "feed-positions.key";
/// Every token's length: nonce, the sealed position (8 bytes), tag.
pub const TOKEN_LEN: usize = NONCE_LEN + 8 + 16;
/// Longest position token a puller takes from a peer or stores (a node of this protocol
/// issues [`TOKEN_LEN`] bytes; a longer one is a protocol error).
pub const MAX_TOKEN_BYTES: usize = 64;
/// Domain prefix of the associated data.
const CONTEXT: &[u8] = b"entente/feed-position/v2\0";
/// The key's length.
const KEY_LEN: usize = 32;

/// Why the position key could not be had.
#[derive(Debug, thiserror::Error)]
pub enum PositionKeyError {
    /// Reading or writing the key file failed.
    #[error("position key {path}: {source}")]
    Io {
        /// The key file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The key file is not 32 bytes.
    #[error(
        "position key {0} is not {KEY_LEN} bytes: remove it (partners then pull this node's feed from the start)"
    )]
    Malformed(PathBuf),
    /// The key file may be read or written by others than its owner.
    #[error("position key {path} is open to others than its owner (mode {mode:o}): chmod 600 it")]
    Permissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The system's random source failed.
    #[error("the system random source failed")]
    Random,
}

/// Refuses a key file open to others than its owner (as the node's TLS key is): with
/// the key, tokens open and the positions in them count what partners do not see.
fn check_owner_only(path: &Path) -> Result<(), PositionKeyError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .map_err(|source| PositionKeyError::Io {
                path: path.to_owned(),
                source,
            })?
            .permissions()
            .mode()
            & 0o7777;
        if mode & 0o077 != 0 {
            return Err(PositionKeyError::Permissions {
                path: path.to_owned(),
                mode,
            });
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// Seals and opens feed positions for partners under the node's position key.
pub struct PositionTokens {
    key: LessSafeKey,
    random: SystemRandom,
}

impl std::fmt::Debug for PositionTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.write_str("PositionTokens { .. }")
    }
}

impl PositionTokens {
    /// The tokens of the key in `dir`, creating the key (32 random bytes, mode 0600)
    /// when there is none; a key file open to others than its owner is refused. Two callers creating it at once end with the same key: it is
    /// written whole under another name, then linked into place only if absent.
    pub fn load_or_create(dir: &Path) -> Result<Self, PositionKeyError> {
        let path = dir.join(KEY_FILE);
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| PositionKeyError::Io { path, source }
        };
        match std::fs::read(&path) {
            Ok(bytes) => {
                check_owner_only(&path)?;
                return Self::from_key_bytes(&bytes, &path);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&path)(e)),
        }
        let random = SystemRandom::new();
        let mut key = [0u8; KEY_LEN];
        random
            .fill(&mut key)
            .map_err(|_| PositionKeyError::Random)?;
        let mut suffix = [0u8; 8];
        random
            .fill(&mut suffix)
            .map_err(|_| PositionKeyError::Random)?;
        let temporary = dir.join(format!(".{KEY_FILE}.{}", crate::util::hex(&suffix)));
        let written = (|| {
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                options.mode(0o600);
            }
            let mut file = options.open(&temporary)?;
            file.write_all(&key)?;
            file.sync_all()
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_file(&temporary);
            return Err(io(&temporary)(e));
        }
        let linked = std::fs::hard_link(&temporary, &path);
        let _ = std::fs::remove_file(&temporary);
        match linked {
            Ok(()) => {
                if let Ok(d) = std::fs::File::open(dir) {
                    let _ = d.sync_all();
                }
                Self::from_key_bytes(&key, &path)
            }
            // Another caller created it first: use theirs.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let bytes = std::fs::read(&path).map_err(io(&path))?;
                check_owner_only(&path)?;
                Self::from_key_bytes(&bytes, &path)
            }
            Err(e) => Err(io(&path)(e)),
        }
    }

    fn from_key_bytes(bytes: &[u8], path: &Path) -> Result<Self, PositionKeyError> {
        if bytes.len() != KEY_LEN {
            return Err(PositionKeyError::Malformed(path.to_owned()));
        }
        let key = UnboundKey::new(&CHACHA20_POLY1305, bytes)
            .map_err(|_| PositionKeyError::Malformed(path.to_owned()))?;
        Ok(Self {
            key: LessSafeKey::new(key),
            random: SystemRandom::new(),
        })
    }

    fn aad(partner: &NodeId, policy: &[u8; 32]) -> Vec<u8> {
        let mut out = CONTEXT.to_vec();
        out.extend_from_slice(policy);
        out.extend_from_slice(partner.as_str().as_bytes());
        out
    }

    /// `position`, reached under the partner's policy fingerprint `policy`, sealed for
    /// `partner` under a fresh random nonce ([`TOKEN_LEN`] bytes); `None` only when the
    /// system's random source fails.
    pub fn seal(&self, partner: &NodeId, policy: &[u8; 32], position: u64) -> Option<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        self.random.fill(&mut nonce).ok()?;
        let mut sealed = position.to_be_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(Self::aad(partner, policy)),
                &mut sealed,
            )
            .ok()?;
        let mut token = Vec::with_capacity(TOKEN_LEN);
        token.extend_from_slice(&nonce);
        token.extend_from_slice(&sealed);
        Some(token)
    }

    /// The position `token` seals for `partner` under its policy fingerprint `policy`;
    /// `None` for any token this key did not seal for this partner under this policy
    /// (the caller serves from the start).
    pub fn open(&self, partner: &NodeId, policy: &[u8; 32], token: &[u8]) -> Option<u64> {
        if token.len() != TOKEN_LEN {
            return None;
        }
        let (nonce, sealed) = token.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut sealed = sealed.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(Self::aad(partner, policy)), &mut sealed)
            .ok()?;
        Some(u64::from_be_bytes(plain.try_into().ok()?))
    }
}

/// The token a stand-in for a serving node (a test's or a demo's scripted peer) gives
/// for `position`: the position in the clear, 8 bytes big-endian. A puller treats it as
/// opaque like any other; only the stand-in reads it back ([`plain_position`]).
pub fn plain_token(position: u64) -> Vec<u8> {
    position.to_be_bytes().to_vec()
}

/// The position a [`plain_token`] names (0 for anything else, as for an empty cursor).
pub fn plain_position(token: &[u8]) -> u64 {
    <[u8; 8]>::try_from(token).map_or(0, u64::from_be_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> NodeId {
        NodeId::new(s).unwrap()
    }

    /// A partner's policy fingerprint.
    const POLICY: [u8; 32] = [3; 32];

    #[test]
    fn a_token_opens_only_for_its_partner_and_never_repeats() {
        let dir = tempfile::tempdir().unwrap();
        let tokens = PositionTokens::load_or_create(dir.path()).unwrap();
        let alice = id("alice.example");
        let bob = id("bob.example");
        let one = tokens.seal(&alice, &POLICY, 7).unwrap();
        let two = tokens.seal(&alice, &POLICY, 7).unwrap();
        let far = tokens.seal(&alice, &POLICY, u64::MAX).unwrap();
        assert_eq!(one.len(), TOKEN_LEN);
        assert_eq!(far.len(), TOKEN_LEN);
        assert_ne!(one, two);
        assert_eq!(tokens.open(&alice, &POLICY, &one), Some(7));
        assert_eq!(tokens.open(&alice, &POLICY, &two), Some(7));
        assert_eq!(tokens.open(&bob, &POLICY, &one), None);
        // Issued under another policy of the partner: it does not open.
        assert_eq!(tokens.open(&alice, &[4; 32], &one), None);
        for at in 0..one.len() {
            let mut bad = one.clone();
            bad[at] ^= 1;
            assert_eq!(tokens.open(&alice, &POLICY, &bad), None);
        }
        assert_eq!(tokens.open(&alice, &POLICY, &one[..TOKEN_LEN - 1]), None);
        assert_eq!(tokens.open(&alice, &POLICY, &[]), None);
        assert_eq!(tokens.open(&alice, &POLICY, &[0; TOKEN_LEN]), None);
    }

    #[test]
    fn the_key_is_kept_in_the_store_directory_with_owner_only_access() {
        let dir = tempfile::tempdir().unwrap();
        let alice = id("alice.example");
        let token = PositionTokens::load_or_create(dir.path())
            .unwrap()
            .seal(&alice, &POLICY, 42)
            .unwrap();
        let again = PositionTokens::load_or_create(dir.path()).unwrap();
        assert_eq!(again.open(&alice, &POLICY, &token), Some(42));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // Only the key file is left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(KEY_FILE)]);
        // A lost key: the old tokens open no more.
        std::fs::remove_file(dir.path().join(KEY_FILE)).unwrap();
        let fresh = PositionTokens::load_or_create(dir.path()).unwrap();
        assert_eq!(fresh.open(&alice, &POLICY, &token), None);
        // A damaged key file is an error, not a silent new key.
        std::fs::write(dir.path().join(KEY_FILE), b"short").unwrap();
        assert!(PositionTokens::load_or_create(dir.path()).is_err());
    }
}
