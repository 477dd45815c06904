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

/// The Argon2 parameters of `hash` (memory in KiB, passes, lanes, output bytes), if it
/// parses.
fn parameters(hash: &str) -> Option<(u32, u32, u32, usize)> {
    let parsed = PasswordHash::new(hash).ok()?;
    let params = Params::try_from(&parsed).ok()?;
    let output = parsed.hash.map_or(32, |o| o.len());
    Some((params.m_cost(), params.t_cost(), params.p_cost(), output))
}

/// The hash checked when a Basic user name is unknown, given the configured `hashes`: a
/// hash no password is known for, with the Argon2 parameters of the costliest of them
/// (memory times passes, then lanes), so that an unknown name takes as long to refuse
/// as a known name's wrong password. With nothing configured, [`DECOY_HASH`].
pub fn decoy_hash<'a>(hashes: impl IntoIterator<Item = &'a str>) -> String {
    let costliest = hashes
        .into_iter()
        .filter_map(parameters)
        .max_by_key(|&(m, t, p, _)| (u64::from(m) * u64::from(t), p));
    let Some((m, t, p, output)) = costliest else {
        return DECOY_HASH.to_owned();
    };
    use base64::Engine as _;
    let output = base64::engine::general_purpose::STANDARD_NO_PAD.encode(vec![0x5a; output]);
    format!("$argon2id$v=19$m={m},t={t},p={p}$ZW50ZW50ZS10YXhpaS1kZWNveQ${output}")
}

/// Whether all of `hashes` have the same Argon2 parameters (then an unknown name and
/// every known name's wrong password cost the same to refuse).
pub fn same_parameters<'a>(hashes: impl IntoIterator<Item = &'a str>) -> bool {
    let mut all = hashes.into_iter().map(parameters);
    match all.next() {
        None => true,
        Some(first) => all.all(|p| p == first),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_decoy_costs_what_the_costliest_configured_hash_costs() {
        // No configured hash: the fixed decoy, with the parameters of new hashes.
        assert_eq!(decoy_hash([]), DECOY_HASH);
        let default = hash_password("correct horse battery").unwrap();
        assert_eq!(
            parameters(&decoy_hash([default.as_str()])),
            parameters(&default)
        );
        // A hash made elsewhere with costlier parameters: the decoy has them too.
        let costly = "$argon2id$v=19$m=131072,t=6,p=1$c2FsdHNhbHRzYWx0$2O7Sg4XJZ5d0XQhK0sfFvPZ4v4q9yY0qG0Y1nN1rT2c";
        assert_eq!(parameters(costly), Some((131072, 6, 1, 32)));
        let decoy = decoy_hash([default.as_str(), costly]);
        assert_eq!(parameters(&decoy), Some((131072, 6, 1, 32)));
        assert!(check_password_hash(&decoy).is_ok());
        assert!(!verify_password(&decoy, b"correct horse battery"));
        // More lanes and a longer output are kept as configured.
        let lanes = format!(
            "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHRzYWx0${}",
            "A".repeat(86)
        );
        assert_eq!(parameters(&lanes), Some((65536, 3, 4, 64)));
        assert_eq!(
            parameters(&decoy_hash([lanes.as_str()])),
            parameters(&lanes)
        );
        assert!(same_parameters([default.as_str()]));
        assert!(!same_parameters([default.as_str(), costly]));
    }

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
