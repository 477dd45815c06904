//! The query parameters of the TAXII object endpoints, parsed and bounded: `added_after`,
//! `limit`, `next` and the `match[...]` filters.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Longest query string accepted, in bytes.
pub const MAX_QUERY_BYTES: usize = 4096;
/// Default page size.
pub const DEFAULT_LIMIT: usize = 100;
/// Largest page size; a larger `limit` is lowered to it.
pub const MAX_LIMIT: usize = 1000;
/// Most values in one `match[...]` filter.
pub const MAX_MATCH_VALUES: usize = 100;
/// Longest `next` accepted, in characters.
pub const MAX_NEXT_CHARS: usize = 1024;

/// `match[version]`: any of `first`, `last` (the default), `all` and exact versions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VersionFilter {
    /// `first`: the oldest version the caller may see.
    pub first: bool,
    /// `last`: the latest version.
    pub last: bool,
    /// `all`: every version the caller may see.
    pub all: bool,
    /// Exact versions, ms since the epoch.
    pub exact: Vec<i64>,
    /// A timestamp finer than a millisecond was given (`…00.123456Z`): it names no
    /// version held, as the node keeps versions to the millisecond.
    pub finer: bool,
}

impl VersionFilter {
    /// For an object held in one version (a marking definition, an identity), or the
    /// latest version where only that is read: whether version `modified_ms` qualifies
    /// (`first`, `last` and `all` take it; a timestamp, if it is its version). Listings
    /// serve other versions than the latest only through [`VersionFilter::select`].
    pub fn allows(&self, modified_ms: i64) -> bool {
        self.first || self.last || self.all || self.exact.contains(&modified_ms)
    }

    /// Whether only the latest version is asked for.
    pub fn latest_only(&self) -> bool {
        self.last && !self.first && !self.all && self.exact.is_empty() && !self.finer
    }

    /// The versions selected among `versions` (those the caller may see, oldest first),
    /// each at most once, oldest first.
    pub fn select<T>(&self, versions: Vec<T>, modified_ms: impl Fn(&T) -> i64) -> Vec<T> {
        let count = versions.len();
        versions
            .into_iter()
            .enumerate()
            .filter(|(at, v)| {
                self.all
                    || (self.first && *at == 0)
                    || (self.last && *at + 1 == count)
                    || self.exact.contains(&modified_ms(v))
            })
            .map(|(_, v)| v)
            .collect()
    }
}

/// The parameters of a request, checked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Params {
    /// `added_after`, ms since the epoch.
    pub added_after_ms: Option<i64>,
    /// `limit`, within 1 to [`MAX_LIMIT`].
    pub limit: usize,
    /// `next`, as given.
    pub next: Option<String>,
    /// `match[id]`.
    pub ids: Option<Vec<String>>,
    /// `match[type]`.
    pub types: Option<Vec<String>>,
    /// `match[version]`; by default `last`.
    pub version: VersionFilter,
    /// `match[spec_version]`.
    pub spec_versions: Option<Vec<String>>,
    /// Not a query parameter: since when (ms) the caller's policy in force now applies
    /// to it (`Engine::listed_since`). No object is listed to it as added earlier.
    pub listed_since_ms: i64,
    /// Not a query parameter: the caller's `embargo` (ms). An object enters its
    /// collection when its embargo lifts, and is dated then.
    pub embargo_ms: i64,
}

impl Params {
    /// The date added of an object the node accepted at `accepted_ms`, as the caller's
    /// collection holds it: when it became visible to the caller (once its embargo
    /// lifted), and not before its policy in force now began to apply, so an object a
    /// widened policy lets through, or one still under its embargo when the policy
    /// changed, is new to its `added_after` polls.
    pub fn date_added(&self, accepted_ms: i64) -> i64 {
        accepted_ms
            .saturating_add(self.embargo_ms)
            .max(self.listed_since_ms)
    }

    /// Whether an object accepted at `accepted_ms` passes `added_after`.
    pub fn added_after_passes(&self, accepted_ms: i64) -> bool {
        self.added_after_ms
            .is_none_or(|after| self.date_added(accepted_ms) > after)
    }

    /// The `added_after` the store's scan can apply to the time it accepted each item:
    /// none when the caller's policy changed after it, as every object then passes.
    pub fn accepted_after(&self) -> Option<i64> {
        self.added_after_ms
            .filter(|after| *after >= self.listed_since_ms)
            .map(|after| after.saturating_sub(self.embargo_ms))
    }

    /// Whether an object of STIX type `stix_type` (and spec version 2.1, as every object
    /// the node holds) passes `match[type]` and `match[spec_version]`.
    pub fn admits(&self, stix_type: &str) -> bool {
        self.types
            .as_ref()
            .is_none_or(|types| types.iter().any(|t| t == stix_type))
            && self
                .spec_versions
                .as_ref()
                .is_none_or(|versions| versions.iter().any(|v| v == "2.1"))
    }

    /// The query without `next` and `limit`, in one canonical text (what a `next` is
    /// bound to): every other parameter as parsed, in a fixed order, each value
    /// length-prefixed. A client may change `limit` from page to page (`taxii2-client`
    /// does when a page holds more objects than it asked for). It also holds since when
    /// the caller's policy in force applies to it, so a `next` given before a change of
    /// that policy is refused after it: the listing starts again, and serves what the
    /// change let through before the place it had reached.
    pub fn scope(&self) -> String {
        fn list(out: &mut String, name: &str, values: Option<&[String]>) {
            out.push_str(name);
            match values {
                None => out.push('-'),
                Some(values) => {
                    for v in values {
                        out.push_str(&format!("{}:{v}", v.len()));
                    }
                }
            }
            out.push(';');
        }
        let mut out = match self.added_after_ms {
            Some(ms) => format!("added_after={ms};"),
            None => "added_after-;".to_owned(),
        };
        list(&mut out, "id=", self.ids.as_deref());
        list(&mut out, "type=", self.types.as_deref());
        list(&mut out, "spec_version=", self.spec_versions.as_deref());
        let exact: Vec<String> = self.version.exact.iter().map(i64::to_string).collect();
        out.push_str(&format!(
            "version_first={};version_last={};version_all={};version_finer={};",
            self.version.first, self.version.last, self.version.all, self.version.finer
        ));
        list(&mut out, "version=", Some(&exact));
        out.push_str(&format!("listed_since={};", self.listed_since_ms));
        out.push_str(&format!("embargo={};", self.embargo_ms));
        out
    }

    /// Whether any object the node serves (an indicator, a context object, or the
    /// marking definitions, identities and extension definition they refer to) passes
    /// `match[type]` and `match[spec_version]`.
    pub fn admits_any(&self) -> bool {
        [
            "indicator",
            "marking-definition",
            "identity",
            "extension-definition",
        ]
        .into_iter()
        .chain(
            crate::model::IndicatorType::ALL
                .into_iter()
                .filter(|t| t.is_context())
                .map(|t| t.as_str()),
        )
        .any(|ty| self.admits(ty))
    }
}

/// Parses a query string (without `?`). Unknown parameters are ignored, as TAXII asks
/// of filters a server does not support; a known one given twice, or with a bad value,
/// is an error in words.
pub fn parse(query: Option<&str>) -> Result<Params, String> {
    let mut params = Params {
        limit: DEFAULT_LIMIT,
        version: VersionFilter {
            last: true,
            ..VersionFilter::default()
        },
        ..Params::default()
    };
    let Some(query) = query else {
        return Ok(params);
    };
    if query.len() > MAX_QUERY_BYTES {
        return Err(format!(
            "the query string is longer than {MAX_QUERY_BYTES} bytes"
        ));
    }
    let mut seen: Vec<String> = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = decode(key).ok_or("a parameter name is not valid percent-encoded UTF-8")?;
        let value =
            decode(value).ok_or_else(|| format!("{key}: not valid percent-encoded UTF-8"))?;
        let known = matches!(
            key.as_str(),
            "added_after"
                | "limit"
                | "next"
                | "match[id]"
                | "match[type]"
                | "match[version]"
                | "match[spec_version]"
        );
        if !known {
            continue;
        }
        if seen.contains(&key) {
            return Err(format!("{key} is given more than once"));
        }
        seen.push(key.clone());
        match key.as_str() {
            "added_after" => {
                params.added_after_ms =
                    Some(timestamp(&value).ok_or("added_after is not a TAXII timestamp")?);
            }
            "limit" => {
                // A positive integer of any size; past MAX_LIMIT it is lowered (digits
                // beyond what a usize holds included).
                let digits = value.strip_prefix('+').unwrap_or(&value);
                if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                    return Err("limit is not a positive integer".into());
                }
                let limit = digits.parse::<usize>().unwrap_or(usize::MAX);
                if limit == 0 {
                    return Err("limit is not a positive integer".into());
                }
                params.limit = limit.min(MAX_LIMIT);
            }
            "next" => {
                if value.is_empty() || value.len() > MAX_NEXT_CHARS {
                    return Err("next is not a value this server gave".into());
                }
                params.next = Some(value);
            }
            "match[id]" => params.ids = Some(list(&key, &value)?),
            "match[type]" => params.types = Some(list(&key, &value)?),
            "match[spec_version]" => params.spec_versions = Some(list(&key, &value)?),
            "match[version]" => {
                let mut filter = VersionFilter::default();
                for v in list(&key, &value)? {
                    match v.as_str() {
                        "first" => filter.first = true,
                        "last" => filter.last = true,
                        "all" => filter.all = true,
                        // Versions are held to the millisecond: a finer timestamp
                        // names none of them, rather than the one in its millisecond.
                        other => match timestamp_ns(other)
                            .ok_or("match[version] takes first, last, all or timestamps")?
                        {
                            ns if ns % 1_000_000 != 0 => filter.finer = true,
                            ns => filter.exact.push(
                                i64::try_from(ns / 1_000_000)
                                    .map_err(|_| "match[version] is out of range")?,
                            ),
                        },
                    }
                }
                params.version = filter;
            }
            _ => {}
        }
    }
    Ok(params)
}

/// A comma-separated list of 1 to [`MAX_MATCH_VALUES`] non-empty values.
fn list(key: &str, value: &str) -> Result<Vec<String>, String> {
    let values: Vec<String> = value.split(',').map(|v| v.trim().to_owned()).collect();
    if values.iter().any(String::is_empty) {
        return Err(format!("{key} has an empty value"));
    }
    if values.len() > MAX_MATCH_VALUES {
        return Err(format!("{key} has more than {MAX_MATCH_VALUES} values"));
    }
    Ok(values)
}

/// Percent-decodes a query component (`+` is a space), as UTF-8.
fn decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        match bytes[at] {
            b'%' => {
                let hex = bytes.get(at + 1..at + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                at += 3;
            }
            b'+' => {
                out.push(b' ');
                at += 1;
            }
            other => {
                out.push(other);
                at += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// A TAXII timestamp (RFC 3339, UTC or with an offset), ms since the epoch.
pub fn timestamp(text: &str) -> Option<i64> {
    i64::try_from(timestamp_ns(text)?.div_euclid(1_000_000)).ok()
}

/// A TAXII timestamp, ns since the epoch.
fn timestamp_ns(text: &str) -> Option<i128> {
    if text.len() > 64 {
        return None;
    }
    Some(
        OffsetDateTime::parse(text, &Rfc3339)
            .ok()?
            .unix_timestamp_nanos(),
    )
}

/// A TAXII timestamp with millisecond precision (`2025-06-15T15:06:40.000Z`).
pub fn format_timestamp(ms: i64) -> String {
    crate::util::rfc3339_ms(ms).unwrap_or_else(|| "1970-01-01T00:00:00.000Z".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_filters() {
        let p = parse(Some(
            "added_after=2025-01-01T00%3A00%3A00.000Z&limit=5000&match%5Bid%5D=a,b&match[type]=indicator&match[version]=all&x=1",
        ))
        .unwrap();
        assert_eq!(p.added_after_ms, Some(1_735_689_600_000));
        assert_eq!(p.limit, MAX_LIMIT);
        for huge in ["99999999999999999999999999", "18446744073709551616"] {
            assert_eq!(
                parse(Some(&format!("limit={huge}"))).unwrap().limit,
                MAX_LIMIT
            );
        }
        assert!(parse(Some("limit=000")).is_err());
        assert_eq!(p.ids, Some(vec!["a".into(), "b".into()]));
        assert!(p.admits("indicator"));
        assert!(!p.admits("malware"));
        assert!(p.version.all && !p.version.latest_only());
        let p = parse(Some("match[version]=2025-01-01T00:00:00.001Z")).unwrap();
        assert!(!p.version.last && !p.version.all);
        assert!(p.version.allows(1_735_689_600_001));
        let malware = parse(Some("match[type]=malware")).unwrap();
        assert!(!malware.admits("indicator") && malware.admits("malware") && malware.admits_any());
        assert!(!parse(Some("match[type]=location")).unwrap().admits_any());
        assert!(parse(Some("match[type]=identity")).unwrap().admits_any());
        assert!(!parse(Some("match[spec_version]=2.0")).unwrap().admits_any());
        assert!(parse(None).unwrap().version.latest_only());
        let both = parse(Some("match[version]=first,last")).unwrap().version;
        assert_eq!(both.select(vec![1, 2, 3], |v| *v), [1, 3]);
        assert_eq!(both.select(vec![1], |v| *v), [1]);
        let exact = parse(Some("match[version]=1970-01-01T00:00:00.002Z,first"))
            .unwrap()
            .version;
        assert_eq!(exact.select(vec![1, 2, 3], |v| *v), [1, 2]);
        // Versions are held to the millisecond: a finer timestamp names none.
        let finer = parse(Some("match[version]=1970-01-01T00:00:00.002999Z"))
            .unwrap()
            .version;
        assert!(finer.finer && !finer.latest_only());
        assert!(finer.select(vec![1, 2, 3], |v| *v).is_empty());
        assert!(!finer.allows(2));
        let whole = parse(Some("match[version]=1970-01-01T00:00:00.002000Z"))
            .unwrap()
            .version;
        assert_eq!(whole.select(vec![1, 2, 3], |v| *v), [2]);
    }

    #[test]
    fn refuses_bad_input() {
        for bad in [
            "limit=0",
            "limit=-1",
            "limit=x",
            "limit=1&limit=2",
            "added_after=yesterday",
            "match[id]=a,,b",
            "match[version]=newest",
            "next=",
            "%zz=1",
            "limit=%ff",
        ] {
            assert!(parse(Some(bad)).is_err(), "{bad}");
        }
        let long = "x".repeat(MAX_QUERY_BYTES + 1);
        assert!(parse(Some(&long)).is_err());
        let many = format!("match[id]={}", vec!["a"; MAX_MATCH_VALUES + 1].join(","));
        assert!(parse(Some(&many)).is_err());
    }

    #[test]
    fn timestamps_round_trip() {
        assert_eq!(
            format_timestamp(1_735_689_600_001),
            "2025-01-01T00:00:00.001Z"
        );
        assert_eq!(
            timestamp("2025-01-01T00:00:00.001Z"),
            Some(1_735_689_600_001)
        );
    }
}
