//! Times on the command line: the forms `--since` accepts, and the one form every JSON
//! output prints (RFC 3339 in UTC with milliseconds, as the Python client prints too).

use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{Date, OffsetDateTime};

const MS_PER_DAY: i64 = 86_400_000;

/// Fewest digits of a bare number read as Unix milliseconds (1973 onwards), so that a
/// span whose unit was forgotten (`--since 30`) is refused rather than read as 1970.
const MIN_UNIX_MS_DIGITS: usize = 12;

/// Why a time given on the command line was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TimeError {
    /// Nothing was given.
    #[error("{option}: empty; {FORMS}")]
    Empty {
        /// The option, e.g. `--since`.
        option: String,
    },
    /// A number without a unit that is too short to be Unix milliseconds.
    #[error(
        "{option} {text:?}: a number needs a unit (30m, 24h, 7d); Unix milliseconds have at least {MIN_UNIX_MS_DIGITS} digits"
    )]
    NoUnit {
        /// The option.
        option: String,
        /// What was given.
        text: String,
    },
    /// A span with a unit other than s, m, h, d or w.
    #[error("{option} {text:?}: unknown unit {unit:?}; units are s, m, h, d and w")]
    BadUnit {
        /// The option.
        option: String,
        /// What was given.
        text: String,
        /// The unit found.
        unit: String,
    },
    /// A span or number too large to be a time.
    #[error("{option} {text:?}: out of range")]
    OutOfRange {
        /// The option.
        option: String,
        /// What was given.
        text: String,
    },
    /// None of the accepted forms.
    #[error("{option} {text:?}: not a time; {FORMS}")]
    Unrecognised {
        /// The option.
        option: String,
        /// What was given.
        text: String,
    },
}

const FORMS: &str = "expected a span back from now (30m, 24h, 7d, 1h30m), an RFC 3339 date or time (2026-01-31, 2026-01-31T12:00:00Z), today, yesterday, now, or Unix milliseconds";

/// Reads a time given to `option` (for its error messages), as Unix milliseconds, with
/// `now_ms` the present:
///
/// - a span back from now: a number and a unit (`s`, `m`, `h`, `d`, `w`), repeated
///   (`90m`, `24h`, `7d`, `1h30m`);
/// - an RFC 3339 date and time (`2026-01-31T12:00:00Z`, `...+01:00`) or a date alone
///   (`2026-01-31`, midnight UTC);
/// - `now`, `today` (midnight UTC) or `yesterday` (midnight UTC the day before);
/// - Unix milliseconds (at least 12 digits).
pub fn parse_time(option: &str, text: &str, now_ms: i64) -> Result<i64, TimeError> {
    let text = text.trim();
    let err_text = || text.chars().take(64).collect::<String>();
    if text.is_empty() {
        return Err(TimeError::Empty {
            option: option.to_owned(),
        });
    }
    match text.to_ascii_lowercase().as_str() {
        "now" => return Ok(now_ms),
        "today" => return Ok(now_ms.div_euclid(MS_PER_DAY) * MS_PER_DAY),
        "yesterday" => return Ok((now_ms.div_euclid(MS_PER_DAY) - 1) * MS_PER_DAY),
        _ => {}
    }
    if let Ok(t) = OffsetDateTime::parse(text, &Rfc3339) {
        return i64::try_from(t.unix_timestamp_nanos() / 1_000_000).map_err(|_| {
            TimeError::OutOfRange {
                option: option.to_owned(),
                text: err_text(),
            }
        });
    }
    if let Ok(date) = Date::parse(text, format_description!("[year]-[month]-[day]")) {
        let t = date.midnight().assume_utc();
        return Ok(t.unix_timestamp() * 1000);
    }
    if text.bytes().all(|b| b.is_ascii_digit()) {
        if text.len() < MIN_UNIX_MS_DIGITS {
            return Err(TimeError::NoUnit {
                option: option.to_owned(),
                text: err_text(),
            });
        }
        return text.parse().map_err(|_| TimeError::OutOfRange {
            option: option.to_owned(),
            text: err_text(),
        });
    }
    if !text.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(TimeError::Unrecognised {
            option: option.to_owned(),
            text: err_text(),
        });
    }
    let span = parse_span(text).map_err(|problem| match problem {
        SpanProblem::Unit(unit) if unit.chars().all(|c| c.is_ascii_alphabetic()) => {
            TimeError::BadUnit {
                option: option.to_owned(),
                text: err_text(),
                unit,
            }
        }
        SpanProblem::Unit(_) => TimeError::Unrecognised {
            option: option.to_owned(),
            text: err_text(),
        },
        SpanProblem::Range => TimeError::OutOfRange {
            option: option.to_owned(),
            text: err_text(),
        },
    })?;
    Ok(now_ms.saturating_sub(span))
}

enum SpanProblem {
    Unit(String),
    Range,
}

/// `1h30m` as milliseconds.
fn parse_span(text: &str) -> Result<i64, SpanProblem> {
    let mut total: i64 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit_end = rest[digits..]
            .find(|c: char| c.is_ascii_digit())
            .map_or(rest.len(), |i| digits + i);
        let number: i64 = rest[..digits].parse().map_err(|_| SpanProblem::Range)?;
        let unit = &rest[digits..unit_end];
        let ms = match unit {
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => MS_PER_DAY,
            "w" => 7 * MS_PER_DAY,
            "" => return Err(SpanProblem::Unit(String::new())),
            other => return Err(SpanProblem::Unit(other.chars().take(16).collect())),
        };
        total = number
            .checked_mul(ms)
            .and_then(|n| total.checked_add(n))
            .ok_or(SpanProblem::Range)?;
        rest = &rest[unit_end..];
    }
    Ok(total)
}

/// Unix milliseconds as RFC 3339 in UTC with milliseconds (`2026-01-31T12:00:00.000Z`),
/// the form of every time in JSON output; the number itself if it is out of range.
pub fn timestamp(ms: i64) -> String {
    crate::util::rfc3339_ms(ms).unwrap_or_else(|| ms.to_string())
}

/// Unix milliseconds as RFC 3339 in UTC to the second (`2026-01-31T12:00:00Z`), for text.
pub fn timestamp_seconds(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms.div_euclid(1000)) * 1_000_000_000)
        .ok()
        .and_then(|t| {
            t.format(format_description!(
                "[year]-[month]-[day]T[hour]:[minute]:[second]Z"
            ))
            .ok()
        })
        .unwrap_or_else(|| ms.to_string())
}

/// `Some(timestamp)` for a time the node reports, `None` for 0 (never).
pub fn optional_timestamp(ms: i64) -> Option<String> {
    (ms > 0).then(|| timestamp(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    // 2026-12-06T09:30:15.250Z
    const NOW: i64 = 1_796_549_415_250;

    fn parse(text: &str) -> Result<i64, TimeError> {
        parse_time("--since", text, NOW)
    }

    #[test]
    fn spans_count_back_from_now() {
        assert_eq!(parse("30m"), Ok(NOW - 30 * 60_000));
        assert_eq!(parse("24h"), Ok(NOW - 24 * 3_600_000));
        assert_eq!(parse("7d"), Ok(NOW - 7 * MS_PER_DAY));
        assert_eq!(parse("2w"), Ok(NOW - 14 * MS_PER_DAY));
        assert_eq!(parse("1h30m"), Ok(NOW - 90 * 60_000));
        assert_eq!(parse(" 10s "), Ok(NOW - 10_000));
    }

    #[test]
    fn dates_times_and_words() {
        assert_eq!(timestamp(NOW), "2026-12-06T09:30:15.250Z");
        assert_eq!(parse("2026-12-06T09:30:15.250Z"), Ok(NOW));
        assert_eq!(parse("2026-12-06T10:30:15.250+01:00"), Ok(NOW));
        let midnight = NOW - (9 * 3600 + 30 * 60 + 15) * 1000 - 250;
        assert_eq!(parse("2026-12-06"), Ok(midnight));
        assert_eq!(parse("today"), Ok(midnight));
        assert_eq!(parse("Yesterday"), Ok(midnight - MS_PER_DAY));
        assert_eq!(parse("now"), Ok(NOW));
        assert_eq!(parse("1796549415250"), Ok(NOW));
        assert_eq!(timestamp_seconds(NOW), "2026-12-06T09:30:15Z");
        assert_eq!(timestamp(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(optional_timestamp(0), None);
    }

    #[test]
    fn bad_input_is_named_and_explained() {
        for (text, expected) in [
            ("", "--since: empty; expected a span"),
            (
                "yesterdy",
                "--since \"yesterdy\": not a time; expected a span",
            ),
            ("30", "a number needs a unit"),
            ("5y", "unknown unit \"y\""),
            ("99999999999999999999d", "out of range"),
            ("9999999999999999d", "out of range"),
            ("2026-13-01", "not a time"),
            ("-5m", "not a time"),
        ] {
            let error = parse(text).expect_err(text).to_string();
            assert!(error.contains(expected), "{text:?}: {error}");
        }
    }
}
