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
    // Years 0000 to 9999, every time a node writes in practice, are written here
    // directly (a STIX export writes three per object); others by the `time` crate.
    const FIRST_MS: i64 = -62_167_219_200_000; // 0000-01-01T00:00:00.000Z
    const LAST_MS: i64 = 253_402_300_799_999; // 9999-12-31T23:59:59.999Z
    if (FIRST_MS..=LAST_MS).contains(&ms) {
        let days = ms.div_euclid(86_400_000);
        let in_day = ms.rem_euclid(86_400_000);
        let (year, month, day) = civil_from_days(days);
        // Written digit by digit: this runs for every time of every exported object.
        let mut text = *b"0000-00-00T00:00:00.000Z";
        let mut put = |at: usize, width: usize, mut number: i64| {
            for slot in text[at..at + width].iter_mut().rev() {
                *slot = b'0' + (number % 10) as u8;
                number /= 10;
            }
        };
        put(0, 4, year);
        put(5, 2, month);
        put(8, 2, day);
        put(11, 2, in_day / 3_600_000);
        put(14, 2, in_day / 60_000 % 60);
        put(17, 2, in_day / 1000 % 60);
        put(20, 3, in_day % 1000);
        return Some(text.iter().map(|&b| char::from(b)).collect());
    }
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|at| at.format(&format).ok())
}

/// The proleptic Gregorian date of a day counted from 1970-01-01 (day 0), after
/// Howard Hinnant's `civil_from_days`: 400-year eras of 146,097 days, each year taken
/// from March so that the leap day falls last.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
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
        // The direct writing agrees with the `time` crate's over the whole range it
        // covers, its ends, leap days and the days around them included.
        let format = time::macros::format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
        );
        let by_time = |ms: i64| {
            OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
                .ok()
                .and_then(|at| at.format(&format).ok())
        };
        let mut samples = vec![
            -62_167_219_200_000,
            -62_167_219_200_001,
            253_402_300_799_999,
            253_402_300_800_000,
            951_782_400_000,   // 2000-02-29
            951_868_799_999,   // 2000-02-29T23:59:59.999
            4_107_542_400_000, // 2100-03-01
            -1,
            0,
        ];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            samples.push((x % 315_569_520_000_000) as i64 - 62_167_219_200_000);
        }
        for ms in samples {
            assert_eq!(rfc3339_ms(ms), by_time(ms), "{ms}");
        }
        assert!(now_ms() > 1_700_000_000_000);
    }
}
