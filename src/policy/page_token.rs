//! Page tokens that reveal nothing. The store's page cursors name log slots; handed to
//! a caller as they are, they would say how many withheld items lie between visible
//! ones, and a forged one could probe whether a slot holds a given value. So a cursor
//! leaves the node only sealed: ChaCha20-Poly1305 under a key drawn at start and never
//! written anywhere, with the caller's id, the path and the query as associated data,
//! and the cursor padded to one fixed length. A token that does not open (forged,
//! altered, issued to another caller or for another query, or by an earlier run of the
//! node) gets one answer that does not depend on the data.

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

use crate::model::NodeId;

/// Longest store cursor a token can carry.
const MAX_CURSOR: usize = 15;
/// The sealed plaintext: one length byte and the cursor, zero-padded.
const PLAIN_LEN: usize = MAX_CURSOR + 1;
/// Every token's length: nonce, sealed plaintext, tag.
pub const TOKEN_LEN: usize = NONCE_LEN + PLAIN_LEN + 16;

/// Why a page token was refused. One variant, whatever the cause, so the answer says
/// nothing about what the node holds.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PageTokenError {
    /// The token was not issued by this node's current run to this caller for this query.
    #[error(
        "page_token is not valid: a token works only with the query that returned it, for the caller it was given to, until the node restarts"
    )]
    Invalid,
    /// The token was issued before the node compacted its store.
    #[error(
        "page_token is no longer valid: the node compacted its store since it was issued; start the query again without a token"
    )]
    Stale,
    /// A cursor too long to seal (a store bug, never a caller's).
    #[error("page cursor of {0} bytes cannot be sealed")]
    CursorTooLong(usize),
    /// The system's random source failed.
    #[error("the system random source failed")]
    Random,
    /// Every nonce of this run's key was used.
    #[error("page-token nonces exhausted; restart the node")]
    Exhausted,
}

/// What a token is bound to.
#[derive(Clone, Copy, Debug)]
pub struct TokenScope<'a> {
    /// The caller it was issued to.
    pub caller: &'a NodeId,
    /// The path (`query`, `export`).
    pub path: &'a str,
    /// The query's canonical bytes.
    pub query: &'a [u8],
}

impl TokenScope<'_> {
    fn aad(&self) -> Vec<u8> {
        let mut out = b"entente/page-token/v1\0".to_vec();
        for part in [
            self.caller.as_str().as_bytes(),
            self.path.as_bytes(),
            self.query,
        ] {
            out.extend_from_slice(&(part.len() as u32).to_be_bytes());
            out.extend_from_slice(part);
        }
        out
    }
}

/// Seals and opens page tokens under a key that lives only in this process. Nonces
/// are a random prefix drawn with the key and a counter, so each is used once per key
/// without a system call per token.
pub struct PageTokens {
    key: LessSafeKey,
    nonce_prefix: [u8; 4],
    counter: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for PageTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.write_str("PageTokens { .. }")
    }
}

impl PageTokens {
    /// A fresh key from the system's random source.
    pub fn new() -> Result<Self, PageTokenError> {
        let random = SystemRandom::new();
        let mut key = [0u8; 32];
        random.fill(&mut key).map_err(|_| PageTokenError::Random)?;
        let mut nonce_prefix = [0u8; 4];
        random
            .fill(&mut nonce_prefix)
            .map_err(|_| PageTokenError::Random)?;
        let key = UnboundKey::new(&CHACHA20_POLY1305, &key).map_err(|_| PageTokenError::Random)?;
        Ok(Self {
            key: LessSafeKey::new(key),
            nonce_prefix,
            counter: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Seals a store cursor for `scope`.
    pub fn seal(&self, scope: &TokenScope<'_>, cursor: &[u8]) -> Result<Vec<u8>, PageTokenError> {
        if cursor.len() > MAX_CURSOR {
            return Err(PageTokenError::CursorTooLong(cursor.len()));
        }
        // Never exhausted in practice (2^64 tokens per run), but a nonce is never reused.
        let count = self
            .counter
            .fetch_update(
                std::sync::atomic::Ordering::Relaxed,
                std::sync::atomic::Ordering::Relaxed,
                |c| c.checked_add(1),
            )
            .map_err(|_| PageTokenError::Exhausted)?;
        let mut nonce = [0u8; NONCE_LEN];
        nonce[..4].copy_from_slice(&self.nonce_prefix);
        nonce[4..].copy_from_slice(&count.to_be_bytes());
        let mut sealed = vec![0u8; PLAIN_LEN];
        sealed[0] = cursor.len() as u8;
        sealed[1..=cursor.len()].copy_from_slice(cursor);
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(scope.aad()),
                &mut sealed,
            )
            .map_err(|_| PageTokenError::Random)?;
        let mut token = nonce.to_vec();
        token.extend_from_slice(&sealed);
        Ok(token)
    }

    /// Opens a token issued for `scope`; any other token is [`PageTokenError::Invalid`].
    pub fn open(&self, scope: &TokenScope<'_>, token: &[u8]) -> Result<Vec<u8>, PageTokenError> {
        if token.len() != TOKEN_LEN {
            return Err(PageTokenError::Invalid);
        }
        let (nonce, sealed) = token.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| PageTokenError::Invalid)?;
        let mut sealed = sealed.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(scope.aad()), &mut sealed)
            .map_err(|_| PageTokenError::Invalid)?;
        let len = usize::from(plain[0]);
        if len > MAX_CURSOR || plain[1 + len..].iter().any(|b| *b != 0) {
            return Err(PageTokenError::Invalid);
        }
        Ok(plain[1..=len].to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> NodeId {
        NodeId::new(s).unwrap()
    }

    #[test]
    fn a_token_opens_only_for_its_caller_path_and_query() {
        let tokens = PageTokens::new().unwrap();
        let alice = id("alice.example");
        let bob = id("bob.example");
        let scope = TokenScope {
            caller: &alice,
            path: "query",
            query: b"value=1.2.3.4",
        };
        let token = tokens.seal(&scope, &[0, 0, 0, 7]).unwrap();
        assert_eq!(token.len(), TOKEN_LEN);
        assert_eq!(tokens.open(&scope, &token).unwrap(), vec![0, 0, 0, 7]);
        for other in [
            TokenScope {
                caller: &bob,
                ..scope
            },
            TokenScope {
                path: "export",
                ..scope
            },
            TokenScope {
                query: b"value=1.2.3.5",
                ..scope
            },
        ] {
            assert_eq!(tokens.open(&other, &token), Err(PageTokenError::Invalid));
        }
        // Any altered byte, a truncated token, or another run's key: the same answer.
        for at in 0..token.len() {
            let mut bad = token.clone();
            bad[at] ^= 1;
            assert_eq!(tokens.open(&scope, &bad), Err(PageTokenError::Invalid));
        }
        assert_eq!(
            tokens.open(&scope, &token[..TOKEN_LEN - 1]),
            Err(PageTokenError::Invalid)
        );
        let restarted = PageTokens::new().unwrap();
        assert_eq!(restarted.open(&scope, &token), Err(PageTokenError::Invalid));
    }

    #[test]
    fn tokens_have_one_length_and_never_repeat() {
        let tokens = PageTokens::new().unwrap();
        let alice = id("alice.example");
        let scope = TokenScope {
            caller: &alice,
            path: "query",
            query: b"",
        };
        let short = tokens.seal(&scope, &[1]).unwrap();
        let long = tokens.seal(&scope, &[9; MAX_CURSOR]).unwrap();
        let again = tokens.seal(&scope, &[1]).unwrap();
        assert_eq!(short.len(), long.len());
        assert_ne!(short, again);
        assert!(tokens.seal(&scope, &[0; MAX_CURSOR + 1]).is_err());
    }
}
