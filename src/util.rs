//! Small helpers the whole node shares: the clock in Unix milliseconds, bytes as
//! hexadecimal text, times as RFC 3339 text, and protobuf fields written from borrowed
//! values.

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

/// Protobuf fields written as prost's generated code writes them, from borrowed
/// values: a message whose fields the caller holds elsewhere is encoded without being
/// copied into its prost struct first. Each `*_len` is what the writer beside it
/// appends. Singular fields follow proto3 (left out when empty or zero); a repeated
/// element, an `optional` number and a message are written whenever present.
pub(crate) mod proto {
    use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};

    /// A singular `string` or `bytes` field.
    pub(crate) fn bytes_len(tag: u32, value: &[u8]) -> usize {
        if value.is_empty() {
            0
        } else {
            element_len(tag, value)
        }
    }

    pub(crate) fn bytes(tag: u32, value: &[u8], buf: &mut Vec<u8>) {
        if !value.is_empty() {
            element(tag, value, buf);
        }
    }

    /// One element of a repeated `string` or `bytes` field.
    pub(crate) fn element_len(tag: u32, value: &[u8]) -> usize {
        key_len(tag) + encoded_len_varint(value.len() as u64) + value.len()
    }

    pub(crate) fn element(tag: u32, value: &[u8], buf: &mut Vec<u8>) {
        encode_key(tag, WireType::LengthDelimited, buf);
        encode_varint(value.len() as u64, buf);
        buf.extend_from_slice(value);
    }

    /// A repeated `string` field.
    pub(crate) fn strings_len(tag: u32, values: &[String]) -> usize {
        values.iter().map(|v| element_len(tag, v.as_bytes())).sum()
    }

    pub(crate) fn strings(tag: u32, values: &[String], buf: &mut Vec<u8>) {
        for value in values {
            element(tag, value.as_bytes(), buf);
        }
    }

    /// A varint field present whatever its value (an `optional` number), as prost
    /// widens it to 64 bits: `int64` as is, `uint32` with zeros, `int32` and
    /// enumerations with their sign.
    pub(crate) fn varint_len(tag: u32, value: u64) -> usize {
        key_len(tag) + encoded_len_varint(value)
    }

    pub(crate) fn varint(tag: u32, value: u64, buf: &mut Vec<u8>) {
        encode_key(tag, WireType::Varint, buf);
        encode_varint(value, buf);
    }

    /// A singular varint field (left out when zero).
    pub(crate) fn nonzero_len(tag: u32, value: u64) -> usize {
        if value == 0 {
            0
        } else {
            varint_len(tag, value)
        }
    }

    pub(crate) fn nonzero(tag: u32, value: u64, buf: &mut Vec<u8>) {
        if value != 0 {
            varint(tag, value, buf);
        }
    }

    /// A message field whose body is `len` bytes.
    pub(crate) fn message_len(tag: u32, len: usize) -> usize {
        key_len(tag) + encoded_len_varint(len as u64) + len
    }

    /// The key and length of a message field; its body follows.
    pub(crate) fn message_head(tag: u32, len: usize, buf: &mut Vec<u8>) {
        encode_key(tag, WireType::LengthDelimited, buf);
        encode_varint(len as u64, buf);
    }
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

/// Why [`read_small_file`] refused a file.
#[derive(Debug)]
pub enum SmallFileError {
    /// It could not be opened or read.
    Io(std::io::Error),
    /// It is not a regular file (a FIFO, a device, a directory).
    NotAFile,
    /// It holds more than the bound.
    TooLarge,
}

impl std::fmt::Display for SmallFileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Io(e) => write!(f, "{e}"),
            Self::NotAFile => write!(f, "not a regular file (a FIFO, a device or a directory)"),
            Self::TooLarge => write!(f, "larger than allowed"),
        }
    }
}

/// Reads a regular file of at most `max` bytes. Anything else is refused before it is
/// read (a FIFO would block the reader for ever, a device never end), and the bound
/// holds whatever the file does while it is read.
pub fn read_small_file(path: &std::path::Path, max: u64) -> Result<Vec<u8>, SmallFileError> {
    use std::io::Read as _;
    if !std::fs::metadata(path)
        .map_err(SmallFileError::Io)?
        .is_file()
    {
        return Err(SmallFileError::NotAFile);
    }
    let file = std::fs::File::open(path).map_err(SmallFileError::Io)?;
    let meta = file.metadata().map_err(SmallFileError::Io)?;
    if !meta.is_file() {
        return Err(SmallFileError::NotAFile);
    }
    if meta.len() > max {
        return Err(SmallFileError::TooLarge);
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.take(max.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(SmallFileError::Io)?;
    if bytes.len() as u64 > max {
        return Err(SmallFileError::TooLarge);
    }
    Ok(bytes)
}
