//! Small helpers the whole node shares: the clock in Unix milliseconds, bytes as
//! hexadecimal text, and times as RFC 3339 text.

use time::OffsetDateTime;

/// Milliseconds since the Unix epoch, now (0 for a clock set before 1970).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// `bytes` as lower-case hexadecimal.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// Unix milliseconds as RFC 3339 in UTC with milliseconds (`2026-01-31T12:00:00.000Z`);
/// `None` when out of the range the calendar covers.
pub fn rfc3339_ms(ms: i64) -> Option<String> {
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|at| at.format(&format).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_bytes_as_text() {
        assert_eq!(hex(&[0, 0xab, 0x10]), "00ab10");
        assert_eq!(rfc3339_ms(0).as_deref(), Some("1970-01-01T00:00:00.000Z"));
        assert_eq!(
            rfc3339_ms(1_769_860_800_123).as_deref(),
            Some("2026-01-31T12:00:00.123Z")
        );
        assert_eq!(rfc3339_ms(i64::MAX), None);
        assert!(now_ms() > 1_700_000_000_000);
    }
}
