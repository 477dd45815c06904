//! Normalisation and validation of indicator values, type detection for plain lists, and
//! item validation. Pure functions over strings: no I/O, and nothing here panics on any input.
//!
//! Normalised forms, so that equal indicators compare equal:
//!
//! | type | canonical form |
//! | --- | --- |
//! | ipv4 | `a.b.c.d`, decimal octets without leading zeros; an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) is read as its IPv4 address |
//! | ipv6 | RFC 5952 (lower case, longest zero run as `::`); IPv4-mapped addresses are ipv4 values, not ipv6 ones |
//! | cidr | network address (host bits zeroed) `/` prefix length, at least /8 (IPv4) or /16 (IPv6); a network inside `::ffff:0:0/96` is written as the IPv4 network |
//! | domain | lower case, no trailing dot, `xn--` labels for international names (which must decode) |
//! | url | scheme and host in lower case, default port (`:80`, `:443`) removed, rest as given; no user information (`user:password@`) |
//! | email | the whole address in lower case (ASCII), domain normalised as a domain; a leading `mailto:` is dropped |
//! | md5, sha1, sha256 | lower-case hex |
//! | stix-pattern | as written, without surrounding whitespace |

use std::borrow::Cow;
use std::net::{Ipv4Addr, Ipv6Addr};

use super::item::{
    ContextObject, Indicator, IndicatorType, InvalidValue, Item, ItemKind, ModelError,
};

/// Longest value accepted, in bytes (after trimming), for every type but STIX patterns.
const MAX_VALUE_BYTES: usize = 2048;
/// Longest STIX pattern accepted, in bytes.
const MAX_PATTERN_BYTES: usize = 4096;
/// How much of a rejected value an [`InvalidValue`] keeps, in characters.
const SHOWN_CHARS: usize = 100;
/// Longest domain name, in bytes, without the trailing dot.
const MAX_DOMAIN_BYTES: usize = 253;
/// Longest domain label, in bytes.
const MAX_LABEL_BYTES: usize = 63;
/// Longest local part of an e-mail address, in characters.
const MAX_LOCAL_PART: usize = 64;
/// Shortest IPv4 network prefix accepted: a broader network (a /7 is 1/128 of the whole
/// address space, `0.0.0.0/0` all of it) is not an indicator, and a consumer that blocks it
/// cuts itself off.
pub const MIN_IPV4_PREFIX: u32 = 8;
/// Shortest IPv6 network prefix accepted (a /16 is already larger than every allocation a
/// regional registry makes).
pub const MIN_IPV6_PREFIX: u32 = 16;

/// Longest description, in bytes.
const MAX_DESCRIPTION_BYTES: usize = 4096;
/// Most kill-chain phases on one indicator.
pub const MAX_KILL_CHAIN_PHASES: usize = 32;
/// Longest kill-chain phase, in bytes.
const MAX_PHASE_BYTES: usize = 128;
/// Most tags on one item.
pub const MAX_TAGS: usize = 32;
/// Longest tag, in bytes.
const MAX_TAG_BYTES: usize = 64;
/// Longest revocation reason, in bytes.
const MAX_REASON_BYTES: usize = 1024;

/// Normalises `raw` as a value of type `ty`, or says why it is invalid.
///
/// Surrounding whitespace is ignored. The result of a successful call normalises to itself.
/// E-mail local parts are lower-cased too: strictly they are case-sensitive (RFC 5321), but
/// mail systems treat them without case, and one spelling per address keeps equal
/// indicators equal.
pub fn normalise(ty: IndicatorType, raw: &str) -> Result<String, InvalidValue> {
    let value = raw.trim();
    let invalid = |reason: String| InvalidValue {
        indicator_type: ty,
        value: match ty {
            IndicatorType::Url => without_user_information(value),
            _ => Cow::Borrowed(value),
        }
        .chars()
        .take(SHOWN_CHARS)
        .collect(),
        reason,
    };
    if value.is_empty() {
        return Err(invalid("empty".into()));
    }
    let max = match ty {
        IndicatorType::StixPattern => MAX_PATTERN_BYTES,
        _ => MAX_VALUE_BYTES,
    };
    if value.len() > max {
        return Err(invalid(format!(
            "{} bytes long, at most {max} allowed",
            value.len()
        )));
    }
    let result = match ty {
        IndicatorType::Ipv4 => parse_ipv4_or_mapped(value).map(|a| a.to_string()),
        IndicatorType::Ipv6 => parse_ipv6(value).map(|a| a.to_string()),
        IndicatorType::Cidr => normalise_cidr(value),
        IndicatorType::Domain => normalise_domain(value),
        IndicatorType::Url => normalise_url(value),
        IndicatorType::Email => normalise_email(value),
        IndicatorType::Md5 => normalise_hash("md5", 32, value),
        IndicatorType::Sha1 => normalise_hash("sha1", 40, value),
        IndicatorType::Sha256 => normalise_hash("sha256", 64, value),
        IndicatorType::StixPattern => check_pattern(value),
        context => Err(format!(
            "{context} is a context object type, not an indicator type"
        )),
    };
    result.map_err(invalid)
}

/// Normalises `raw`, given as type `ty`, into the type it really has and its normal form.
///
/// The only value that changes type is an IPv4-mapped IPv6 address (`::ffff:192.0.2.1`,
/// also written `::ffff:c000:201`): it is the IPv4 address `192.0.2.1` and becomes an ipv4
/// value, so that the two spellings are one indicator. Every input path (STIX, CSV, lists,
/// `Intel.Publish`) and the type filter of a query go through this; [`normalise`] alone
/// refuses such an address as ipv6.
pub fn normalise_typed(
    ty: IndicatorType,
    raw: &str,
) -> Result<(IndicatorType, String), InvalidValue> {
    if ty == IndicatorType::Ipv6 && mapped_ipv4(raw.trim()).is_some() {
        return normalise(IndicatorType::Ipv4, raw).map(|v| (IndicatorType::Ipv4, v));
    }
    normalise(ty, raw).map(|v| (ty, v))
}

/// The IPv4 address of an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`).
fn mapped_ipv4(value: &str) -> Option<Ipv4Addr> {
    parse_ipv6_literal(value).ok()?.to_ipv4_mapped()
}

/// Guesses the type of a bare value from a plain list, by its shape.
///
/// STIX patterns start with `[`, URLs have `scheme://`, e-mail addresses an `@`, IPv4
/// addresses are four dot-separated numbers, CIDR networks contain `/` and parse, IPv6
/// addresses parse, hashes are 32, 40 or 64 hex digits, and anything else that is a valid
/// domain name is a domain. A value of one of the first four shapes gets its type even when
/// it is not valid, so that [`normalise`] can then say what is wrong with it. `None` when
/// nothing fits.
pub fn detect_type(raw: &str) -> Option<IndicatorType> {
    let value = raw.trim();
    if value.is_empty() {
        return None;
    }
    if value.starts_with('[') {
        return Some(IndicatorType::StixPattern);
    }
    if split_scheme(value).is_some() {
        return Some(IndicatorType::Url);
    }
    if value.contains('/') {
        return normalise_cidr(value).is_ok().then_some(IndicatorType::Cidr);
    }
    if value.contains('@') {
        return Some(IndicatorType::Email);
    }
    if value.split('.').count() == 4 && value.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Some(IndicatorType::Ipv4);
    }
    if value.contains(':') {
        return parse_ipv6_literal(value).ok().map(|address| {
            if address.to_ipv4_mapped().is_some() {
                IndicatorType::Ipv4
            } else {
                IndicatorType::Ipv6
            }
        });
    }
    if value.bytes().all(|b| b.is_ascii_hexdigit()) {
        match value.len() {
            32 => return Some(IndicatorType::Md5),
            40 => return Some(IndicatorType::Sha1),
            64 => return Some(IndicatorType::Sha256),
            _ => {}
        }
    }
    normalise_domain(value)
        .is_ok()
        .then_some(IndicatorType::Domain)
}

impl Item {
    /// Checks every field: the value is valid and already normalised for its type, and
    /// sizes, counts, ranges and timestamps are within bounds. The id is valid by
    /// construction.
    pub fn validate(&self) -> Result<(), ModelError> {
        if self.modified_ms <= 0 {
            return Err(field("modified", "must be after the Unix epoch".into()));
        }
        check_tags(&self.tags)?;
        let prefix = match &self.kind {
            ItemKind::Context(c) => c.object_type.as_str(),
            _ => "indicator",
        };
        if self.id.stix_type() != prefix {
            return Err(field(
                "id",
                format!("{} is not the id of a {prefix}", self.id),
            ));
        }
        match &self.kind {
            ItemKind::Indicator(indicator) => {
                check_indicator(indicator)?;
                check_pattern_urls(indicator)?;
            }
            ItemKind::Context(context) => check_context(context)?,
            ItemKind::Revocation(revocation) => {
                if revocation.reason.len() > MAX_REASON_BYTES {
                    return Err(field(
                        "reason",
                        too_long(revocation.reason.len(), MAX_REASON_BYTES),
                    ));
                }
                if let Some(indicator) = &revocation.indicator {
                    if indicator.indicator_type != revocation.indicator_type {
                        return Err(field(
                            "revocation",
                            format!(
                                "revokes a {} indicator but carries a {} one",
                                revocation.indicator_type, indicator.indicator_type
                            ),
                        ));
                    }
                    check_indicator(indicator)?;
                }
            }
        }
        Ok(())
    }
}

/// Most ids one report may reference.
pub const MAX_REPORT_REFS: usize = 500;

fn check_context(context: &ContextObject) -> Result<(), ModelError> {
    if !context.object_type.is_context() {
        return Err(field(
            "object_type",
            format!("{} is not a context object type", context.object_type),
        ));
    }
    let refs = context.refs.len();
    match context.object_type {
        IndicatorType::Relationship => {
            if refs != 2 {
                return Err(field(
                    "refs",
                    format!("a relationship references a source and a target, not {refs} ids"),
                ));
            }
            if context.properties.string("relationship_type").is_none() {
                return Err(field(
                    "relationship_type",
                    "a relationship needs a relationship_type".into(),
                ));
            }
        }
        IndicatorType::Report => {
            if refs > MAX_REPORT_REFS {
                return Err(field(
                    "refs",
                    format!(
                        "a report references at most {MAX_REPORT_REFS} shared objects, not {refs}"
                    ),
                ));
            }
            // Its references are exactly those of `object_refs` that name shared
            // objects, so that none reaches a partner without policy judging it.
            let listed = context.properties.to_map();
            let listed: Vec<&str> = match listed.get("object_refs") {
                Some(serde_json::Value::Array(ids)) => ids
                    .iter()
                    .map(|id| id.as_str().unwrap_or(""))
                    .filter(|id| super::item::ItemId::parse(id).is_ok())
                    .collect(),
                _ => {
                    return Err(field(
                        "object_refs",
                        "a report needs object_refs, a list of ids".into(),
                    ));
                }
            };
            let carried: Vec<String> = listed
                .iter()
                .filter_map(|id| super::item::ItemId::parse(id).ok())
                .map(|id| id.to_string())
                .collect();
            let refs: Vec<&str> = context.refs.iter().map(|r| r.as_str()).collect();
            if carried != refs {
                return Err(field(
                    "refs",
                    "a report's references must be the shared objects its object_refs name".into(),
                ));
            }
        }
        IndicatorType::Sighting => {
            if refs > MAX_REPORT_REFS {
                return Err(field(
                    "refs",
                    format!(
                        "a sighting references at most {MAX_REPORT_REFS} shared objects, not {refs}"
                    ),
                ));
            }
            // Its references are exactly the shared objects its `sighting_of_ref`,
            // `observed_data_refs` and `where_sighted_refs` name, in that order, and the
            // first is what it sights: none reaches a partner without policy judging it.
            let kept = context.properties.to_map();
            let Some(sighted) = kept
                .get("sighting_of_ref")
                .and_then(serde_json::Value::as_str)
                .and_then(|id| super::item::ItemId::parse(id).ok())
            else {
                return Err(field(
                    "sighting_of_ref",
                    "a sighting needs a sighting_of_ref naming a shared object".into(),
                ));
            };
            let mut carried = vec![sighted.to_string()];
            for name in ["observed_data_refs", "where_sighted_refs"] {
                match kept.get(name) {
                    None => {}
                    Some(serde_json::Value::Array(ids)) => carried.extend(
                        ids.iter()
                            .filter_map(serde_json::Value::as_str)
                            .filter_map(|id| super::item::ItemId::parse(id).ok())
                            .map(|id| id.to_string()),
                    ),
                    Some(_) => {
                        return Err(field("refs", format!("{name} is not a list of ids")));
                    }
                }
            }
            let refs: Vec<&str> = context.refs.iter().map(|r| r.as_str()).collect();
            if carried != refs {
                return Err(field(
                    "refs",
                    "a sighting's references must be the shared objects its sighting_of_ref, observed_data_refs and where_sighted_refs name".into(),
                ));
            }
        }
        _ if refs != 0 => {
            return Err(field(
                "refs",
                format!("a {} references no ids", context.object_type),
            ));
        }
        _ => {}
    }
    Ok(())
}

/// Refuses a STIX pattern that compares a URL with user information, as a `url` value
/// with it is refused ([`USER_INFORMATION`]), and with the same message: the URL shown
/// with its user information as `***`. Only indicators are held to it, not the copy a
/// revocation carries, so an indicator held from before this rule can still be revoked.
fn check_pattern_urls(indicator: &Indicator) -> Result<(), ModelError> {
    if indicator.indicator_type != IndicatorType::StixPattern {
        return Ok(());
    }
    match super::observables::url_with_user_information(&indicator.value) {
        None => Ok(()),
        Some(url) => Err(ModelError::Value(InvalidValue {
            indicator_type: IndicatorType::Url,
            value: without_user_information(&url)
                .chars()
                .take(SHOWN_CHARS)
                .collect(),
            reason: USER_INFORMATION.into(),
        })),
    }
}

fn check_indicator(indicator: &Indicator) -> Result<(), ModelError> {
    if indicator.indicator_type.is_context() {
        return Err(field(
            "indicator_type",
            format!("{} is not an indicator type", indicator.indicator_type),
        ));
    }
    let normal = normalise(indicator.indicator_type, &indicator.value)?;
    if normal != indicator.value {
        return Err(ModelError::Value(InvalidValue {
            indicator_type: indicator.indicator_type,
            value: indicator.value.chars().take(SHOWN_CHARS).collect(),
            reason: format!("not in normal form (expected {normal:?})"),
        }));
    }
    if indicator.description.len() > MAX_DESCRIPTION_BYTES {
        return Err(field(
            "description",
            too_long(indicator.description.len(), MAX_DESCRIPTION_BYTES),
        ));
    }
    if indicator.confidence > 100 {
        return Err(field(
            "confidence",
            format!("{} is above 100", indicator.confidence),
        ));
    }
    check_phases(&indicator.kill_chain_phases)?;
    if indicator
        .valid_until_ms
        .is_some_and(|until| until <= indicator.valid_from_ms)
    {
        return Err(field("valid_until", "must be later than valid_from".into()));
    }
    if indicator.properties.as_str().len() > super::properties::MAX_PROPERTIES_BYTES {
        return Err(field("stix_properties", "too large".into()));
    }
    Ok(())
}

fn field(field: &'static str, problem: String) -> ModelError {
    ModelError::Field { field, problem }
}

fn too_long(len: usize, max: usize) -> String {
    format!("{len} bytes long, at most {max} allowed")
}

/// Checks `tags` against the tag rules: at most [`MAX_TAGS`], each 1 to 64 bytes of
/// plain ASCII without whitespace or control characters.
pub fn check_tags(tags: &[String]) -> Result<(), ModelError> {
    if tags.len() > MAX_TAGS {
        return Err(field(
            "tags",
            format!("{} tags, at most {MAX_TAGS} allowed", tags.len()),
        ));
    }
    for tag in tags {
        if tag.is_empty() {
            return Err(field("tags", "empty tag".into()));
        }
        if tag.len() > MAX_TAG_BYTES {
            return Err(field(
                "tags",
                format!(
                    "tag {:?} is {}",
                    shown(tag),
                    too_long(tag.len(), MAX_TAG_BYTES)
                ),
            ));
        }
        if !tag.is_ascii() {
            return Err(field(
                "tags",
                format!(
                    "tag {:?} must be plain ASCII (so that no look-alike letter can slip past a policy's tag lists)",
                    shown(tag)
                ),
            ));
        }
        if tag.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(field(
                "tags",
                format!(
                    "tag {:?} contains whitespace or a control character",
                    shown(tag)
                ),
            ));
        }
    }
    Ok(())
}

fn check_phases(phases: &[String]) -> Result<(), ModelError> {
    if phases.len() > MAX_KILL_CHAIN_PHASES {
        return Err(field(
            "kill_chain_phases",
            format!(
                "{} phases, at most {MAX_KILL_CHAIN_PHASES} allowed",
                phases.len()
            ),
        ));
    }
    for phase in phases {
        if phase.is_empty() {
            return Err(field("kill_chain_phases", "empty phase".into()));
        }
        if phase.len() > MAX_PHASE_BYTES {
            return Err(field(
                "kill_chain_phases",
                format!(
                    "phase {:?} is {}",
                    shown(phase),
                    too_long(phase.len(), MAX_PHASE_BYTES)
                ),
            ));
        }
        if phase.chars().any(char::is_control) {
            return Err(field(
                "kill_chain_phases",
                format!("phase {:?} contains a control character", shown(phase)),
            ));
        }
    }
    Ok(())
}

/// The start of a long string, for messages.
fn shown(s: &str) -> String {
    s.chars().take(SHOWN_CHARS).collect()
}

/// Parses a dotted quad strictly: four decimal octets, no leading zeros, nothing else.
fn parse_ipv4(value: &str) -> Result<Ipv4Addr, String> {
    let parts: Vec<&str> = value.split('.').collect();
    if parts.len() != 4 {
        return Err(format!(
            "expected four dot-separated numbers (a.b.c.d), got {} parts",
            parts.len()
        ));
    }
    let mut octets = [0u8; 4];
    for (i, (part, octet)) in parts.iter().zip(octets.iter_mut()).enumerate() {
        let n = i + 1;
        if part.is_empty() {
            return Err(format!("octet {n} is empty"));
        }
        if !part.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!(
                "octet {n} ({:?}) is not a decimal number",
                shown(part)
            ));
        }
        if part.len() > 1 && part.starts_with('0') {
            return Err(format!(
                "octet {n} ({part}) has a leading zero, which some tools read as octal"
            ));
        }
        *octet = part
            .parse::<u8>()
            .map_err(|_| format!("octet {n} ({}) is above 255", shown(part)))?;
    }
    Ok(Ipv4Addr::from(octets))
}

/// An ipv4 value: a dotted quad, or an IPv4-mapped IPv6 address read as its IPv4 address.
fn parse_ipv4_or_mapped(value: &str) -> Result<Ipv4Addr, String> {
    if value.contains(':') {
        return mapped_ipv4(value).ok_or_else(|| {
            "not an IPv4 address (an IPv6 address is only read as IPv4 when IPv4-mapped, ::ffff:a.b.c.d)"
                .into()
        });
    }
    parse_ipv4(value)
}

/// An ipv6 value: any IPv6 address but an IPv4-mapped one, which is an ipv4 value.
fn parse_ipv6(value: &str) -> Result<Ipv6Addr, String> {
    let address = parse_ipv6_literal(value)?;
    if let Some(v4) = address.to_ipv4_mapped() {
        return Err(format!(
            "an IPv4-mapped address: this is the IPv4 address {v4}, publish it as ipv4"
        ));
    }
    Ok(address)
}

fn parse_ipv6_literal(value: &str) -> Result<Ipv6Addr, String> {
    if value.starts_with('[') || value.ends_with(']') {
        return Err("give the address without brackets".into());
    }
    if value.contains('%') {
        return Err("zone ids (%...) are not allowed".into());
    }
    value
        .parse::<Ipv6Addr>()
        .map_err(|_| "not an IPv6 address".into())
}

fn normalise_cidr(value: &str) -> Result<String, String> {
    let Some((address, prefix)) = value.split_once('/') else {
        return Err("expected address/prefix, e.g. 10.0.0.0/8".into());
    };
    if prefix.contains('/') {
        return Err("more than one '/'".into());
    }
    let is_v6 = address.contains(':');
    let max = if is_v6 { 128 } else { 32 };
    if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "prefix length {:?} is not a number from 0 to {max}",
            shown(prefix)
        ));
    }
    if prefix.len() > 1 && prefix.starts_with('0') {
        return Err(format!("prefix length {prefix} has a leading zero"));
    }
    let bits = prefix
        .parse::<u32>()
        .ok()
        .filter(|&bits| bits <= max)
        .ok_or_else(|| format!("prefix length {} is above {max}", shown(prefix)))?;
    if is_v6 {
        let address = parse_ipv6_literal(address)?;
        let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
        let network = Ipv6Addr::from(address.to_bits() & mask);
        // A network inside ::ffff:0:0/96 holds IPv4-mapped addresses only: it is the IPv4
        // network with the same host bits, and is written (and limited) as one.
        if bits >= 96 {
            if let Some(v4) = network.to_ipv4_mapped() {
                return ipv4_network(v4, bits - 96);
            }
        }
        if bits < MIN_IPV6_PREFIX {
            return Err(too_broad(&format!("{network}/{bits}"), MIN_IPV6_PREFIX));
        }
        Ok(format!("{network}/{bits}"))
    } else {
        ipv4_network(parse_ipv4(address)?, bits)
    }
}

fn ipv4_network(address: Ipv4Addr, bits: u32) -> Result<String, String> {
    let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
    let network = Ipv4Addr::from(address.to_bits() & mask);
    if bits < MIN_IPV4_PREFIX {
        return Err(too_broad(&format!("{network}/{bits}"), MIN_IPV4_PREFIX));
    }
    Ok(format!("{network}/{bits}"))
}

fn too_broad(network: &str, min: u32) -> String {
    format!(
        "network {network} is too broad to be an indicator (the prefix must be at least /{min}); \
         a consumer that blocked it would cut off a large part of the Internet"
    )
}

fn normalise_domain(value: &str) -> Result<String, String> {
    if !value.is_ascii() {
        return Err("non-ASCII characters: use the punycode (xn--) form".into());
    }
    let lower = value.to_ascii_lowercase();
    let name = lower.strip_suffix('.').unwrap_or(&lower);
    if name.is_empty() {
        return Err("empty name".into());
    }
    if name.len() > MAX_DOMAIN_BYTES {
        return Err(format!(
            "{} characters long, at most {MAX_DOMAIN_BYTES} allowed",
            name.len()
        ));
    }
    let mut labels = 0usize;
    let mut last = "";
    for label in name.split('.') {
        if label.is_empty() {
            return Err("empty label (two dots in a row, or a leading dot)".into());
        }
        if label.len() > MAX_LABEL_BYTES {
            return Err(format!(
                "label {label:?} is longer than {MAX_LABEL_BYTES} characters"
            ));
        }
        if let Some(c) = label
            .chars()
            .find(|&c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_'))
        {
            return Err(format!(
                "label {label:?} contains {c:?} (allowed: a-z, 0-9, '-', '_')"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("label {label:?} starts or ends with '-'"));
        }
        check_a_label(label)?;
        labels += 1;
        last = label;
    }
    if labels < 2 {
        return Err("needs at least two labels, like example.com".into());
    }
    if last.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("top-level label {last:?} is all digits"));
    }
    Ok(name.to_owned())
}

/// Why a URL with user information is refused, as a value and inside a STIX pattern.
const USER_INFORMATION: &str = "the URL carries user information (user:password@ before the \
                                host), which may be a credential; remove it before sharing";

/// `value` as a refusal may show it: the user information of a URL (what comes before
/// the last `@` of its authority, `user:password` or an access token) replaced by `***`,
/// so that a credential refused is not spread by the refusal itself, to logs or stored
/// statuses. A value without a scheme is read as if it began at the authority.
fn without_user_information(value: &str) -> Cow<'_, str> {
    let start = value.find("://").map_or(0, |at| at + 3);
    let authority_end = value[start..]
        .find(['/', '?', '#'])
        .map_or(value.len(), |at| start + at);
    match value[start..authority_end].rfind('@') {
        Some(at) => Cow::Owned(format!("{}***{}", &value[..start], &value[start + at..])),
        None => Cow::Borrowed(value),
    }
}

/// Splits `scheme://rest` when the scheme is well formed.
fn split_scheme(value: &str) -> Option<(&str, &str)> {
    let (scheme, rest) = value.split_once("://")?;
    let mut bytes = scheme.bytes();
    let first_ok = bytes.next().is_some_and(|b| b.is_ascii_alphabetic());
    let rest_ok = bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'.' | b'-'));
    (first_ok && rest_ok).then_some((scheme, rest))
}

fn normalise_url(value: &str) -> Result<String, String> {
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("contains whitespace or a control character".into());
    }
    if let Some(c) = value.chars().find(|&c| !c.is_ascii() && is_format_char(c)) {
        return Err(format!(
            "contains the invisible character U+{:04X} (percent-encode it)",
            u32::from(c)
        ));
    }
    let Some((scheme, rest)) = split_scheme(value) else {
        return Err("no scheme: expected scheme://host..., e.g. http://example.com/".into());
    };
    let scheme = scheme.to_ascii_lowercase();
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    // User information is refused rather than kept or dropped: it is often a password or
    // an access token (`https://user:secret@host/`, `https://<token>@host/`), and a sharing
    // tool must not pass credentials on. A URL that deceives with it
    // (`http://bank.example@evil.example/`) is published without it, or as the host.
    if authority.contains('@') {
        return Err(USER_INFORMATION.into());
    }
    let host_port = authority;
    let (host, port) = split_host_port(host_port)?;
    if host.is_empty() {
        return Err("no host".into());
    }
    if !host.is_ascii() {
        return Err("non-ASCII host: use the punycode (xn--) form".into());
    }
    let host = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(literal) => {
            let address = literal
                .parse::<Ipv6Addr>()
                .map_err(|_| format!("host [{}] is not an IPv6 address", shown(literal)))?;
            format!("[{address}]")
        }
        None => {
            let host = host.to_ascii_lowercase();
            for label in host.split('.') {
                check_a_label(label).map_err(|reason| format!("host: {reason}"))?;
            }
            host
        }
    };
    let port = match port {
        None | Some("") => None,
        Some(p) => {
            let number = p
                .bytes()
                .all(|b| b.is_ascii_digit())
                .then(|| p.parse::<u16>().ok())
                .flatten()
                .ok_or_else(|| format!("port {:?} is not a number from 0 to 65535", shown(p)))?;
            let default = matches!((scheme.as_str(), number), ("http", 80) | ("https", 443));
            (!default).then_some(p)
        }
    };
    let mut out = String::with_capacity(value.len());
    out.push_str(&scheme);
    out.push_str("://");
    out.push_str(&host);
    if let Some(port) = port {
        out.push(':');
        out.push_str(port);
    }
    out.push_str(tail);
    Ok(out)
}

/// Splits `host[:port]` or `[v6][:port]`.
fn split_host_port(host_port: &str) -> Result<(&str, Option<&str>), String> {
    if host_port.starts_with('[') {
        let Some(close) = host_port.find(']') else {
            return Err("unclosed '[' in the host".into());
        };
        let (host, after) = host_port.split_at(close + 1);
        return match after {
            "" => Ok((host, None)),
            _ => match after.strip_prefix(':') {
                Some(port) => Ok((host, Some(port))),
                None => Err("unexpected characters after ']' in the host".into()),
            },
        };
    }
    Ok(match host_port.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (host_port, None),
    })
}

/// Unicode format characters (general category Cf): zero-width spaces and joiners,
/// bidirectional controls, the byte-order mark, tags. They print as nothing, so two
/// values that differ only by them look the same to a reader, and a leading U+FEFF is
/// taken for a byte-order mark when a value is written into a file and read back.
/// None is ASCII (callers skip ASCII characters before asking).
fn is_format_char(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{0600}'..='\u{0605}'
            | '\u{061C}'
            | '\u{06DD}'
            | '\u{070F}'
            | '\u{0890}'..='\u{0891}'
            | '\u{08E2}'
            | '\u{180E}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{206F}'
            | '\u{FEFF}'
            | '\u{FFF9}'..='\u{FFFB}'
            | '\u{110BD}'
            | '\u{110CD}'
            | '\u{13430}'..='\u{1343F}'
            | '\u{1BCA0}'..='\u{1BCA3}'
            | '\u{1D173}'..='\u{1D17A}'
            | '\u{E0001}'
            | '\u{E0020}'..='\u{E007F}'
    )
}

fn normalise_email(value: &str) -> Result<String, String> {
    // A `mailto:` URI names one address: it is read as that address. Anything a mailto
    // URI may add (`?subject=`, several addresses) is refused below.
    let value = match value.get(..7) {
        Some(scheme) if scheme.eq_ignore_ascii_case("mailto:") => &value[7..],
        _ => value,
    };
    if value.contains('?') {
        return Err("a mailto: URI with header fields (?...): give the address alone".into());
    }
    let mut parts = value.split('@');
    let (Some(local), Some(domain), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err("expected exactly one '@'".into());
    };
    if local.is_empty() {
        return Err("empty local part (before '@')".into());
    }
    let chars = local.chars().count();
    if chars > MAX_LOCAL_PART {
        return Err(format!(
            "local part is {chars} characters long, at most {MAX_LOCAL_PART} allowed"
        ));
    }
    if local.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("local part contains whitespace or a control character".into());
    }
    if let Some(c) = local.chars().find(|&c| !c.is_ascii() && is_format_char(c)) {
        return Err(format!(
            "local part contains the invisible character U+{:04X}",
            u32::from(c)
        ));
    }
    let domain = normalise_domain(domain).map_err(|reason| format!("domain: {reason}"))?;
    Ok(format!("{}@{domain}", local.to_ascii_lowercase()))
}

/// Checks an `xn--` label (an IDNA A-label): its Punycode must decode, to a name that holds
/// at least one non-ASCII character and no control character. Other labels pass.
fn check_a_label(label: &str) -> Result<(), String> {
    let Some(encoded) = label
        .get(..4)
        .filter(|prefix| prefix.eq_ignore_ascii_case("xn--"))
        .map(|_| &label[4..])
    else {
        return Ok(());
    };
    let bad = |why: &str| format!("label {:?} is not valid punycode ({why})", shown(label));
    let decoded = punycode_decode(encoded).map_err(&bad)?;
    if decoded.is_ascii() {
        return Err(bad("it decodes to plain ASCII, which is never encoded"));
    }
    if decoded.chars().any(|c| c.is_control() || c == '.') {
        return Err(bad("it decodes to a control character or a dot"));
    }
    Ok(())
}

/// Decodes Punycode (RFC 3492, section 6.2) into the Unicode string it stands for.
fn punycode_decode(input: &str) -> Result<String, &'static str> {
    const BASE: u32 = 36;
    const T_MIN: u32 = 1;
    const T_MAX: u32 = 26;
    const SKEW: u32 = 38;
    const DAMP: u32 = 700;
    const INITIAL_BIAS: u32 = 72;
    const INITIAL_N: u32 = 0x80;

    fn adapt(mut delta: u32, points: u32, first: bool) -> u32 {
        delta /= if first { DAMP } else { 2 };
        delta += delta / points;
        let mut k = 0;
        while delta > ((BASE - T_MIN) * T_MAX) / 2 {
            delta /= BASE - T_MIN;
            k += BASE;
        }
        k + (BASE - T_MIN + 1) * delta / (delta + SKEW)
    }

    if input.is_empty() {
        return Err("empty after xn--");
    }
    let (basic, extended) = match input.rfind('-') {
        Some(at) => (&input[..at], &input[at + 1..]),
        None => ("", input),
    };
    if !basic.is_ascii() {
        return Err("non-ASCII characters");
    }
    let mut output: Vec<char> = basic.chars().collect();
    let mut n = INITIAL_N;
    let mut i: u32 = 0;
    let mut bias = INITIAL_BIAS;
    let mut digits = extended.bytes().peekable();
    if digits.peek().is_none() {
        return Err("no encoded characters");
    }
    while digits.peek().is_some() {
        let old_i = i;
        let mut w: u32 = 1;
        let mut k = BASE;
        loop {
            let byte = digits.next().ok_or("truncated")?;
            let digit = match byte {
                b'a'..=b'z' => u32::from(byte - b'a'),
                b'A'..=b'Z' => u32::from(byte - b'A'),
                b'0'..=b'9' => u32::from(byte - b'0') + 26,
                _ => return Err("a character that is not a punycode digit"),
            };
            i = digit
                .checked_mul(w)
                .and_then(|step| i.checked_add(step))
                .ok_or("overflow")?;
            let t = if k <= bias {
                T_MIN
            } else if k >= bias + T_MAX {
                T_MAX
            } else {
                k - bias
            };
            if digit < t {
                break;
            }
            w = w.checked_mul(BASE - t).ok_or("overflow")?;
            k += BASE;
        }
        let points = u32::try_from(output.len() + 1).map_err(|_| "overflow")?;
        bias = adapt(i - old_i, points, old_i == 0);
        n = n.checked_add(i / points).ok_or("overflow")?;
        i %= points;
        let c = char::from_u32(n).ok_or("not a Unicode scalar value")?;
        if output.len() >= MAX_LABEL_BYTES {
            return Err("too long");
        }
        output.insert(i as usize, c);
        i += 1;
    }
    Ok(output.into_iter().collect())
}

fn normalise_hash(name: &str, digits: usize, value: &str) -> Result<String, String> {
    if let Some((at, c)) = value
        .chars()
        .enumerate()
        .find(|(_, c)| !c.is_ascii_hexdigit())
    {
        return Err(format!("{c:?} at position {} is not a hex digit", at + 1));
    }
    if value.len() != digits {
        return Err(format!(
            "{name} has {digits} hex digits, got {}",
            value.len()
        ));
    }
    Ok(value.to_ascii_lowercase())
}

/// A STIX pattern is one or more observation expressions: a comparison in brackets, or
/// expressions grouped in parentheses, each perhaps followed by a qualifier (`WITHIN 300
/// SECONDS`, `REPEATS 2 TIMES`, `START t'…' STOP t'…'`), so it starts with `[` or `(` and
/// holds at least one bracketed comparison. It is kept as written.
fn check_pattern(value: &str) -> Result<String, String> {
    if !(value.starts_with('[') || value.starts_with('(')) || !value.contains(']') {
        return Err(
            "a STIX pattern starts with '[' or '(' and compares inside brackets ([...])".into(),
        );
    }
    if value.chars().any(char::is_control) {
        return Err("contains a control character".into());
    }
    Ok(value.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Indicator, ItemId, Revocation, Tlp};
    use IndicatorType::*;

    fn ok(ty: IndicatorType, raw: &str) -> String {
        match normalise(ty, raw) {
            Ok(v) => v,
            Err(e) => panic!("{raw:?} as {ty} rejected: {e}"),
        }
    }

    fn reason(ty: IndicatorType, raw: &str) -> String {
        match normalise(ty, raw) {
            Ok(v) => panic!("{raw:?} as {ty} accepted as {v:?}"),
            Err(e) => {
                assert_eq!(e.indicator_type, ty);
                e.reason
            }
        }
    }

    #[test]
    fn ipv4_canonical() {
        assert_eq!(ok(Ipv4, " 192.168.0.1\n"), "192.168.0.1");
        assert_eq!(ok(Ipv4, "0.0.0.0"), "0.0.0.0");
        assert_eq!(ok(Ipv4, "255.255.255.255"), "255.255.255.255");
    }

    #[test]
    fn ipv4_rejections_name_the_problem() {
        let r = reason(Ipv4, "1.2.3.256");
        assert!(r.contains("octet 4") && r.contains("256"), "{r}");
        let r = reason(Ipv4, "10.01.2.3");
        assert!(r.contains("octet 2") && r.contains("leading zero"), "{r}");
        assert!(reason(Ipv4, "1.2.3").contains("got 3 parts"));
        assert!(reason(Ipv4, "1.2.3.4.5").contains("got 5 parts"));
        assert!(reason(Ipv4, "1..3.4").contains("octet 2 is empty"));
        assert!(reason(Ipv4, "1.2.3.x").contains("not a decimal number"));
        assert!(reason(Ipv4, "1.2.3.+4").contains("not a decimal number"));
        assert!(reason(Ipv4, "1.2.3.99999999999999999999").contains("above 255"));
        assert_eq!(reason(Ipv4, "   "), "empty");
    }

    #[test]
    fn ipv6_canonical() {
        assert_eq!(ok(Ipv6, "2001:DB8:0:0:0:0:0:1"), "2001:db8::1");
        assert_eq!(
            ok(Ipv6, "2001:0db8:0000:0000:0001:0000:0000:0001"),
            "2001:db8::1:0:0:1"
        );
        assert_eq!(ok(Ipv6, "::1"), "::1");
        assert_eq!(ok(Ipv6, "::192.0.2.1"), "::c000:201");
        assert!(reason(Ipv6, "[2001:db8::1]").contains("brackets"));
        assert!(reason(Ipv6, "fe80::1%eth0").contains("zone"));
        assert!(reason(Ipv6, "2001:db8::g").contains("not an IPv6"));
        assert!(reason(Ipv6, "1.2.3.4").contains("not an IPv6"));
    }

    #[test]
    fn cidr_zeroes_host_bits() {
        assert_eq!(ok(Cidr, "10.1.2.3/8"), "10.0.0.0/8");
        assert_eq!(ok(Cidr, "192.168.1.7/32"), "192.168.1.7/32");
        assert_eq!(ok(Cidr, "1.2.3.4/8"), "1.0.0.0/8");
        assert_eq!(ok(Cidr, "2001:DB8:0:0:1::1/64"), "2001:db8::/64");
        assert_eq!(ok(Cidr, "2001:db8::1/128"), "2001:db8::1/128");
        assert_eq!(ok(Cidr, "2001:db8::1/16"), "2001::/16");
        assert!(reason(Cidr, "10.0.0.0/33").contains("above 32"));
        assert!(reason(Cidr, "::/129").contains("above 128"));
        assert!(reason(Cidr, "10.0.0.0/08").contains("leading zero"));
        assert!(reason(Cidr, "10.0.0.0/").contains("not a number"));
        assert!(reason(Cidr, "10.0.0.0").contains("address/prefix"));
        assert!(reason(Cidr, "10.0.0.0/8/9").contains("more than one"));
        assert!(reason(Cidr, "10.0.0.256/8").contains("octet 4"));
        assert!(reason(Cidr, "10.0.0.0/99999999999999").contains("above 32"));
    }

    #[test]
    fn domains() {
        assert_eq!(ok(Domain, "Example.COM."), "example.com");
        assert_eq!(ok(Domain, "xn--bcher-kva.example"), "xn--bcher-kva.example");
        assert_eq!(ok(Domain, "_dmarc.example.org"), "_dmarc.example.org");
        assert_eq!(ok(Domain, "a-b.c0.io"), "a-b.c0.io");
        assert!(reason(Domain, "bücher.example").contains("use the punycode (xn--) form"));
        assert!(reason(Domain, "example.com..").contains("empty label"));
        assert!(reason(Domain, ".example.com").contains("empty label"));
        assert!(reason(Domain, "localhost").contains("two labels"));
        assert!(reason(Domain, "-bad.example").contains("'-'"));
        assert!(reason(Domain, "bad-.example").contains("'-'"));
        assert!(reason(Domain, "ex ample.com").contains("' '"));
        assert!(reason(Domain, "1.2.3.4").contains("all digits"));
        let label = "a".repeat(64);
        assert!(reason(Domain, &format!("{label}.com")).contains("longer than 63"));
        let long = format!("{}.com", vec!["a".repeat(60); 5].join("."));
        assert!(reason(Domain, &long).contains("at most 253"));
        let max = format!("{}.{}", vec!["a".repeat(63); 3].join("."), "b".repeat(61));
        assert_eq!(max.len(), 253);
        assert_eq!(ok(Domain, &format!("{max}.")), max);
    }

    #[test]
    fn urls() {
        assert_eq!(
            ok(Url, "HTTP://Example.COM:80/Path?Q=A#F"),
            "http://example.com/Path?Q=A#F"
        );
        assert_eq!(ok(Url, "https://EXAMPLE.com:443"), "https://example.com");
        assert_eq!(
            ok(Url, "https://example.com:8443/x"),
            "https://example.com:8443/x"
        );
        assert_eq!(
            ok(Url, "http://example.com:443/"),
            "http://example.com:443/"
        );
        assert_eq!(ok(Url, "http://example.com:/a"), "http://example.com/a");
        assert_eq!(
            ok(Url, "ftp://Files.Example.com/a@b"),
            "ftp://files.example.com/a@b"
        );
        assert_eq!(
            ok(Url, "http://[2001:DB8::1]:80/x"),
            "http://[2001:db8::1]/x"
        );
        assert_eq!(
            ok(Url, "hxxp+s.x-y://h.example?a"),
            "hxxp+s.x-y://h.example?a"
        );
        assert_eq!(
            ok(Url, "http://1.2.3.4/a b".replace(' ', "%20").as_str()),
            "http://1.2.3.4/a%20b"
        );
        assert!(reason(Url, "example.com/path").contains("no scheme"));
        assert!(reason(Url, "1http://example.com").contains("no scheme"));
        assert!(reason(Url, "http://exa mple.com").contains("whitespace"));
        assert!(reason(Url, "http://example.com/\u{7}").contains("control"));
        assert!(reason(Url, "http:///path").contains("no host"));
        assert!(reason(Url, "http://example.com:99999/").contains("port"));
        assert!(reason(Url, "http://example.com:8x/").contains("port"));
        assert!(reason(Url, "http://[::1/").contains("unclosed"));
        assert!(reason(Url, "http://bücher.example/").contains("punycode"));
        let long = format!("http://example.com/{}", "a".repeat(MAX_VALUE_BYTES));
        assert!(reason(Url, &long).contains("at most 2048"));
    }

    #[test]
    fn emails() {
        assert_eq!(ok(Email, "John.Doe@Example.COM."), "john.doe@example.com");
        assert_eq!(
            ok(Email, "o'brien+tag@example.org"),
            "o'brien+tag@example.org"
        );
        assert!(reason(Email, "a@b@example.com").contains("exactly one"));
        assert!(reason(Email, "example.com").contains("exactly one"));
        assert!(reason(Email, "@example.com").contains("empty local part"));
        assert!(reason(Email, "a b@example.com").contains("whitespace"));
        assert!(reason(Email, "a@localhost").starts_with("domain:"));
        let local = "x".repeat(65);
        assert!(reason(Email, &format!("{local}@example.com")).contains("at most 64"));
    }

    #[test]
    fn invisible_characters_are_refused_in_emails_and_urls() {
        // Found by fuzzing (tests/fixtures/fuzz/list/): a local part starting with
        // U+FEFF was accepted, and read back from a list file as a byte-order mark.
        assert!(reason(Email, "\u{feff}abc@example.com").contains("U+FEFF"));
        for c in [
            '\u{200b}',
            '\u{200d}',
            '\u{202e}',
            '\u{2066}',
            '\u{e0041}',
            '\u{ad}',
        ] {
            assert!(reason(Email, &format!("a{c}b@example.com")).contains("invisible"));
            assert!(reason(Url, &format!("http://example.com/a{c}b")).contains("invisible"));
        }
        // Visible non-ASCII local parts and paths stay allowed.
        assert_eq!(ok(Email, "José@example.com"), "josé@example.com");
        assert_eq!(
            ok(Url, "http://example.com/café"),
            "http://example.com/café"
        );
    }

    #[test]
    fn hashes() {
        let md5 = "D41D8CD98F00B204E9800998ECF8427E";
        assert_eq!(ok(Md5, md5), md5.to_ascii_lowercase());
        assert_eq!(reason(Md5, &md5[..31]), "md5 has 32 hex digits, got 31");
        assert_eq!(
            reason(Sha1, "da39a3ee5e6b4b0d3255bfef95601890afd8070"),
            "sha1 has 40 hex digits, got 39"
        );
        assert_eq!(
            reason(Sha256, &"a".repeat(65)),
            "sha256 has 64 hex digits, got 65"
        );
        assert_eq!(ok(Sha256, &"AB".repeat(32)), "ab".repeat(32));
        let r = reason(Md5, "d41d8cd98f00b204e9800998ecf8427g");
        assert!(r.contains("'g'") && r.contains("position 32"), "{r}");
    }

    #[test]
    fn ipv4_mapped_addresses_are_ipv4_values() {
        for raw in ["::ffff:192.0.2.1", "::FFFF:192.0.2.1", "::ffff:c000:201"] {
            assert_eq!(ok(Ipv4, raw), "192.0.2.1", "{raw}");
            assert_eq!(
                normalise_typed(Ipv6, raw),
                Ok((Ipv4, "192.0.2.1".to_owned())),
                "{raw}"
            );
            let r = reason(Ipv6, raw);
            assert!(r.contains("IPv4 address 192.0.2.1"), "{r}");
            assert_eq!(detect_type(raw), Some(Ipv4), "{raw}");
        }
        assert_eq!(
            normalise_typed(Ipv6, "2001:db8::1"),
            Ok((Ipv6, "2001:db8::1".into()))
        );
        assert_eq!(
            normalise_typed(Ipv4, "192.0.2.1"),
            Ok((Ipv4, "192.0.2.1".into()))
        );
        assert!(reason(Ipv4, "2001:db8::1").contains("IPv4-mapped"));
        assert_eq!(ok(Cidr, "::ffff:192.0.2.0/120"), "192.0.2.0/24");
        assert_eq!(ok(Cidr, "::ffff:192.0.2.1/128"), "192.0.2.1/32");
        assert!(reason(Cidr, "::ffff:0:0/96").contains("too broad"));
    }

    #[test]
    fn overly_broad_networks_are_refused() {
        for raw in [
            "0.0.0.0/0",
            "1.2.3.4/0",
            "128.0.0.0/1",
            "10.0.0.0/7",
            "::/0",
            "2000::/3",
        ] {
            let r = reason(Cidr, raw);
            assert!(r.contains("too broad"), "{raw}: {r}");
            assert!(r.contains("at least /"), "{raw}: {r}");
        }
        assert!(reason(Cidr, "0.0.0.0/0").contains("0.0.0.0/0"));
        assert_eq!(ok(Cidr, "10.0.0.0/8"), "10.0.0.0/8");
        assert_eq!(ok(Cidr, "2001:db8::/16"), "2001::/16");
        assert!(reason(Cidr, "2001:db8::/15").contains("at least /16"));
        assert_eq!(detect_type("0.0.0.0/0"), None);
    }

    #[test]
    fn urls_with_credentials_are_refused() {
        for raw in [
            "https://user:pass@host.example/",
            "https://user@host.example/",
            "http://bank.example@evil.example/login",
            "ftp://:secret@files.example",
            "http://a:b@[2001:db8::1]:8080/",
        ] {
            let r = reason(Url, raw);
            assert!(r.contains("user information"), "{raw}: {r}");
        }
        assert_eq!(
            ok(Url, "https://host.example/p?next=a@b"),
            "https://host.example/p?next=a@b"
        );
    }

    #[test]
    fn a_refused_url_is_shown_without_its_user_information() {
        for (raw, shown) in [
            (
                "https://svc:Winter2026-Vault!@portal.example.com/login",
                "https://***@portal.example.com/login",
            ),
            ("https://token@host.example", "https://***@host.example"),
            (
                "http://a:b@c@[2001:db8::1]:8080/",
                "http://***@[2001:db8::1]:8080/",
            ),
            ("u:secret@host.example/x y", "***@host.example/x y"),
        ] {
            let e = normalise(Url, raw).unwrap_err();
            assert_eq!(e.value, shown, "{raw}");
            let text = e.to_string();
            assert!(
                !text.contains("secret") && !text.contains("Vault"),
                "{text}"
            );
            assert!(!text.contains("token@") && !text.contains("a:b"), "{text}");
        }
        // A refusal for another reason hides it as well; an '@' after the host stays.
        let e = normalise(Url, "https://u:pw@host.example/a b").unwrap_err();
        assert_eq!(e.value, "https://***@host.example/a b");
        let e = normalise(Url, "https://host.example/a@b c").unwrap_err();
        assert_eq!(e.value, "https://host.example/a@b c");
    }

    #[test]
    fn mailto_is_read_as_the_address() {
        assert_eq!(ok(Email, "mailto:a@b.example"), "a@b.example");
        assert_eq!(ok(Email, "MAILTO:A@B.Example"), "a@b.example");
        assert!(reason(Email, "mailto:a@b.example?subject=x").contains("header fields"));
        assert!(reason(Email, "mailto:a@b.example,c@d.example").contains("exactly one"));
        assert!(reason(Email, "mailto:").contains("exactly one"));
        assert_eq!(detect_type("mailto:a@b.example"), Some(Email));
    }

    #[test]
    fn invalid_punycode_is_refused() {
        assert_eq!(ok(Domain, "XN--BCHER-KVA.example"), "xn--bcher-kva.example");
        assert_eq!(ok(Domain, "xn--mnchen-3ya.de"), "xn--mnchen-3ya.de");
        assert_eq!(ok(Domain, "www.xn--fiqs8s"), "www.xn--fiqs8s");
        reason(Domain, "xn--.example");
        reason(Domain, "xn--abc-.example");
        for raw in [
            "xn--zz.example",
            "xn--a.example",
            "xn--99999999999.example",
            "www.xn--bcher-kva9999.example",
            "www.example.xn--abc",
        ] {
            let r = reason(Domain, raw);
            assert!(r.contains("not valid punycode"), "{raw}: {r}");
        }
        assert!(reason(Url, "https://xn--zz.example/").contains("punycode"));
        assert!(reason(Email, "a@xn--zz.example").contains("punycode"));
        assert_eq!(
            ok(Url, "https://XN--BCHER-KVA.example/x"),
            "https://xn--bcher-kva.example/x"
        );
        assert_eq!(punycode_decode("bcher-kva"), Ok("bücher".into()));
        assert_eq!(
            punycode_decode("ihqwcrb4cv8a8dqg056pqjye"),
            Ok("他们为什么不说中文".into())
        );
    }

    #[test]
    fn stix_patterns() {
        let p = "[ipv4-addr:value = '1.2.3.4' AND ipv4-addr:value = '5.6.7.8']";
        assert_eq!(ok(StixPattern, &format!("  {p} ")), p);
        assert!(reason(StixPattern, "ipv4-addr:value = '1.2.3.4'").contains("starts with '['"));
        assert!(reason(StixPattern, "[a]\n[b]").contains("control"));
        let long = format!("[{}]", "a".repeat(MAX_PATTERN_BYTES));
        assert!(reason(StixPattern, &long).contains("at most 4096"));
    }

    #[test]
    fn stix_patterns_with_qualifiers_and_groups_are_kept_as_written() {
        for p in [
            "[ipv4-addr:value = '1.2.3.4'] FOLLOWEDBY [domain-name:value = 'x.example'] WITHIN 300 SECONDS",
            "([file:name = 'a.exe'] OR [process:command_line LIKE '%a%']) REPEATS 2 TIMES",
            "[file:name = 'a.exe'] START t'2024-01-01T00:00:00Z' STOP t'2024-02-01T00:00:00Z'",
            "([ipv4-addr:value = '1.2.3.4'])",
        ] {
            assert_eq!(ok(StixPattern, p), p);
        }
        assert!(reason(StixPattern, "(a)").contains("starts with '['"));
        assert!(reason(StixPattern, "file:name = 'a' ]").contains("starts with '['"));
    }

    #[test]
    fn rejected_value_is_truncated() {
        let e = normalise(Domain, &"é".repeat(500)).expect_err("non-ASCII");
        assert_eq!(e.value.chars().count(), 100);
        let e = normalise(Md5, "abc").expect_err("short");
        assert_eq!(e.value, "abc");
        assert_eq!(
            e.to_string(),
            "invalid md5 value \"abc\": md5 has 32 hex digits, got 3"
        );
    }

    #[test]
    fn normal_forms_are_fixed_points() {
        let samples = [
            (Ipv4, "010.1.1.1"),
            (Ipv4, "8.8.8.8"),
            (Ipv6, "2001:DB8:0:0:0:0:0:1"),
            (Cidr, "10.1.2.3/8"),
            (Cidr, "2001:DB8::1/48"),
            (Domain, "WWW.Example.com."),
            (Url, "HTTPS://Example.com:443/A?b#c"),
            (Url, "http://XN--BCHER-KVA.example/"),
            (Ipv4, "::FFFF:192.0.2.1"),
            (Cidr, "::FFFF:192.0.2.1/120"),
            (Email, "MailTo:A@Example.com"),
            (Email, "A@Example.com"),
            (Md5, "D41D8CD98F00B204E9800998ECF8427E"),
            (StixPattern, " [x:y = 'z'] "),
        ];
        for (ty, raw) in samples {
            if let Ok(once) = normalise(ty, raw) {
                assert_eq!(ok(ty, &once), once, "{ty} {raw:?}");
            }
        }
    }

    #[test]
    fn odd_inputs_never_panic_and_normal_forms_are_stable() {
        let odd = [
            "",
            " ",
            "\u{0}",
            "é",
            "[",
            "]",
            "[]",
            "@",
            "@@",
            ":",
            "::",
            ":::",
            "/",
            "//",
            "%",
            "1.2.3.4/",
            "/8",
            "[::1]",
            "[::1]:80",
            "http://",
            "http://@",
            "http://:80",
            "http://[",
            "http://[]",
            "http://[::1]x",
            "a@",
            "@b.c",
            "a@b",
            "xn--",
            "-.-",
            "a.b.",
            "a..",
            ".",
            "..",
            "0.0.0.0/0",
            "::/0",
            "ffff::ffff/128",
            "é.com",
            "ab\u{200b}.com",
            "HTTP://X.EXAMPLE:0443/",
            "ftp://H:21",
            "1.2.3.4.",
            "١.٢.٣.٤",
            "0x7f.0.0.1",
            "01.1.1.1",
            "1e1.1.1.1",
            "[a] AND [b]",
            "d41d8cd98f00b204e9800998ecf8427é",
        ];
        for raw in odd {
            for ty in IndicatorType::ALL {
                if let Ok(once) = normalise(ty, raw) {
                    assert_eq!(normalise(ty, &once), Ok(once.clone()), "{ty} {raw:?}");
                }
            }
            if let Some(ty) = detect_type(raw) {
                assert!(IndicatorType::ALL.contains(&ty));
            }
        }
    }

    #[test]
    fn detects_types() {
        let cases = [
            ("1.2.3.4", Some(Ipv4)),
            ("1.2.3.256", Some(Ipv4)),
            ("2001:db8::1", Some(Ipv6)),
            ("10.0.0.0/8", Some(Cidr)),
            ("2001:db8::/32", Some(Cidr)),
            ("example.com/path", None),
            ("https://example.com/x", Some(Url)),
            ("user@example.com", Some(Email)),
            ("d41d8cd98f00b204e9800998ecf8427e", Some(Md5)),
            ("da39a3ee5e6b4b0d3255bfef95601890afd80709", Some(Sha1)),
            (
                "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                Some(Sha256),
            ),
            ("d41d8cd98f00b204e9800998ecf8427", None),
            ("[file:name = 'x']", Some(StixPattern)),
            ("Example.COM.", Some(Domain)),
            ("deadbeef.com", Some(Domain)),
            ("not a value", None),
            ("localhost", None),
            ("1.2.3", None),
            ("::g", None),
            ("", None),
        ];
        for (raw, want) in cases {
            assert_eq!(detect_type(raw), want, "{raw:?}");
        }
    }

    fn indicator(ty: IndicatorType, value: &str) -> Item {
        Item {
            id: ItemId::new_random(),
            modified_ms: 1_700_000_000_000,
            tlp: Tlp::Green,
            tags: vec!["source:honeypot".into()],
            kind: ItemKind::Indicator(Indicator {
                indicator_type: ty,
                value: value.into(),
                description: "seen scanning".into(),
                confidence: 80,
                kill_chain_phases: vec!["mitre-attack:reconnaissance".into()],
                valid_from_ms: 1_700_000_000_000,
                valid_until_ms: Some(1_800_000_000_000),
                properties: crate::model::StixProperties::none(),
            }),
        }
    }

    fn with_indicator(item: &mut Item, change: impl FnOnce(&mut Indicator)) {
        if let ItemKind::Indicator(i) = &mut item.kind {
            change(i);
        }
    }

    fn field_of(item: &Item) -> &'static str {
        match item.validate() {
            Err(ModelError::Field { field, .. }) => field,
            other => panic!("expected a field error, got {other:?}"),
        }
    }

    #[test]
    fn validate_accepts_good_items() {
        assert_eq!(indicator(Ipv4, "1.2.3.4").validate(), Ok(()));
        assert_eq!(indicator(Domain, "example.com").validate(), Ok(()));
        let revocation = Item {
            kind: ItemKind::Revocation(Revocation {
                indicator_type: Url,
                reason: "false positive".into(),
                indicator: None,
            }),
            ..indicator(Url, "http://x.example/")
        };
        assert_eq!(revocation.validate(), Ok(()));
    }

    #[test]
    fn validate_requires_normal_values() {
        let err = indicator(Domain, "Example.com")
            .validate()
            .expect_err("not normal");
        match err {
            ModelError::Value(v) => assert!(v.reason.contains("\"example.com\""), "{v}"),
            other => panic!("{other:?}"),
        }
        let err = indicator(Ipv4, "1.2.3.256")
            .validate()
            .expect_err("invalid");
        assert!(matches!(err, ModelError::Value(_)));
        assert!(err.to_string().contains("octet 4"));
    }

    #[test]
    fn validate_checks_fields() {
        let mut item = indicator(Ipv4, "1.2.3.4");
        with_indicator(&mut item, |i| i.description = "x".repeat(4097));
        assert_eq!(field_of(&item), "description");

        let mut item = indicator(Ipv4, "1.2.3.4");
        with_indicator(&mut item, |i| i.confidence = 101);
        assert_eq!(field_of(&item), "confidence");

        let mut item = indicator(Ipv4, "1.2.3.4");
        with_indicator(&mut item, |i| i.kill_chain_phases = vec!["k:p".into(); 33]);
        assert_eq!(field_of(&item), "kill_chain_phases");

        let mut item = indicator(Ipv4, "1.2.3.4");
        with_indicator(&mut item, |i| i.kill_chain_phases = vec!["p".repeat(129)]);
        assert_eq!(field_of(&item), "kill_chain_phases");

        let mut item = indicator(Ipv4, "1.2.3.4");
        with_indicator(&mut item, |i| i.valid_until_ms = Some(i.valid_from_ms));
        assert_eq!(field_of(&item), "valid_until");

        let mut item = indicator(Ipv4, "1.2.3.4");
        item.tags = vec!["t".into(); 33];
        assert_eq!(field_of(&item), "tags");
        for bad in ["", "two words", "tab\there", &"t".repeat(65)] {
            item.tags = vec![bad.to_owned()];
            assert_eq!(field_of(&item), "tags", "{bad:?}");
        }
        item.tags = vec!["t".repeat(64)];
        assert_eq!(item.validate(), Ok(()));

        let mut item = indicator(Ipv4, "1.2.3.4");
        item.modified_ms = 0;
        assert_eq!(field_of(&item), "modified");

        let item = Item {
            kind: ItemKind::Revocation(Revocation {
                indicator_type: Ipv4,
                reason: "r".repeat(1025),
                indicator: None,
            }),
            ..indicator(Ipv4, "1.2.3.4")
        };
        assert_eq!(field_of(&item), "reason");
    }
}
