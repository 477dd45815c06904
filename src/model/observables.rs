//! The observable values a STIX pattern names. A pattern such as
//! `[ipv4-addr:value = '198.51.100.1' OR domain-name:value = 'c2.example']` is one
//! `stix-pattern` item, yet it is about an IPv4 address and a domain: queries by value
//! find it under each, and a partner's type policy judges it by every type it names.
//!
//! A pattern is read with the STIX patterning grammar ([`super::pattern_syntax`]), as
//! the tools that evaluate it read it. Its values are those of the equality comparisons
//! (`=`, `==`, `IN ( … )`, not negated) on the object paths of the typed indicators
//! ([`IndicatorType`] other than `stix-pattern`), each valid for that type. Every other
//! comparison (another path, another operator, a negation, a value that does not
//! parse) makes the pattern *opaque* in part: policy then also judges it as a
//! `stix-pattern`, and (`named`) by every typed type when the comparison compares a
//! string, a hex or binary literal, or a number on a custom path (`x-…`, `x_…`): what
//! such a value holds cannot be judged (an address in a header or in a regular
//! expression, a defanged domain, an address written in hex or as a number). `EXISTS`
//! and a comparison of a boolean, a timestamp or a number on a path STIX defines (a
//! size, a port) are about the typed objects they touch: the object the path starts from,
//! the objects its references lead to (`email-message:from_ref` an e-mail address,
//! `network-traffic:dst_ref` an address or a domain, a reference this does not know any
//! address or name), a hash named by algorithm. So a partner denied any type is sent a
//! pattern only when it compares nothing but typed values for equality (and booleans
//! or timestamps). Strings compared for equality on other paths that are typed values
//! are the pattern's values too, found by a query by value.
//! A comparison of `ipv6-addr:value` with an IPv4-mapped address names an IPv4 value
//! and the `ipv6` type both.
//!
//! A pattern the grammar refuses (a peer's, from a node that did not check patterns) is
//! opaque as a whole and names every typed type: what a STIX tool makes of it cannot be
//! told. Its values are still read, by a plain scan, for queries by value. This reads
//! patterns; it does not evaluate them.

use super::item::IndicatorType;
use super::pattern_syntax::{Comparison, Operator};
use super::value::normalise_typed;

/// Most observables taken from one pattern; a pattern naming more is opaque beyond them.
pub const MAX_OBSERVABLES: usize = 64;

/// What a pattern names.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observables {
    /// Each distinct (type, normalised value) compared for equality, in pattern order.
    pub values: Vec<(IndicatorType, String)>,
    /// Types the object paths of those comparisons name besides their values' own: `ipv6`
    /// for an IPv4-mapped address compared as `ipv6-addr:value` (its value is IPv4).
    pub also: Vec<IndicatorType>,
    /// Types of the typed objects the other comparisons touch (every typed type for a
    /// pattern the grammar refuses).
    pub named: Vec<IndicatorType>,
    /// Whether any part of the pattern is something else.
    pub opaque: bool,
}

impl Observables {
    /// The types policy judges the pattern by: those of its values and of their paths,
    /// and `stix-pattern` when any part is opaque or it names no value at all.
    pub fn types(&self) -> Vec<IndicatorType> {
        let mut types: Vec<IndicatorType> = Vec::new();
        for ty in self
            .values
            .iter()
            .map(|(ty, _)| ty)
            .chain(&self.also)
            .chain(&self.named)
        {
            if !types.contains(ty) {
                types.push(*ty);
            }
        }
        if self.opaque || types.is_empty() {
            types.push(IndicatorType::StixPattern);
        }
        types.sort_unstable();
        types
    }
}

/// Reads the observables of a STIX pattern.
pub fn observables(pattern: &str) -> Observables {
    match super::pattern_syntax::comparisons(pattern) {
        Ok(comparisons) => read(&comparisons),
        Err(_) => {
            let mut out = scanned(pattern);
            out.opaque = true;
            out.named = typed().collect();
            out
        }
    }
}

/// The types of the typed indicators (every indicator type but `stix-pattern`), which a
/// pattern the grammar refuses, or a comparison of data it cannot judge, is about. Taken
/// from [`IndicatorType::ALL`], so that a type added there is never left out here.
fn typed() -> impl Iterator<Item = IndicatorType> {
    IndicatorType::ALL
        .into_iter()
        .filter(|ty| !ty.is_context() && *ty != IndicatorType::StixPattern)
}

/// The types of the typed indicators whose values are addresses or names, which a
/// reference this does not know may lead to.
const ADDRESSES: [IndicatorType; 6] = [
    IndicatorType::Ipv4,
    IndicatorType::Ipv6,
    IndicatorType::Cidr,
    IndicatorType::Domain,
    IndicatorType::Url,
    IndicatorType::Email,
];

/// The observables of a pattern's comparisons, read by the grammar.
fn read(comparisons: &[Comparison]) -> Observables {
    let mut out = Observables::default();
    if comparisons.is_empty() {
        out.opaque = true;
    }
    for comparison in comparisons {
        if read_values(comparison, &mut out) {
            continue;
        }
        out.opaque = true;
        // What a string or a hex or binary literal compared otherwise holds cannot be
        // judged (an address in a header or a regular expression, a defanged domain, an
        // address in hex), nor a number on a custom path (an address as a number): the
        // pattern is about every typed type. EXISTS, a comparison of a boolean or a
        // timestamp, and one of a number on a path STIX defines (a size, a port) are
        // about the typed objects the path touches.
        let types: Vec<IndicatorType> =
            if comparison.carries_data || (comparison.numbers && custom(comparison)) {
                typed().collect()
            } else {
                touched(comparison)
            };
        for ty in types {
            if !out.named.contains(&ty) {
                out.named.push(ty);
            }
        }
        // Compared for equality, they are the pattern's values too, found by a query
        // by value.
        let equality = !comparison.negated
            && matches!(comparison.operator, Operator::Equal | Operator::In)
            && !comparison.other_literals;
        if equality {
            for found in typed_values(&comparison.strings) {
                if out.values.len() < MAX_OBSERVABLES && !out.values.contains(&found) {
                    out.values.push(found);
                }
            }
        }
    }
    out
}

/// Each (type, normalised value) that one of `strings` is a value of, as a typed
/// indicator would take it (a string may be the value of several types).
fn typed_values(strings: &[String]) -> Vec<(IndicatorType, String)> {
    let mut out: Vec<(IndicatorType, String)> = Vec::new();
    for text in strings {
        for ty in typed() {
            // A network is written with its length; an address alone is an address.
            if ty == IndicatorType::Cidr && !text.contains('/') {
                continue;
            }
            if let Ok(found) = normalise_typed(ty, text) {
                if !out.contains(&found) {
                    out.push(found);
                }
            }
        }
    }
    out
}

/// Takes the values of an equality comparison (`=`, `==`, `IN`, not negated) on the
/// path of a typed indicator into `out`, when each is valid for its type; `false` for
/// any other comparison.
fn read_values(comparison: &Comparison, out: &mut Observables) -> bool {
    let equality = !comparison.negated
        && matches!(comparison.operator, Operator::Equal | Operator::In)
        && !comparison.other_literals
        && !comparison.strings.is_empty();
    let Some(path_ty) = direct_type(comparison) else {
        return false;
    };
    if !equality {
        return false;
    }
    let mut found_all = Vec::with_capacity(comparison.strings.len());
    for text in &comparison.strings {
        let ty = match path_ty {
            IndicatorType::Ipv4 | IndicatorType::Ipv6 if text.contains('/') => IndicatorType::Cidr,
            other => other,
        };
        match normalise_typed(ty, text) {
            Ok(found) => found_all.push((ty, found)),
            Err(_) => return false,
        }
    }
    if out.values.len() + found_all.len() > MAX_OBSERVABLES {
        return false;
    }
    for (ty, found) in found_all {
        // An IPv4-mapped address is an IPv4 value, but the path still names an
        // `ipv6-addr` object.
        if ty == IndicatorType::Ipv6 && found.0 != ty && !out.also.contains(&ty) {
            out.also.push(ty);
        }
        if !out.values.contains(&found) {
            out.values.push(found);
        }
    }
    true
}

/// The type of a typed indicator whose object path `comparison` compares
/// (`ipv4-addr:value`, `file:hashes.'SHA-256'`, …), or `None`.
fn direct_type(comparison: &Comparison) -> Option<IndicatorType> {
    match (comparison.object_type.as_str(), &comparison.steps[..]) {
        ("ipv4-addr", [value]) if value == "value" => Some(IndicatorType::Ipv4),
        ("ipv6-addr", [value]) if value == "value" => Some(IndicatorType::Ipv6),
        ("domain-name", [value]) if value == "value" => Some(IndicatorType::Domain),
        ("url", [value]) if value == "value" => Some(IndicatorType::Url),
        ("email-addr", [value]) if value == "value" => Some(IndicatorType::Email),
        ("file", [hashes, name]) if hashes == "hashes" => hash_type(name),
        _ => None,
    }
}

/// The typed indicator type of a hash algorithm's name (`MD5`, `SHA-1`, `SHA-256`, in
/// any case, with or without the hyphen).
fn hash_type(name: &str) -> Option<IndicatorType> {
    match name.to_ascii_uppercase().replace('-', "").as_str() {
        "MD5" => Some(IndicatorType::Md5),
        "SHA1" => Some(IndicatorType::Sha1),
        "SHA256" => Some(IndicatorType::Sha256),
        _ => None,
    }
}

/// Whether a comparison's path is one STIX does not define: a custom object (`x-…`), a
/// custom property (`x_…`) or extension (`x-…`) on the way.
fn custom(comparison: &Comparison) -> bool {
    comparison.object_type.starts_with("x-")
        || comparison
            .steps
            .iter()
            .any(|step| step.starts_with("x_") || step.starts_with("x-"))
}

/// The typed types of the objects a comparison touches: the object its path starts
/// from, the objects its references lead to, and a hash its path names by algorithm
/// (whatever object holds it). A reference this does not know may lead to any object:
/// every address and name type.
fn touched(comparison: &Comparison) -> Vec<IndicatorType> {
    use IndicatorType::*;
    let mut out: Vec<IndicatorType> = Vec::new();
    let mut any = false;
    match comparison.object_type.as_str() {
        "ipv4-addr" => out.push(Ipv4),
        "ipv6-addr" => out.push(Ipv6),
        "domain-name" => out.push(Domain),
        "url" => out.push(Url),
        "email-addr" => out.push(Email),
        _ => {}
    }
    for step in &comparison.steps {
        if !(step.ends_with("_ref") || step.ends_with("_refs")) {
            continue;
        }
        match step.as_str() {
            // An e-mail message's addresses.
            "from_ref" | "sender_ref" | "to_refs" | "cc_refs" | "bcc_refs" => out.push(Email),
            // A connection's ends; what a domain resolves to.
            "src_ref" | "dst_ref" | "resolves_to_refs" => out.extend([Ipv4, Ipv6, Domain]),
            // Objects of no typed type (a user account, a directory, an artifact, an
            // autonomous system, a process, a connection), whose own references are
            // further steps.
            "belongs_to_ref"
            | "belongs_to_refs"
            | "creator_user_ref"
            | "parent_directory_ref"
            | "content_ref"
            | "raw_email_ref"
            | "body_raw_ref"
            | "src_payload_ref"
            | "dst_payload_ref"
            | "encapsulates_refs"
            | "encapsulated_by_ref"
            | "opened_connection_refs"
            | "image_ref"
            | "parent_ref"
            | "child_refs"
            | "message_body_data_ref" => {}
            _ => any = true,
        }
    }
    if let [.., hashes, name] = &comparison.steps[..] {
        if hashes == "hashes" {
            out.extend(hash_type(name));
        }
    }
    let addresses = out.contains(&Ipv4) || out.contains(&Ipv6);
    if addresses
        && (comparison.strings.iter().any(|s| s.contains('/'))
            || matches!(
                comparison.operator,
                Operator::IsSubset | Operator::IsSuperset
            ))
    {
        out.push(Cidr);
    }
    if any {
        out.extend(ADDRESSES);
    }
    out
}

/// Reads the observables of a pattern the grammar refuses, token by token, as the node
/// did before it checked patterns: for queries by value.
fn scanned(pattern: &str) -> Observables {
    let Some(tokens) = scan(pattern) else {
        return Observables {
            opaque: true,
            ..Observables::default()
        };
    };
    let mut out = Observables::default();
    let mut depth = 0usize;
    let mut i = 0;
    while i < tokens.len() {
        match &tokens[i] {
            // A comment (`/* … */`, `// …`), which STIX pattern parsers skip: what it
            // holds (a quote, a bracket) changes how the rest reads here, so the pattern
            // cannot be judged by what this reads of it.
            Token::Word(word) if word.contains("/*") || word.contains("//") => out.opaque = true,
            Token::Open => depth += 1,
            // A bracket closed that was not opened: what follows is outside every
            // observation as this reads it, so it cannot be judged.
            Token::Close if depth == 0 => out.opaque = true,
            Token::Close => depth -= 1,
            // Outside brackets come only operators and qualifiers (`WITHIN 300 SECONDS`,
            // `START t'…'`): anything else there (a path, a string, a bare name, a
            // look-alike of a bracket or a quote) is something this does not read.
            Token::Word(word) if depth == 0 && !between_observations(word) => {
                out.opaque = true;
            }
            Token::Text(_) if depth == 0 => out.opaque = true,
            Token::Word(word) if depth > 0 && word.contains(':') => {
                // A comparison: PATH [NOT] OPERATOR VALUE.
                let operator = tokens.get(i + 1);
                let value = tokens.get(i + 2);
                match (path_type(word), operator, value) {
                    (Some(ty), Some(Token::Word(op)), Some(Token::Text(text))) if op == "=" => {
                        let ty = match ty {
                            IndicatorType::Ipv4 | IndicatorType::Ipv6 if text.contains('/') => {
                                IndicatorType::Cidr
                            }
                            other => other,
                        };
                        match normalise_typed(ty, text) {
                            Ok(found) if out.values.len() < MAX_OBSERVABLES => {
                                // An IPv4-mapped address is an IPv4 value, but the path
                                // still names an `ipv6-addr` object.
                                if ty == IndicatorType::Ipv6
                                    && found.0 != ty
                                    && !out.also.contains(&ty)
                                {
                                    out.also.push(ty);
                                }
                                if !out.values.contains(&found) {
                                    out.values.push(found);
                                }
                            }
                            _ => out.opaque = true,
                        }
                        i += 3;
                        continue;
                    }
                    _ => out.opaque = true,
                }
            }
            // Inside brackets, between comparisons, come only `AND` and `OR`: anything
            // else (`NOT`, a string or a word that is no part of a comparison read) is
            // something this does not read.
            Token::Word(word)
                if depth > 0
                    && !word.eq_ignore_ascii_case("AND")
                    && !word.eq_ignore_ascii_case("OR") =>
            {
                out.opaque = true;
            }
            Token::Text(_) if depth > 0 => out.opaque = true,
            _ => {}
        }
        i += 1;
    }
    // A bracket left open: the same.
    if depth != 0 {
        out.opaque = true;
    }
    out
}

/// The first URL a STIX pattern compares whose user information may be a credential
/// (`https://user:password@host/`, `https://token@host/`), as written in the pattern, or
/// `None`. Every string the pattern compares counts, whatever the path and the operator:
/// each `scheme://` in it, and, on a `url` path, the string itself read as a URL even
/// without a scheme. User information made only of the wildcards and syntax of `LIKE`
/// and `MATCHES` (`%`, `_`, `.*`, `[^@]+`) names no one and is let through. A pattern
/// that does not scan is searched as text for every `scheme://`, so a quote or an escape
/// this does not read cannot hide one. This is a disclosure rule, not a reading: the
/// pattern is refused, not made opaque.
pub fn url_with_user_information(pattern: &str) -> Option<String> {
    let Some(tokens) = scan(pattern) else {
        return urls_with_scheme(pattern).next();
    };
    // Whether the comparison a string belongs to (the last path read) is on a `url`.
    let mut path_is_url = false;
    for token in &tokens {
        match token {
            Token::Word(word) if word.contains(':') && !word.starts_with("t'") => {
                path_is_url = word
                    .split_once(':')
                    .is_some_and(|(object, _)| object.eq_ignore_ascii_case("url"));
            }
            Token::Text(text) => {
                if path_is_url && !text.contains("://") && user_information(text).is_some() {
                    return Some(text.clone());
                }
                if let Some(url) = urls_with_scheme(text).next() {
                    return Some(url);
                }
            }
            _ => {}
        }
    }
    None
}

/// Each URL in `text` (from its `scheme://` to the next white space) whose authority
/// carries user information that may be a credential.
fn urls_with_scheme(text: &str) -> impl Iterator<Item = String> + '_ {
    text.match_indices("://").filter_map(move |(at, _)| {
        // Just after the last character before `://` that no scheme holds (which may
        // take more than one byte).
        let scheme_start = text[..at]
            .char_indices()
            .rev()
            .find(|&(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '.' | '-')))
            .map_or(0, |(before, c)| before + c.len_utf8());
        let rest = &text[at + 3..];
        let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        user_information(&rest[..end]).map(|_| text[scheme_start..at + 3 + end].to_owned())
    })
}

/// The user information of a URL (or of an authority, without a scheme) that may be a
/// credential: what comes before the last `@` of the authority, when it holds anything
/// but wildcards and regular-expression syntax.
fn user_information(url: &str) -> Option<&str> {
    let start = url.find("://").map_or(0, |at| at + 3);
    let rest = &url[start..];
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let user = &authority[..authority.rfind('@')?];
    let syntax = |c: char| "%_*.+?^$[](){}|\\:-,@".contains(c);
    (!user.chars().all(syntax)).then_some(user)
}

/// Whether a word may stand between observations: an operator, a qualifier's keyword, a
/// number (of seconds or times: digits, at most one point) or a timestamp
/// (`t'2016-06-01T00:00:00Z'`, fractions of a second allowed).
fn between_observations(word: &str) -> bool {
    const KEYWORDS: [&str; 9] = [
        "AND",
        "OR",
        "FOLLOWEDBY",
        "WITHIN",
        "SECONDS",
        "REPEATS",
        "TIMES",
        "START",
        "STOP",
    ];
    if KEYWORDS.iter().any(|k| word.eq_ignore_ascii_case(k)) {
        return true;
    }
    if let Some(stamp) = word.strip_prefix("t'").and_then(|w| w.strip_suffix('\'')) {
        return is_timestamp(stamp);
    }
    let number = word.strip_prefix('+').unwrap_or(word);
    let digits = |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit());
    match number.split_once('.') {
        Some((whole, fraction)) => (whole.is_empty() || digits(whole)) && digits(fraction),
        None => digits(number),
    }
}

/// Whether `text` has the shape of a STIX timestamp: `2016-06-01T00:00:00Z`, with a
/// fraction of a second or not.
fn is_timestamp(text: &str) -> bool {
    let bytes = text.as_bytes();
    if bytes.len() < 20 || bytes[bytes.len() - 1] != b'Z' {
        return false;
    }
    let shape_ok = bytes[..19].iter().enumerate().all(|(at, &b)| match at {
        4 | 7 => b == b'-',
        10 => b == b'T',
        13 | 16 => b == b':',
        _ => b.is_ascii_digit(),
    });
    let rest = &bytes[19..bytes.len() - 1];
    shape_ok
        && (rest.is_empty()
            || (rest[0] == b'.' && rest.len() > 1 && rest[1..].iter().all(u8::is_ascii_digit)))
}

/// The type of an object path this reads, or `None`.
fn path_type(path: &str) -> Option<IndicatorType> {
    let (object, property) = path.split_once(':')?;
    let object = object.to_ascii_lowercase();
    match (object.as_str(), property) {
        ("ipv4-addr", "value") => Some(IndicatorType::Ipv4),
        ("ipv6-addr", "value") => Some(IndicatorType::Ipv6),
        ("domain-name", "value") => Some(IndicatorType::Domain),
        ("url", "value") => Some(IndicatorType::Url),
        ("email-addr", "value") => Some(IndicatorType::Email),
        ("file", hash) => hash_type(hash.strip_prefix("hashes.")?.trim_matches('\'')),
        _ => None,
    }
}

/// One lexical unit of a pattern.
#[derive(Debug, PartialEq, Eq)]
enum Token {
    /// `[`, or `(` (grouping counts the same here).
    Open,
    /// `]` or `)`.
    Close,
    /// A string literal, unescaped.
    Text(String),
    /// Anything else: a path, an operator, a keyword, a number, a typed literal.
    Word(String),
}

/// Splits a pattern into tokens, or `None` when its quotes do not close or a string
/// holds an escape STIX does not define.
fn scan(pattern: &str) -> Option<Vec<Token>> {
    let mut tokens = Vec::new();
    let mut chars = pattern.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            '[' | '(' => {
                chars.next();
                tokens.push(Token::Open);
            }
            ']' | ')' => {
                chars.next();
                tokens.push(Token::Close);
            }
            '\'' => {
                chars.next();
                tokens.push(Token::Text(literal(&mut chars)?));
            }
            '=' | '!' | '<' | '>' => {
                let mut op = String::new();
                while let Some(&c) = chars.peek() {
                    if matches!(c, '=' | '!' | '<' | '>') {
                        op.push(c);
                        chars.next();
                    } else {
                        break;
                    }
                }
                tokens.push(Token::Word(op));
            }
            _ => {
                // A word; a quoted part inside it (`file:hashes.'SHA-256'`, `t'…'`)
                // belongs to it.
                let mut word = String::new();
                while let Some(&c) = chars.peek() {
                    if c.is_whitespace()
                        || matches!(c, '[' | ']' | '(' | ')' | '=' | '!' | '<' | '>')
                    {
                        break;
                    }
                    chars.next();
                    if c == '\'' {
                        word.push('\'');
                        word.push_str(&literal(&mut chars)?);
                        word.push('\'');
                    } else {
                        word.push(c);
                    }
                }
                tokens.push(Token::Word(word));
            }
        }
    }
    Some(tokens)
}

/// The rest of a string literal after its opening quote, unescaped (`\'` and `\\`), or
/// `None` when it does not close or holds another escape: STIX defines no other, and a
/// STIX lexer meeting one no longer reads the quote that opened the string as one, so
/// the quotes after it pair up otherwise than here.
fn literal(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Option<String> {
    let mut out = String::new();
    loop {
        match chars.next()? {
            '\\' => match chars.next()? {
                escaped @ ('\'' | '\\') => out.push(escaped),
                _ => return None,
            },
            '\'' => return Some(out),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use IndicatorType::*;

    /// Every typed type and `stix-pattern`, sorted as `Observables::types` gives them.
    fn every_type() -> Vec<IndicatorType> {
        let mut every: Vec<IndicatorType> = typed().collect();
        every.push(StixPattern);
        every.sort_unstable();
        every
    }

    fn values(pattern: &str) -> (Vec<(IndicatorType, &'static str)>, bool) {
        let found = observables(pattern);
        let leaked: Vec<(IndicatorType, &'static str)> = found
            .values
            .into_iter()
            .map(|(t, v)| (t, &*Box::leak(v.into_boxed_str())))
            .collect();
        (leaked, found.opaque)
    }

    #[test]
    fn comparisons_outside_balanced_brackets_make_a_pattern_opaque() {
        // A domain written after a stray `]`, outside every observation as brackets
        // count: a partner limited to IPv4 must not be judged on the address alone.
        for pattern in [
            "[ipv4-addr:value = '1.2.3.4']] domain-name:value = 'evil.example' []",
            "[ipv4-addr:value = '1.2.3.4'] domain-name:value = 'evil.example'",
            "[ipv4-addr:value = '1.2.3.4'] 'evil.example'",
            "[ipv4-addr:value = '1.2.3.4'] OR [domain-name:value = 'evil.example'",
        ] {
            let (found, opaque) = values(pattern);
            assert!(opaque, "{pattern}: {found:?}");
            assert!(
                observables(pattern)
                    .types()
                    .contains(&IndicatorType::StixPattern),
                "{pattern}"
            );
        }
        // Qualifiers outside brackets are read past.
        for pattern in [
            "[ipv4-addr:value = '1.2.3.4'] FOLLOWEDBY [domain-name:value = 'x.example'] WITHIN 300 SECONDS",
            "([ipv4-addr:value = '1.2.3.4'] OR [domain-name:value = 'x.example']) REPEATS 2 TIMES",
            "[ipv4-addr:value = '1.2.3.4'] START t'2024-01-01T00:00:00Z' STOP t'2024-02-01T00:00:00Z'",
        ] {
            let (found, opaque) = values(pattern);
            assert!(!opaque, "{pattern}: {found:?}");
            assert!(!found.is_empty(), "{pattern}");
        }
    }

    #[test]
    fn compound_patterns_name_each_value() {
        assert_eq!(
            values("[ipv4-addr:value = '113.10.246.30' OR domain-name:value = 'Evil.Example.']"),
            (
                vec![(Ipv4, "113.10.246.30"), (Domain, "evil.example")],
                false
            )
        );
        assert_eq!(
            values(
                "([ipv4-addr:value = '198.51.100.0/24'] OR [file:hashes.'SHA-256' = \
                 'E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855']) \
                 WITHIN 300 SECONDS"
            ),
            (
                vec![
                    (Cidr, "198.51.100.0/24"),
                    (
                        Sha256,
                        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
                    )
                ],
                false
            )
        );
        assert_eq!(
            observables("[url:value = 'http://a.example/' OR url:value = 'http://a.example/']")
                .values
                .len(),
            1
        );
    }

    #[test]
    fn anything_else_is_opaque() {
        for pattern in [
            "[file:name = 'x.exe']",
            "[ipv4-addr:value != '1.2.3.4']",
            "[domain-name:value NOT = 'a.example']",
            "[email-message:subject MATCHES '^x']",
            "[ipv4-addr:value = 'not an address']",
            "[ipv4-addr:value IN ('1.2.3.4', 'not an address')]",
            "[ipv4-addr:value NOT IN ('1.2.3.4', '5.6.7.8')]",
            "[ipv4-addr:value = '1.2.3.4' AND file:size > 10]",
        ] {
            let found = observables(pattern);
            assert!(found.opaque, "{pattern}");
            assert!(found.types().contains(&StixPattern), "{pattern}");
        }
        // Comments are skipped, as STIX tools skip them, quotes and brackets in them
        // included.
        for pattern in [
            "[ipv4-addr:value = '1.2.3.4' /* ' */ OR domain-name:value = 'x.example' /* ' */]",
            "[ipv4-addr:value = '1.2.3.4'] /* [ */ OR [domain-name:value = 'x.example'] /* ] */",
        ] {
            assert_eq!(
                values(pattern),
                (vec![(Ipv4, "1.2.3.4"), (Domain, "x.example")], false),
                "{pattern}"
            );
        }
        let half = observables("[ipv4-addr:value = '1.2.3.4' AND file:size > 10]");
        assert_eq!(half.types(), [Ipv4, StixPattern]);
        // What the grammar refuses is judged by every typed type.
        let every = every_type();
        for pattern in [
            "[a:b = 'unclosed]",
            "",
            "[ipv4-addr:value = '1.2.3.4' AND 'x' OR domain-name:value = 'y.example']",
        ] {
            assert!(observables(pattern).opaque, "{pattern}");
            assert_eq!(observables(pattern).types(), every, "{pattern}");
        }
    }

    #[test]
    fn a_typed_value_counts_whatever_path_compares_it() {
        for (pattern, about) in [
            ("[artifact:url = 'http://evil.example/payload.bin']", Url),
            (
                "[email-message:raw_email_ref.url = 'http://evil.example/mail.eml']",
                Url,
            ),
            (
                "[email-message:additional_header_fields.'Reply-To' = 'ceo@corp.example']",
                Email,
            ),
            (
                "[network-traffic:extensions.'http-request-ext'.request_header.Host = 'c2.evil.example']",
                Domain,
            ),
            (
                "[file:hashes.'sha_256' = 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855']",
                Sha256,
            ),
            (
                "[ipv6-addr:value IN ('2001:db8::9', 'ceo@corp.example')]",
                Email,
            ),
            ("[x-lea-target:address = '198.51.100.7']", Ipv4),
            ("[ipv6-addr:value != '::ffff:198.51.100.7']", Ipv4),
            (
                "[user-account:account_login MATCHES 'ceo@corp.example']",
                Email,
            ),
            ("[file:name = 'invoice.pdf']", Domain),
        ] {
            let found = observables(pattern);
            assert!(found.opaque, "{pattern}");
            assert!(found.types().contains(&about), "{pattern}: {found:?}");
        }
        // An IPv4-mapped address in a set too large to read as values.
        let many: Vec<String> = (0..70)
            .map(|n| format!("'::ffff:198.51.100.{n}'"))
            .collect();
        let pattern = format!("[ipv6-addr:value IN ({})]", many.join(", "));
        assert!(observables(&pattern).types().contains(&Ipv4));
        // Compared for equality, they are values, found by a query by value.
        assert!(
            observables("[email-message:from_ref.value = 'X@Corp.example']")
                .values
                .contains(&(Email, "x@corp.example".to_owned()))
        );
        assert!(
            observables("[email-message:from_ref.value != 'x@corp.example']")
                .values
                .is_empty()
        );
    }

    #[test]
    fn equality_is_read_in_every_form_the_grammar_gives_it() {
        for pattern in [
            "[email-addr:value = 'x@y.example']",
            "[email-addr:value == 'x@y.example']",
            "[email-addr : value = 'x@y.example']",
            "[email-addr:'value' = 'x@y.example']",
            "[email-addr:value IN ('x@y.example')]",
            "[ email-addr:value=/* a comment */'x@y.example' ]",
        ] {
            assert_eq!(
                values(pattern),
                (vec![(Email, "x@y.example")], false),
                "{pattern}"
            );
        }
        assert_eq!(
            values("[ipv4-addr:value IN ('1.2.3.4', '5.6.7.8', '10.0.0.0/8')]"),
            (
                vec![(Ipv4, "1.2.3.4"), (Ipv4, "5.6.7.8"), (Cidr, "10.0.0.0/8")],
                false
            )
        );
    }

    #[test]
    fn other_comparisons_are_about_every_type_unless_they_compare_no_data() {
        let every = every_type();
        // A string, a hex or binary literal, or a number on a custom path, compared
        // otherwise than as a typed value: what it holds cannot be judged.
        for pattern in [
            "[email-addr:value LIKE '%@corp.example']",
            "[email-addr:value != 'x@y.example']",
            "[email-addr:value NOT = 'x@y.example']",
            "[email-addr:display_name = 'J. Doe']",
            "[email-message:from_ref.value = 'x@y.example']",
            "[email-message:to_refs[*].value MATCHES '^x']",
            "[network-traffic:dst_ref.value = '198.51.100.1']",
            "[ipv4-addr:value ISSUBSET '10.0.0.0/8']",
            "[url:value LIKE 'http://%']",
            "[file:name = 'dropper']",
            "[process:command_line LIKE '%198.51.100.7%']",
            "[x-custom:peer_ref.value = 'x@y.example']",
            "[x-lea-target:address = 3325256711]",
            "[file:x_address = 3325256711]",
            "[artifact:payload_bin = b'Y2VvQGNvcnAuZXhhbXBsZQ==']",
            "[x-custom:blob = h'c6336407']",
        ] {
            let found = observables(pattern);
            assert!(found.opaque, "{pattern}");
            assert_eq!(found.types(), every, "{pattern}");
        }
        // EXISTS, booleans, timestamps, and numbers on paths STIX defines: the typed
        // objects the path touches.
        for (pattern, expected) in [
            ("[EXISTS email-addr:value]", vec![Email]),
            ("[EXISTS email-message:from_ref.value]", vec![Email]),
            (
                "[EXISTS network-traffic:dst_ref.value]",
                vec![Ipv4, Ipv6, Domain],
            ),
            ("[EXISTS x-custom:peer_ref.value]", ADDRESSES.to_vec()),
            ("[EXISTS artifact:hashes.'SHA-256']", vec![Sha256]),
            ("[network-traffic:dst_port = 443]", vec![]),
            (
                "[file:size > 1024 AND file:created > t'2020-01-01T00:00:00Z']",
                vec![],
            ),
            ("[email-message:is_multipart = true]", vec![]),
        ] {
            let found = observables(pattern);
            assert!(found.opaque, "{pattern}");
            let mut types = expected.clone();
            types.push(StixPattern);
            types.sort_unstable();
            types.dedup();
            assert_eq!(found.types(), types, "{pattern}");
        }
    }

    #[test]
    fn quotes_inside_values_and_paths_scan() {
        assert_eq!(
            values(
                "[url:value = 'http://x.example/it\\'s' AND file:hashes.MD5 = 'D41D8CD98F00B204E9800998ECF8427E']"
            ),
            (
                vec![
                    (Url, "http://x.example/it's"),
                    (Md5, "d41d8cd98f00b204e9800998ecf8427e")
                ],
                false
            )
        );
        let found = observables(
            "[ipv4-addr:value = '1.2.3.4'] START t'2016-06-01T00:00:00Z' STOP t'2016-07-01T00:00:00Z'",
        );
        assert_eq!(found.types(), [Ipv4]);
    }

    #[test]
    fn observables_are_bounded() {
        let many: Vec<String> = (0..100)
            .map(|i| format!("ipv4-addr:value = '10.0.0.{i}'"))
            .collect();
        let found = observables(&format!("[{}]", many.join(" OR ")));
        assert_eq!(found.values.len(), MAX_OBSERVABLES);
        assert!(found.opaque);
    }

    #[test]
    fn only_operators_and_qualifiers_stand_between_observations() {
        // Between observations STIX puts only operators and qualifiers. A name written
        // there (bare, with look-alike brackets, colon and quotes, or glued to a
        // timestamp) is no comparison a STIX parser reads, but it is a domain sent to
        // whoever receives the pattern: judged on the address alone, it reached a
        // partner allowed IPv4 addresses only.
        for pattern in [
            "[ipv4-addr:value = '198.51.100.1'] OR c2.evil.example",
            "[ipv4-addr:value = '198.51.100.1'] OR \u{ff3b}domain-name\u{ff1a}value \u{ff1d} \u{ff07}c2.evil.example\u{ff07}\u{ff3d}",
            "[ipv4-addr:value = '198.51.100.1'] WITHIN 300 SECONDS c2.evil.example",
            "[ipv4-addr:value = '198.51.100.1'] OR t'x'domain-name:value",
            "[ipv4-addr:value = '198.51.100.1'] START t'2016-01-01T00:00:00Z'domain-name:value STOP t'2016-02-01T00:00:00Z'",
            "[ipv4-addr:value = '198.51.100.1'] NOT [domain-name:value = 'c2.evil.example']",
            // An address is no number of seconds, nor a timestamp.
            "[domain-name:value = 'x.example'] WITHIN 198.51.100.1 SECONDS",
            "[domain-name:value = 'x.example'] START t'198.51.100.1' STOP t'2016-02-01T00:00:00Z'",
        ] {
            let found = observables(pattern);
            assert!(found.opaque, "{pattern}: {found:?}");
            assert!(found.types().contains(&StixPattern), "{pattern}");
        }
        for pattern in [
            "[ipv4-addr:value = '198.51.100.1'] FOLLOWEDBY [domain-name:value = 'x.example'] WITHIN 2.5 SECONDS",
            "([ipv4-addr:value = '198.51.100.1'] AND [domain-name:value = 'x.example']) REPEATS +2 TIMES",
            "[ipv4-addr:value = '198.51.100.1'] START t'2016-06-01T00:00:00.5Z' STOP t'2016-07-01T00:00:00Z'",
        ] {
            let found = observables(pattern);
            assert!(!found.opaque, "{pattern}: {found:?}");
        }
    }

    #[test]
    fn an_escape_stix_does_not_define_makes_a_pattern_opaque() {
        // STIX strings know `\'` and `\\` only. Read here as an escaped `q`, `\q` left
        // the quotes pairing as written; a STIX lexer takes the opening quote as a lone
        // one instead, so every quote after it pairs with the next: what was read here as
        // the second address's local part is, there, a domain comparison.
        let pattern = "[email-addr:value = 'a\\q@x.example' OR email-addr:value = \
                       ']OR[domain-name:value=\\'c2.evil.example\\'@a.example' OR \
                       email-addr:value = 'b@a.example']";
        let every = every_type();
        assert_eq!(observables(pattern).types(), every, "{pattern}");
        for pattern in [
            "[url:value = 'http://a.example/\\q']",
            "[file:hashes.'SHA\\-256' = 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855']",
        ] {
            assert_eq!(observables(pattern).types(), every, "{pattern}");
        }
        assert_eq!(
            observables("[url:value = 'http://a.example/it\\'s\\\\']").types(),
            [Url]
        );
    }

    #[test]
    fn a_character_of_several_bytes_before_a_scheme_is_read_past() {
        // A pattern that does not scan is searched as text: the scheme starts after the
        // last character no scheme holds, here one of two bytes.
        assert_eq!(
            url_with_user_information("[file:h//=x\\.'\u{17f}hh0-://\\x\\]@' ").as_deref(),
            Some("hh0-://\\x\\]@'")
        );
        assert_eq!(
            url_with_user_information("[x \\ '\u{17f}https://user:secret@host.example/ \\q']"),
            Some("https://user:secret@host.example/".to_owned())
        );
    }

    #[test]
    fn urls_with_user_information_are_found_wherever_a_pattern_compares_them() {
        let url = "https://u:secret@h.example/x";
        for (pattern, found) in [
            (
                format!("[url:value = '{url}'] OR [ipv4-addr:value = '1.2.3.4']"),
                url,
            ),
            (
                format!("[url:value IN ('https://a.example/', '{url}')]"),
                url,
            ),
            (
                format!("[file:name = 'x' AND url:value LIKE '{url}%']"),
                "https://u:secret@h.example/x%",
            ),
            (format!("[process:command_line = 'wget {url} -q']"), url),
            (
                "[url:value = 'tok3n@h.example/x']".to_owned(),
                "tok3n@h.example/x",
            ),
            // A pattern that does not scan is searched as text.
            (
                format!("[url:value = '{url}\\q'] OR [x:y = 'z']"),
                "https://u:secret@h.example/x\\q']",
            ),
            (
                "[url:value = 'https://u\\'s:pw@h.example/']".to_owned(),
                "https://u's:pw@h.example/",
            ),
        ] {
            assert_eq!(
                url_with_user_information(&pattern).as_deref(),
                Some(found),
                "{pattern}"
            );
        }
        for pattern in [
            "[url:value = 'https://h.example/a@b']",
            "[url:value LIKE 'https://%@h.example/%']",
            "[url:value MATCHES '^https?://.*@h\\\\.example/']",
            "[email-addr:value = 'a@h.example']",
            "[domain-name:value = 'h.example'] START t'2016-06-01T00:00:00Z' STOP t'2016-07-01T00:00:00Z'",
        ] {
            assert_eq!(url_with_user_information(pattern), None, "{pattern}");
        }
    }

    #[test]
    fn an_ipv4_mapped_address_compared_as_ipv6_is_judged_as_ipv6_too() {
        // The value is the IPv4 address (so a query for it finds the pattern), but the
        // pattern still names an `ipv6-addr` object: a partner allowed IPv4 addresses
        // only received it.
        for pattern in [
            "[ipv6-addr:value = '::ffff:198.51.100.1']",
            "[ipv6-addr:value = '::ffff:c633:6401' OR ipv4-addr:value = '198.51.100.1']",
        ] {
            let found = observables(pattern);
            assert_eq!(
                found.values,
                [(Ipv4, "198.51.100.1".to_owned())],
                "{pattern}"
            );
            assert_eq!(found.types(), [Ipv4, Ipv6], "{pattern}");
        }
        assert_eq!(
            observables("[ipv4-addr:value = '::ffff:198.51.100.1']").types(),
            [Ipv4]
        );
    }
}
