//! Password hashes for HTTP Basic credentials (the TAXII listener's weaker option):
//! Argon2id in PHC format, made, checked and verified here. No I/O.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

/// The Argon2id parameters of new hashes: 19 MiB, 2 passes, one lane (the OWASP
/// minimum for Argon2id).
fn hasher() -> Argon2<'static> {
    let params = Params::new(19 * 1024, 2, 1, None).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Largest password accepted, in bytes.
pub const MAX_PASSWORD_BYTES: usize = 256;

/// Hashes a password for `[[taxii.basic]]` (`entente taxii hash-password`): Argon2id in
/// PHC format with a random salt.
pub fn hash_password(password: &str) -> Result<String, String> {
    if password.len() < 12 || password.len() > MAX_PASSWORD_BYTES {
        return Err(format!(
            "a password is 12 to {MAX_PASSWORD_BYTES} bytes long, not {}",
            password.len()
        ));
    }
    let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
    hasher()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| format!("cannot hash the password: {e}"))
}

/// Checks a configured hash: Argon2id in PHC format, with parameters no more costly
/// than a node can afford per request (at most 256 MiB, 10 passes, 8 lanes).
pub fn check_password_hash(text: &str) -> Result<(), String> {
    if text.len() > 512 {
        return Err("longer than any Argon2id hash".into());
    }
    let hash = PasswordHash::new(text).map_err(|e| {
        format!(
            "not a password hash in PHC format ({e}); make one with `entente taxii hash-password`"
        )
    })?;
    if hash.algorithm.as_str() != "argon2id" {
        return Err(format!(
            "the algorithm is {}, not argon2id",
            hash.algorithm.as_str()
        ));
    }
    let params = Params::try_from(&hash).map_err(|e| format!("bad Argon2 parameters: {e}"))?;
    if params.m_cost() > 256 * 1024 || params.t_cost() > 10 || params.p_cost() > 8 {
        return Err("the Argon2 parameters cost more than 256 MiB, 10 passes or 8 lanes".into());
    }
    if hash.hash.is_none() || hash.salt.is_none() {
        return Err("the hash has no salt or no output".into());
    }
    Ok(())
}

/// Whether `password` matches `hash` (a hash that does not parse matches nothing).
pub fn verify_password(hash: &str, password: &[u8]) -> bool {
    match PasswordHash::new(hash) {
        Ok(parsed) => hasher().verify_password(password, &parsed).is_ok(),
        Err(_) => false,
    }
}

/// A hash no password is known for, checked when the user name is unknown so that an
/// unknown name takes as long to refuse as a wrong password.
pub const DECOY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$ZW50ZW50ZS10YXhpaS1kZWNveQ$mZg2iQ3fCZ4nqYp7p2YbQ1Cz9O8mV3U2bB1mQm1ZbTg";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_are_checked() {
        let hash = hash_password("correct horse battery").unwrap();
        assert!(check_password_hash(&hash).is_ok());
        assert!(verify_password(&hash, b"correct horse battery"));
        assert!(!verify_password(&hash, b"correct horse battery!"));
        assert!(hash_password("short").is_err());
        assert!(check_password_hash("plain text").is_err());
        assert!(
            check_password_hash("$argon2i$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA")
                .is_err()
        );
        assert!(
            check_password_hash(
                "$argon2id$v=19$m=4194304,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA"
            )
            .is_err()
        );
        assert!(check_password_hash(DECOY_HASH).is_ok());
        assert!(!verify_password(DECOY_HASH, b""));
    }
}
