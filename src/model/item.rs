//! Items: indicators and revocations, their TLP 2.0 markings, ids and normalised values.

use std::fmt;
use std::str::FromStr;

/// Why an item or one of its fields is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    /// An id is not `<type>--<uuid>` for a type the node shares.
    #[error(
        "invalid item id {0:?}: expected indicator--<uuid> or the id of a malware, threat-actor, intrusion-set, campaign, attack-pattern, tool, report, relationship, identity, vulnerability, course-of-action or sighting object"
    )]
    BadId(String),
    /// An unknown TLP marking.
    #[error("unknown TLP marking {0:?} (expected CLEAR, GREEN, AMBER, AMBER+STRICT or RED)")]
    BadTlp(String),
    /// An unknown indicator type.
    #[error("unknown indicator type {0:?}")]
    BadType(String),
    /// A value that does not parse as its type.
    #[error(transparent)]
    Value(#[from] InvalidValue),
    /// Any other field problem (too long, out of range, ...).
    #[error("{field}: {problem}")]
    Field {
        /// The field.
        field: &'static str,
        /// What is wrong.
        problem: String,
    },
}

/// A value that is not a valid indicator of its type, with the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {indicator_type} value {value:?}: {reason}")]
pub struct InvalidValue {
    /// The type it was checked against.
    pub indicator_type: IndicatorType,
    /// The value as given (truncated to a sensible length).
    pub value: String,
    /// Why it is invalid.
    pub reason: String,
}

/// TLP 2.0 marking, ordered from least to most restricted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tlp {
    /// TLP:CLEAR
    Clear,
    /// TLP:GREEN
    Green,
    /// TLP:AMBER
    Amber,
    /// TLP:AMBER+STRICT
    AmberStrict,
    /// TLP:RED
    Red,
}

/// Indicator types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IndicatorType {
    /// IPv4 address.
    Ipv4,
    /// IPv6 address.
    Ipv6,
    /// IPv4 or IPv6 network in CIDR notation.
    Cidr,
    /// Domain name.
    Domain,
    /// URL.
    Url,
    /// E-mail address.
    Email,
    /// MD5 file hash.
    Md5,
    /// SHA-1 file hash.
    Sha1,
    /// SHA-256 file hash.
    Sha256,
    /// Any other STIX 2.1 pattern, kept as written.
    StixPattern,
    /// A STIX `malware` object (context, not an indicator; so are the types below).
    Malware,
    /// A STIX `threat-actor` object.
    ThreatActor,
    /// A STIX `intrusion-set` object.
    IntrusionSet,
    /// A STIX `campaign` object.
    Campaign,
    /// A STIX `attack-pattern` object.
    AttackPattern,
    /// A STIX `tool` object.
    Tool,
    /// A STIX `report` object.
    Report,
    /// A STIX `relationship` object.
    Relationship,
    /// A STIX `identity` object (an organisation, a sector, a person).
    Identity,
    /// A STIX `vulnerability` object.
    Vulnerability,
    /// A STIX `course-of-action` object.
    CourseOfAction,
    /// A STIX `sighting` object.
    Sighting,
}

/// A UUID in version-4 form whose other 122 bits are the start of the SHA-256 digest of
/// `domain`, then each of `parts`, each preceded by a NUL byte: the same for the same
/// input, and valid where STIX asks for a version-4 UUID.
pub fn uuid_v4_form(domain: &str, parts: &[&str]) -> [u8; 16] {
    let mut input =
        Vec::with_capacity(domain.len() + parts.iter().map(|p| p.len() + 1).sum::<usize>());
    input.extend_from_slice(domain.as_bytes());
    for part in parts {
        input.push(0);
        input.extend_from_slice(part.as_bytes());
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, &input);
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest.as_ref()[..16]);
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    bytes
}

/// The STIX id of the `identity` object that defines the extensions exports use (the
/// Entente project): written by the export, never published.
pub const PROJECT_IDENTITY_ID: &str = "identity--d468fad8-6c8c-46cc-894e-a84f94ec07f2";

/// The STIX id of the `identity` object that stands for a node in exports: the same on
/// every node, in version-4 form like the ids of items ([`ItemId::derived`]).
pub fn origin_identity_id(node: &str) -> String {
    // Exports write it for every object, mostly for the same few nodes in a row: the
    // last one each thread worked out is kept.
    thread_local! {
        static LAST: std::cell::RefCell<(String, String)> =
            const { std::cell::RefCell::new((String::new(), String::new())) };
    }
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        if last.1.is_empty() || last.0 != node {
            let bytes = uuid_v4_form("entente/identity/v1", &[node]);
            *last = (
                node.to_owned(),
                format!("identity--{}", uuid::Uuid::from_bytes(bytes)),
            );
        }
        last.1.clone()
    })
}

/// Appends an id for each UUID written in `text` (36 characters with hyphens, any
/// case; hyphens written `%2D` or as a dash that looks like one count): under the type written just before it with `--`, when that is an indicator's
/// or a context object's type (any case); else as `indicator--<uuid>`, which stands for
/// the UUID alone. Whatever comes before does not matter, so a UUID is found however it
/// is written: in an id, bare, in a URL (its hyphens percent-encoded or not), or under
/// another type. Policy judges an id found here by the object held under its UUID,
/// whatever that object's type.
fn embedded_ids(text: &str, out: &mut Vec<ItemId>) {
    embedded_ids_as_written(text, out);
    // A URL may write a UUID's hyphens as `%2D`, which any server reads as `-`; a text
    // may write them as a dash that looks like one, which a reader copies as `-`; a
    // character that does not show (a zero-width space, a soft hyphen) written inside
    // a UUID leaves it as the reader sees it; and text shown as Markdown or HTML (as
    // threat intelligence platforms show descriptions) may write a hyphen as `\-` or
    // as a character reference (`&#45;`, `&#x2010;`, `&hyphen;`), shown as the dash.
    if text.contains("%2D")
        || text.contains("%2d")
        || text.contains(|c| is_look_alike_dash(c) || is_invisible(c))
        || text.contains("\\-")
        || text.contains("&#")
        || text.contains("&hyphen;")
        || text.contains("&dash;")
        || text.contains("&minus;")
    {
        let read: String = shown_dashes(text)
            // In kept properties (JSON text) the backslash is itself escaped.
            .replace("\\\\-", "-")
            .replace("\\-", "-")
            .replace("%2D", "-")
            .replace("%2d", "-")
            .replace(is_look_alike_dash, "-")
            .chars()
            .filter(|&c| !is_invisible(c))
            .collect();
        embedded_ids_as_written(&read, out);
    }
    embedded_ids_in_groups(text, out);
}

/// `text` with each HTML character reference of a hyphen or of a dash that looks like
/// one (`&#45;`, `&#x2D;`, `&#8208;`, `&hyphen;`, `&dash;`, `&minus;`) written as `-`.
fn shown_dashes(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('&') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        // The `;` is looked for in the next 11 bytes only, so that a text of many `&`
        // is read in linear time (`;` is one byte: any place found is a boundary).
        let reference = rest.as_bytes()[1..rest.len().min(12)]
            .iter()
            .position(|&b| b == b';')
            .map(|end| &rest[1..=end]);
        let dash = reference.is_some_and(|name| {
            let code = match name.strip_prefix('#') {
                Some(number) => match number.strip_prefix(['x', 'X']) {
                    Some(hex) => u32::from_str_radix(hex, 16).ok(),
                    None => number.parse::<u32>().ok(),
                },
                None => None,
            };
            match code {
                Some(code) => {
                    char::from_u32(code).is_some_and(|c| c == '-' || is_look_alike_dash(c))
                }
                None => matches!(name, "hyphen" | "dash" | "minus"),
            }
        });
        match reference {
            Some(name) if dash => {
                out.push('-');
                rest = &rest[name.len() + 2..];
            }
            _ => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Whether `c` is a character that does not show: one Unicode says is ignored when
/// displayed (format controls, joiners, the soft hyphen, variation selectors, fillers,
/// tags). Rule 7 reads UUIDs and `policy::admit` reads identity names without them.
pub fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{034F}'
            | '\u{061C}'
            | '\u{115F}'..='\u{1160}'
            | '\u{17B4}'..='\u{17B5}'
            | '\u{180B}'..='\u{180F}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}'
            | '\u{3164}'
            | '\u{FE00}'..='\u{FE0F}'
            | '\u{FEFF}'
            | '\u{FFA0}'
            | '\u{FFF0}'..='\u{FFF8}'
            | '\u{1BCA0}'..='\u{1BCA3}'
            | '\u{1D173}'..='\u{1D17A}'
            | '\u{E0000}'..='\u{E0FFF}'
    )
}

/// Whether `c` is a dash or minus sign that looks like `-` (Unicode's hyphens, dashes,
/// minus signs and their small and full-width forms).
fn is_look_alike_dash(c: char) -> bool {
    matches!(
        c,
        '\u{2010}'..='\u{2015}' | '\u{2212}' | '\u{2796}' | '\u{FE58}' | '\u{FE63}' | '\u{FF0D}'
    )
}

/// Most characters between two groups of a UUID written with separators other than a
/// hyphen (`_`, a space, a dot, a colon, a line break, two hyphens, an escaped hyphen).
const MAX_GROUP_SEPARATOR: usize = 8;

/// [`embedded_ids`] of UUIDs whose five groups of hex digits (8, 4, 4, 4 and 12) are each
/// a whole word (letters and digits), separated by 1 to [`MAX_GROUP_SEPARATOR`]
/// characters of anything else, escapes and character references included, with
/// characters that do not show left out ([`separators_read`]): as a reader sees them,
/// they are a UUID, whatever stands between the groups. Each stands
/// for the UUID alone (`indicator--<uuid>`). 32 digits in one word (an MD5 value) are no
/// UUID here.
fn embedded_ids_in_groups(text: &str, out: &mut Vec<ItemId>) {
    if text.bytes().filter(u8::is_ascii_hexdigit).count() < 32 {
        return;
    }
    // Plain ASCII text with nothing to read otherwise (most of what is judged: kept
    // properties, descriptions) is searched as it is, without a copy.
    let plain = text.is_ascii()
        && !text
            .bytes()
            .any(|b| matches!(b, b'\\' | b'%' | b'&' | b'<' | b'*' | b'~' | b'`'))
        && !text
            .as_bytes()
            .windows(2)
            .any(|pair| pair[0].is_ascii_whitespace() && pair[1].is_ascii_whitespace());
    if plain {
        uuids_in_groups(text, out);
        return;
    }
    // Emphasis marks of Markdown (`*`, `~`, `` ` ``) join what they stand in as shown,
    // or stand between groups: both readings are searched when there are any.
    uuids_in_groups(&separators_read(text, false), out);
    if text.contains(['*', '~', '`']) {
        uuids_in_groups(&separators_read(text, true), out);
    }
}

/// The UUIDs of [`embedded_ids_in_groups`] in `text` read by [`separators_read`].
fn uuids_in_groups(text: &str, out: &mut Vec<ItemId>) {
    const GROUPS: [usize; 5] = [8, 4, 4, 4, 12];
    // Words: maximal runs of ASCII letters and digits, as byte ranges.
    let bytes = text.as_bytes();
    let mut words: Vec<(usize, usize)> = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        if bytes[at].is_ascii_alphanumeric() {
            let start = at;
            while at < bytes.len() && bytes[at].is_ascii_alphanumeric() {
                at += 1;
            }
            words.push((start, at));
        } else {
            at += 1;
        }
    }
    let hex_word = |&(start, end): &(usize, usize), len: usize| {
        end - start == len && bytes[start..end].iter().all(u8::is_ascii_hexdigit)
    };
    for first in 0..words.len().saturating_sub(GROUPS.len() - 1) {
        let group = &words[first..first + GROUPS.len()];
        let shaped = group
            .iter()
            .zip(GROUPS)
            .all(|(word, len)| hex_word(word, len))
            && group.windows(2).all(|pair| {
                let gap = &text[pair[0].1..pair[1].0];
                (1..=MAX_GROUP_SEPARATOR).contains(&gap.chars().count())
            });
        if !shaped {
            continue;
        }
        let uuid: String = group
            .iter()
            .map(|&(start, end)| &text[start..end])
            .collect::<Vec<_>>()
            .join("-")
            .to_ascii_lowercase();
        if let Ok(id) = ItemId::parse(&format!("indicator--{uuid}")) {
            // Found already, under its type or as a UUID alone.
            if !out.iter().any(|held| held.uuid_bytes() == id.uuid_bytes()) {
                out.push(id);
            }
        }
    }
}

/// `text` as a reader sees what stands between a UUID's groups: a character that does
/// not show is left out; an escape whose letters would join the group after it (`\n`,
/// `\t`, `\r` and `\uXXXX` of JSON text, an HTML character reference such as
/// `&#45;` or `&nbsp;`, a percent-encoded character such as `%2D` or `%20`) is read as a
/// space, a separator like any other, and so is a run of white space; an HTML tag or
/// comment is left out, as a browser shows none; a hex digit written in another form
/// (full-width, mathematical, a Cyrillic or Greek look-alike) is read as the digit
/// ([`shown_as_ascii`]); with `drop_marks`, Markdown's emphasis marks are left out too.
fn separators_read(text: &str, drop_marks: bool) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    let hex = |c: Option<&char>| c.is_some_and(char::is_ascii_hexdigit);
    let space = |out: &mut String| {
        if !out.ends_with(' ') {
            out.push(' ');
        }
    };
    while let Some(&raw) = chars.get(at) {
        if is_invisible(raw) {
            at += 1;
            continue;
        }
        let c = shown_as_ascii(raw);
        // An HTML tag or comment inside a group (`<wbr>`, `<b></b>`, `<!-- -->`) is not
        // shown: left out.
        if c == '<' {
            let comment = chars[at..].starts_with(&['<', '!', '-', '-']);
            let (limit, close): (usize, &[char]) = if comment {
                (256, &['-', '-', '>'])
            } else {
                (64, &['>'])
            };
            let end = (at + 1..chars.len().min(at + limit))
                .take_while(|&k| comment || chars[k] != '<')
                .find(|&k| chars[k..].starts_with(close));
            if let Some(end) = end {
                at = end + close.len();
                continue;
            }
        }
        if drop_marks && matches!(c, '*' | '~' | '`') {
            at += 1;
            continue;
        }
        let skip = match c {
            '\\' => match chars.get(at + 1) {
                Some('n' | 't' | 'r') => 2,
                Some('u') if (2..6).all(|k| hex(chars.get(at + k))) => 6,
                _ => 1,
            },
            '%' if hex(chars.get(at + 1)) && hex(chars.get(at + 2)) => 3,
            '&' => {
                let end = (at + 1..chars.len().min(at + 12)).find(|&k| chars[k] == ';');
                match end {
                    Some(end)
                        if end > at + 1
                            && chars[at + 1..end]
                                .iter()
                                .all(|c| c.is_ascii_alphanumeric() || *c == '#') =>
                    {
                        end + 1 - at
                    }
                    _ => 1,
                }
            }
            c if c.is_whitespace() => 1,
            _ => 0,
        };
        if skip == 0 {
            out.push(c);
            at += 1;
        } else {
            space(&mut out);
            at += skip;
        }
    }
    out
}

/// The ASCII letter or digit a character is shown as, for the characters that write hex
/// digits in another form: full-width forms, mathematical digits, and Cyrillic and
/// Greek letters drawn as `A` to `F` (`а`, `В`, `с`, `е`, `Α`, `Β`, `Ε`, …) or as `0`
/// (`О`, `Ο`). Any other character is itself.
fn shown_as_ascii(c: char) -> char {
    let code = u32::from(c);
    match code {
        // Full-width ASCII.
        0xFF01..=0xFF5E => char::from_u32(code - 0xFEE0).unwrap_or(c),
        // Mathematical digits: five styles of ten.
        0x1D7CE..=0x1D7FF => char::from_u32(u32::from(b'0') + (code - 0x1D7CE) % 10).unwrap_or(c),
        _ => match c {
            'а' | 'α' => 'a',
            'Α' | 'А' => 'A',
            'Β' | 'В' => 'B',
            'с' | 'ϲ' => 'c',
            'С' | 'Ϲ' => 'C',
            'е' => 'e',
            'Ε' | 'Е' => 'E',
            'О' | 'Ο' | 'о' | 'ο' => '0',
            other => other,
        },
    }
}

/// [`embedded_ids`] in `text` as it is written.
fn embedded_ids_as_written(text: &str, out: &mut Vec<ItemId>) {
    const UUID_CHARS: usize = 36;
    /// A UUID's first hyphen is its ninth character.
    const FIRST_HYPHEN: usize = 8;
    let bytes = text.as_bytes();
    let mut from = 0;
    while let Some(found) = text.get(from..).and_then(|rest| rest.find('-')) {
        let hyphen = from + found;
        from = hyphen + 1;
        let Some(start) = hyphen.checked_sub(FIRST_HYPHEN) else {
            continue;
        };
        let Some(uuid) = text.get(start..start + UUID_CHARS) else {
            continue;
        };
        // The other hyphens first: most hyphens in text (dates, names) are not a UUID's.
        let hyphens = [13, 18, 23].iter().all(|&at| uuid.as_bytes()[at] == b'-');
        if !hyphens || uuid::Uuid::try_parse(uuid).is_err() {
            continue;
        }
        from = start + UUID_CHARS;
        let uuid = uuid.to_ascii_lowercase();
        let mut typed = false;
        if let Some(before) = start
            .checked_sub(2)
            .filter(|&at| &bytes[at..start] == b"--")
        {
            let types = std::iter::once("indicator").chain(
                IndicatorType::ALL
                    .into_iter()
                    .filter(|t| t.is_context())
                    .map(IndicatorType::as_str),
            );
            for ty in types {
                let Some(name) = before.checked_sub(ty.len()) else {
                    continue;
                };
                if bytes[name..before].eq_ignore_ascii_case(ty.as_bytes()) {
                    if let Ok(id) = ItemId::parse(&format!("{ty}--{uuid}")) {
                        out.push(id);
                        typed = true;
                    }
                }
            }
        }
        if !typed {
            if let Ok(id) = ItemId::parse(&format!("indicator--{uuid}")) {
                out.push(id);
            }
        }
    }
}

/// A STIX id, `<type>--<uuid>` in lower case: `indicator--` for indicators and their
/// revocations, the object's type for context objects.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ItemId(String);

/// An indicator of compromise.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Indicator {
    /// Its type.
    pub indicator_type: IndicatorType,
    /// The normalised value (or the STIX pattern for [`IndicatorType::StixPattern`]).
    pub value: String,
    /// Free text.
    pub description: String,
    /// 0 to 100.
    pub confidence: u8,
    /// Kill-chain phases, e.g. `mitre-attack:command-and-control`.
    pub kill_chain_phases: Vec<String>,
    /// Start of validity, milliseconds since the Unix epoch.
    pub valid_from_ms: i64,
    /// End of validity; past it the indicator is expired.
    pub valid_until_ms: Option<i64>,
    /// Every other STIX property it came with (`name`, `created`, ...), signed with it.
    pub properties: super::properties::StixProperties,
}

/// The withdrawal of an indicator by its origin. It carries the type of the
/// indicator it revokes (its item's TLP and tags are those of the indicator), so
/// policy judges it like the indicator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revocation {
    /// Type of the revoked indicator.
    pub indicator_type: IndicatorType,
    /// Why it is revoked.
    pub reason: String,
    /// The indicator as it stood when revoked (its last version), so that the revocation
    /// exports as a whole STIX indicator with `revoked: true`. Absent on revocations
    /// written before revocations carried it.
    pub indicator: Option<Box<Indicator>>,
}

/// A STIX object that gives indicators context: malware, a threat actor, an intrusion
/// set, a campaign, an attack pattern, a tool, a report, an identity, a vulnerability, a
/// course of action, a relationship between two of these or indicators, or a sighting
/// of one of them. Everything STIX says of it is kept in `properties`, except
/// what the model carries (its type, id, version, marking, labels, and the ids it
/// references, which policy reads).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContextObject {
    /// Its STIX type (one of the context types of [`IndicatorType`]).
    pub object_type: IndicatorType,
    /// The items it references: a relationship's `source_ref` and `target_ref`, in that
    /// order; a report's `object_refs`; a sighting's `sighting_of_ref`, then its
    /// `observed_data_refs` and `where_sighted_refs`; none for the other types (only ids
    /// of shared types count).
    pub refs: Vec<ItemId>,
    /// Its other STIX properties (`name`, `relationship_type`, `description`, ...).
    pub properties: super::properties::StixProperties,
}

/// What an item is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ItemKind {
    /// An indicator.
    Indicator(Indicator),
    /// A revocation of the indicator with the same id.
    Revocation(Revocation),
    /// A context object.
    Context(ContextObject),
}

/// The unit of sharing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    /// Stable id; a revocation has the id of the indicator it revokes.
    pub id: ItemId,
    /// Version: milliseconds since the Unix epoch, strictly increasing per id.
    pub modified_ms: i64,
    /// Its own marking.
    pub tlp: Tlp,
    /// Tags used by policies, e.g. `pii`, `source:honeypot`.
    pub tags: Vec<String>,
    /// Indicator or revocation.
    pub kind: ItemKind,
}

impl Tlp {
    /// Every marking, least restricted first.
    pub const ALL: [Tlp; 5] = [
        Tlp::Clear,
        Tlp::Green,
        Tlp::Amber,
        Tlp::AmberStrict,
        Tlp::Red,
    ];

    /// The TLP 2.0 spelling without the `TLP:` prefix.
    pub fn as_str(self) -> &'static str {
        match self {
            Tlp::Clear => "CLEAR",
            Tlp::Green => "GREEN",
            Tlp::Amber => "AMBER",
            Tlp::AmberStrict => "AMBER+STRICT",
            Tlp::Red => "RED",
        }
    }
}

impl FromStr for Tlp {
    type Err = ModelError;
    /// Accepts `GREEN`, `green`, `TLP:GREEN`, `amber+strict`, `amber_strict`, `WHITE` (TLP 1.0 for CLEAR).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let upper = s.trim().to_ascii_uppercase();
        let bare = upper.strip_prefix("TLP:").unwrap_or(&upper);
        match bare {
            "CLEAR" | "WHITE" => Ok(Tlp::Clear),
            "GREEN" => Ok(Tlp::Green),
            "AMBER" => Ok(Tlp::Amber),
            "AMBER+STRICT" | "AMBER_STRICT" | "AMBER-STRICT" => Ok(Tlp::AmberStrict),
            "RED" => Ok(Tlp::Red),
            _ => Err(ModelError::BadTlp(s.chars().take(64).collect())),
        }
    }
}

impl fmt::Display for Tlp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TLP:{}", self.as_str())
    }
}

impl IndicatorType {
    /// Every type: the indicator types, then the context object types.
    pub const ALL: [IndicatorType; 22] = [
        IndicatorType::Ipv4,
        IndicatorType::Ipv6,
        IndicatorType::Cidr,
        IndicatorType::Domain,
        IndicatorType::Url,
        IndicatorType::Email,
        IndicatorType::Md5,
        IndicatorType::Sha1,
        IndicatorType::Sha256,
        IndicatorType::StixPattern,
        IndicatorType::Malware,
        IndicatorType::ThreatActor,
        IndicatorType::IntrusionSet,
        IndicatorType::Campaign,
        IndicatorType::AttackPattern,
        IndicatorType::Tool,
        IndicatorType::Report,
        IndicatorType::Relationship,
        IndicatorType::Identity,
        IndicatorType::Vulnerability,
        IndicatorType::CourseOfAction,
        IndicatorType::Sighting,
    ];

    /// Whether this is a context object type rather than an indicator type.
    pub fn is_context(self) -> bool {
        matches!(
            self,
            IndicatorType::Malware
                | IndicatorType::ThreatActor
                | IndicatorType::IntrusionSet
                | IndicatorType::Campaign
                | IndicatorType::AttackPattern
                | IndicatorType::Tool
                | IndicatorType::Report
                | IndicatorType::Relationship
                | IndicatorType::Identity
                | IndicatorType::Vulnerability
                | IndicatorType::CourseOfAction
                | IndicatorType::Sighting
        )
    }

    /// The context object type of a STIX type name (`malware`, ...), if it is one.
    pub fn context_type(stix_type: &str) -> Option<IndicatorType> {
        IndicatorType::ALL
            .into_iter()
            .find(|t| t.is_context() && t.as_str() == stix_type)
    }

    /// The configuration and wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            IndicatorType::Ipv4 => "ipv4",
            IndicatorType::Ipv6 => "ipv6",
            IndicatorType::Cidr => "cidr",
            IndicatorType::Domain => "domain",
            IndicatorType::Url => "url",
            IndicatorType::Email => "email",
            IndicatorType::Md5 => "md5",
            IndicatorType::Sha1 => "sha1",
            IndicatorType::Sha256 => "sha256",
            IndicatorType::StixPattern => "stix-pattern",
            IndicatorType::Malware => "malware",
            IndicatorType::ThreatActor => "threat-actor",
            IndicatorType::IntrusionSet => "intrusion-set",
            IndicatorType::Campaign => "campaign",
            IndicatorType::AttackPattern => "attack-pattern",
            IndicatorType::Tool => "tool",
            IndicatorType::Report => "report",
            IndicatorType::Relationship => "relationship",
            IndicatorType::Identity => "identity",
            IndicatorType::Vulnerability => "vulnerability",
            IndicatorType::CourseOfAction => "course-of-action",
            IndicatorType::Sighting => "sighting",
        }
    }
}

impl FromStr for IndicatorType {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.trim().to_ascii_lowercase();
        IndicatorType::ALL
            .into_iter()
            .find(|t| t.as_str() == lower)
            .or(match lower.as_str() {
                "ip" | "ip4" | "ipv4-addr" => Some(IndicatorType::Ipv4),
                "ip6" | "ipv6-addr" => Some(IndicatorType::Ipv6),
                "domain-name" | "hostname" => Some(IndicatorType::Domain),
                "email-addr" => Some(IndicatorType::Email),
                "sha-1" => Some(IndicatorType::Sha1),
                "sha-256" => Some(IndicatorType::Sha256),
                "stix" | "pattern" => Some(IndicatorType::StixPattern),
                _ => None,
            })
            .ok_or_else(|| ModelError::BadType(s.chars().take(64).collect()))
    }
}

impl fmt::Display for IndicatorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl ItemId {
    /// A fresh random id (a version-4 UUID, as STIX asks of indicator ids).
    pub fn new_random() -> Self {
        Self(format!("indicator--{}", uuid::Uuid::new_v4()))
    }

    /// The id a node gives an indicator published without one: the same for the same
    /// origin, type and value, so that publishing a list again updates its indicators
    /// instead of adding new ones. It is a UUID in version-4 form (as STIX asks of
    /// indicator ids) whose other 122 bits are the start of the SHA-256 digest of the
    /// three, so no other origin's ids can collide with it by accident.
    pub fn derived(origin: &str, indicator_type: IndicatorType, value: &str) -> Self {
        Self::from_uuid_bytes(uuid_v4_form(
            "entente/item-id/v1",
            &[origin, indicator_type.as_str(), value],
        ))
    }

    /// The UUID as 16 bytes (the store's compact key; the store checks the whole id).
    pub fn uuid_bytes(&self) -> [u8; 16] {
        // An ItemId is only built from a parsed UUID, so this cannot fail.
        let uuid = self.0.split_once("--").map_or("", |(_, uuid)| uuid);
        uuid::Uuid::parse_str(uuid)
            .map(|u| *u.as_bytes())
            .unwrap_or_default()
    }

    /// The STIX type its prefix names (`indicator`, `malware`, ...).
    pub fn stix_type(&self) -> &str {
        self.0.split_once("--").map_or("", |(ty, _)| ty)
    }

    /// The id of a UUID given as 16 bytes.
    pub fn from_uuid_bytes(bytes: [u8; 16]) -> Self {
        Self(format!("indicator--{}", uuid::Uuid::from_bytes(bytes)))
    }

    /// Parses `<type>--<uuid>` (any case) for `indicator` and the context object types;
    /// the id is kept in lower case.
    pub fn parse(s: &str) -> Result<Self, ModelError> {
        let bad = || ModelError::BadId(s.chars().take(80).collect());
        let (ty, rest) = s.split_once("--").ok_or_else(bad)?;
        // Most ids are written in lower case already, and need no copy to be compared.
        let ty = if ty.bytes().any(|b| b.is_ascii_uppercase()) {
            std::borrow::Cow::Owned(ty.to_ascii_lowercase())
        } else {
            std::borrow::Cow::Borrowed(ty)
        };
        if ty != "indicator" && IndicatorType::context_type(&ty).is_none() {
            return Err(bad());
        }
        let uuid = uuid::Uuid::try_parse(rest).map_err(|_| bad())?;
        if rest.len() != 36 {
            return Err(bad());
        }
        // Thirty-six characters that parse are the hyphenated form; without capitals
        // it is already the canonical text.
        if s.len() == ty.len() + 2 + 36 && !s.bytes().any(|b| b.is_ascii_uppercase()) {
            return Ok(Self(s.to_owned()));
        }
        Ok(Self(format!("{ty}--{uuid}")))
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ItemId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Item {
    /// The indicator type (for a revocation, that of the indicator it revokes).
    pub fn indicator_type(&self) -> IndicatorType {
        match &self.kind {
            ItemKind::Indicator(i) => i.indicator_type,
            ItemKind::Revocation(r) => r.indicator_type,
            ItemKind::Context(c) => c.object_type,
        }
    }

    /// The ids a context object references (none for indicators and revocations).
    pub fn refs(&self) -> &[ItemId] {
        match &self.kind {
            ItemKind::Context(c) => &c.refs,
            _ => &[],
        }
    }

    /// Every other item this one names: its own references ([`Self::refs`]) first, then
    /// each UUID written anywhere in its kept STIX properties, its description, its
    /// value, its kill chain phases, its tags (STIX `labels`) or a revocation's reason
    /// (`sample_refs`, `x_` properties, free text, a string in a pattern, a label, ...),
    /// as an id or bare, each once, its own id and UUID left out. An export carries all
    /// of them, so the delivery rule judges the item by all of them: a UUID written
    /// outside its references is judged by the object held under it, whatever its type.
    pub fn referenced(&self) -> Vec<ItemId> {
        let mut out = self.refs().to_vec();
        let indicator = match &self.kind {
            ItemKind::Indicator(i) => Some(i),
            ItemKind::Revocation(r) => r.indicator.as_deref(),
            ItemKind::Context(_) => None,
        };
        match (&self.kind, indicator) {
            (ItemKind::Context(c), _) => embedded_ids(c.properties.as_str(), &mut out),
            (_, Some(i)) => {
                for text in [
                    i.properties.as_str(),
                    i.description.as_str(),
                    i.value.as_str(),
                ] {
                    embedded_ids(text, &mut out);
                }
                for phase in &i.kill_chain_phases {
                    embedded_ids(phase, &mut out);
                }
            }
            (_, None) => {}
        }
        if let ItemKind::Revocation(r) = &self.kind {
            embedded_ids(&r.reason, &mut out);
        }
        for tag in &self.tags {
            embedded_ids(tag, &mut out);
        }
        if out.is_empty() {
            return out;
        }
        // Its own id is left out, and among the ids written in it, any under its own
        // UUID (it would be judged by itself).
        let own = self.id.uuid_bytes();
        let ends = self.refs().len();
        let mut seen = std::collections::HashSet::with_capacity(out.len());
        let mut at = 0;
        out.retain(|id| {
            let structural = at < ends;
            at += 1;
            id != &self.id && (structural || id.uuid_bytes() != own) && seen.insert(id.clone())
        });
        out
    }

    /// The `created_by_ref` its kept STIX properties name, if any.
    pub fn created_by_ref(&self) -> Option<String> {
        let properties = match &self.kind {
            ItemKind::Indicator(i) => &i.properties,
            ItemKind::Revocation(r) => &r.indicator.as_deref()?.properties,
            ItemKind::Context(c) => &c.properties,
        };
        if !properties.as_str().contains("\"created_by_ref\"") {
            return None;
        }
        properties.string("created_by_ref")
    }

    /// Whether the item withdraws what it replaces: a revocation, or a context object's
    /// version with `revoked: true` (how STIX revokes one).
    pub fn withdraws(&self) -> bool {
        match &self.kind {
            ItemKind::Revocation(_) => true,
            ItemKind::Indicator(_) => false,
            // Read whole only when the kept properties name it (as `created_by_ref` is).
            ItemKind::Context(context) => {
                context.properties.as_str().contains("\"revoked\"")
                    && context.properties.to_map().get("revoked")
                        == Some(&serde_json::Value::Bool(true))
            }
        }
    }

    /// Whether an indicator is past its `valid_until` at `now_ms`. Revocations never expire here.
    pub fn is_expired(&self, now_ms: i64) -> bool {
        match &self.kind {
            ItemKind::Indicator(i) => i.valid_until_ms.is_some_and(|until| until <= now_ms),
            ItemKind::Revocation(_) | ItemKind::Context(_) => false,
        }
    }

    /// The types the delivery rule judges the item by: its type, or for a STIX pattern
    /// the types of the values it names, with `stix-pattern` too when any part of it is
    /// something else ([`super::observables`]). A revocation is judged like the
    /// indicator it carries.
    pub fn policy_types(&self) -> Vec<IndicatorType> {
        match self.pattern() {
            Some(pattern) => super::observables::observables(pattern).types(),
            None => vec![self.indicator_type()],
        }
    }

    /// The (type, value) pairs a STIX pattern item names, under which a query by value
    /// finds it besides its own value; empty for any other item.
    pub fn observed_values(&self) -> Vec<(IndicatorType, String)> {
        match self.pattern() {
            Some(pattern) => super::observables::observables(pattern).values,
            None => Vec::new(),
        }
    }

    /// The pattern of a `stix-pattern` indicator, or of the one a revocation carries.
    fn pattern(&self) -> Option<&str> {
        let indicator = match &self.kind {
            ItemKind::Indicator(i) => i,
            ItemKind::Revocation(r) => r.indicator.as_deref()?,
            ItemKind::Context(_) => return None,
        };
        (indicator.indicator_type == IndicatorType::StixPattern).then_some(&indicator.value)
    }

    /// The indicator value, when this is an indicator.
    pub fn value(&self) -> Option<&str> {
        match &self.kind {
            ItemKind::Indicator(i) => Some(&i.value),
            ItemKind::Revocation(_) | ItemKind::Context(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context(id: &str, refs: &[&str], properties: serde_json::Value) -> Item {
        let object = properties.as_object().cloned().unwrap_or_default();
        Item {
            id: ItemId::parse(id).unwrap(),
            modified_ms: 1,
            tlp: Tlp::Green,
            tags: vec![],
            kind: ItemKind::Context(ContextObject {
                object_type: IndicatorType::context_type(id.split_once("--").unwrap().0).unwrap(),
                refs: refs.iter().map(|r| ItemId::parse(r).unwrap()).collect(),
                properties: super::super::properties::StixProperties::keep_for(
                    super::super::properties::Holder::Context,
                    &object,
                )
                .unwrap(),
            }),
        }
    }

    #[test]
    fn ids_written_anywhere_in_the_properties_are_referenced() {
        const A: &str = "indicator--a1a1a1a1-0000-4000-8000-000000000001";
        const B: &str = "malware--a1a1a1a1-0000-4000-8000-000000000002";
        const C: &str = "attack-pattern--a1a1a1a1-0000-4000-8000-000000000003";
        const SELF: &str = "report--a1a1a1a1-0000-4000-8000-000000000009";
        let item = context(
            SELF,
            &[A],
            serde_json::json!({
                "object_refs": [A, "identity--a1a1a1a1-0000-4000-8000-000000000004"],
                "x_nested": { "deep": [format!("seen with x--{}", B.to_uppercase())] },
                "description": format!("{C}, and itself: {SELF}; not an id: indicator--1234"),
            }),
        );
        let referenced: Vec<String> = item.referenced().iter().map(|r| r.to_string()).collect();
        // Its own references first, then in the order of the canonical text (an identity
        // is a shared type too).
        assert_eq!(
            referenced,
            [A, C, "identity--a1a1a1a1-0000-4000-8000-000000000004", B]
        );
        // Nothing to find: nothing allocated, nothing referenced.
        let plain = context(B, &[], serde_json::json!({ "name": "x--y" }));
        assert!(plain.referenced().is_empty());
    }

    #[test]
    fn uuids_written_bare_in_urls_or_under_another_type_are_referenced() {
        const SELF: &str = "malware--a1a1a1a1-0000-4000-8000-000000000009";
        let item = context(
            SELF,
            &[],
            serde_json::json!({
                "description": "bare a1a1a1a1-0000-4000-8000-000000000001, own a1a1a1a1-0000-4000-8000-000000000009",
                "external_references": [{
                    "source_name": "x",
                    "url": "https://x.example/o/A1A1A1A1-0000-4000-8000-000000000002?v=1",
                }],
                "x_other": "x-custom--a1a1a1a1-0000-4000-8000-000000000003",
                "x_typed": "tool--a1a1a1a1-0000-4000-8000-000000000004",
                "x_not": "a1a1a1a1-0000-4000-8000-00000000000 and a1a1a1a1-0000-4000-8000",
            }),
        );
        let referenced: Vec<String> = item.referenced().iter().map(|r| r.to_string()).collect();
        // In the order of the canonical text (its names sorted); a UUID without an
        // indicator's or context object's type stands as `indicator--`; its own UUID
        // is left out.
        assert_eq!(
            referenced,
            [
                "indicator--a1a1a1a1-0000-4000-8000-000000000001",
                "indicator--a1a1a1a1-0000-4000-8000-000000000002",
                "indicator--a1a1a1a1-0000-4000-8000-000000000003",
                "tool--a1a1a1a1-0000-4000-8000-000000000004",
            ]
        );
    }

    #[test]
    fn uuids_written_with_look_alike_dashes_are_referenced() {
        let item = context(
            "malware--a1a1a1a1-0000-4000-8000-000000000009",
            &[],
            serde_json::json!({
                "description": "see a1a1a1a1\u{2010}0000\u{2011}4000\u{2013}8000\u{2212}000000000001",
                "x_wide": "tool\u{ff0d}\u{ff0d}a1a1a1a1\u{ff0d}0000\u{ff0d}4000\u{ff0d}8000\u{ff0d}000000000002",
                "x_own": "a1a1a1a1\u{2010}0000\u{2010}4000\u{2010}8000\u{2010}000000000009",
            }),
        );
        let referenced: Vec<String> = item.referenced().iter().map(|r| r.to_string()).collect();
        assert_eq!(
            referenced,
            [
                "indicator--a1a1a1a1-0000-4000-8000-000000000001",
                "tool--a1a1a1a1-0000-4000-8000-000000000002",
            ]
        );
    }

    #[test]
    fn uuids_written_with_other_separators_between_their_groups_are_referenced() {
        let item = context(
            "malware--a1a1a1a1-0000-4000-8000-000000000009",
            &[],
            serde_json::json!({
                "description": "see a1a1a1a1_0000_4000_8000_000000000001, a1a1a1a1 0000 4000 8000 000000000002",
                "x_dots": "a1a1a1a1.0000.4000.8000.000000000003 a1a1a1a1:0000:4000:8000:000000000004",
                "x_lines": "a1a1a1a1\t0000\n4000--8000 - 000000000005",
                "x_escaped": "a1a1a1a1\\u002d0000\\u002D4000\\u002d8000\\u002d000000000006",
                "x_md5": "d41d8cd98f00b204e9800998ecf8427e",
                "x_wide_gap": "a1a1a1a1 and then much more 0000-4000-8000-000000000007",
                "x_not_hex": "a1a1a1ag_0000_4000_8000_000000000008",
                // Two of the forms at once, or a separator escaped or encoded.
                "x_mixed": "a1a1\u{200b}a1a1_0000_4000_8000_00000000000a a1a1\u{ad}a1a1 0000 4000 8000 00000000000b",
                "x_html": "a1a1a1a1&#45;&#45;0000&nbsp;4000&#95;8000&#x2D;00000000000c",
                "x_percent": "a1a1a1a1 %2D 0000%204000%2d8000%5F00000000000d",
                // Drawn as the digits, or with markup a reader does not see.
                "x_drawn": "\u{430}1a1a1a1-\u{ff10}000-\u{1d7d2}000-8000-00000000000e",
                "x_markup": "a1a1<wbr>a1a1-0<b></b>000-40<!-- x -->00<span>-</span>8000-00000000000f",
                "x_marks": "a1a1**a1a1**-0000-4000-8000-000000000010",
                "x_indented": "a1a1a1a1-\n            0000-4000-8000-000000000011",
            }),
        );
        let mut referenced: Vec<String> = item.referenced().iter().map(|r| r.to_string()).collect();
        referenced.sort();
        let expected: Vec<String> = (1..=6)
            .chain(0xa..=0x11)
            .map(|n| format!("indicator--a1a1a1a1-0000-4000-8000-{n:012x}"))
            .collect();
        assert_eq!(referenced, expected);
    }

    #[test]
    fn uuids_written_with_characters_that_do_not_show_are_referenced() {
        let item = context(
            "malware--a1a1a1a1-0000-4000-8000-000000000009",
            &[],
            serde_json::json!({
                "description": "see a1a1a1a1-00\u{200b}00-4000-8000-000000000001",
                "x_joined": "tool--a1a1a1a1-0000-4000-80\u{2060}00-000000000002",
                "x_soft": "a1a1a1a1\u{ad}-0000-4000-8000-000000000003",
                "x_own": "a1a1a1a1-0000-4000-8000-00000000000\u{feff}9",
            }),
        );
        let referenced: Vec<String> = item.referenced().iter().map(|r| r.to_string()).collect();
        assert_eq!(
            referenced,
            [
                "indicator--a1a1a1a1-0000-4000-8000-000000000001",
                "tool--a1a1a1a1-0000-4000-8000-000000000002",
                "indicator--a1a1a1a1-0000-4000-8000-000000000003",
            ]
        );
    }

    #[test]
    fn uuids_written_with_markdown_escapes_or_character_references_are_referenced() {
        let item = context(
            "malware--a1a1a1a1-0000-4000-8000-000000000009",
            &[],
            serde_json::json!({
                "description": "see a1a1a1a1\\-0000\\-4000\\-8000\\-000000000001 and a1a1a1a1&#45;0000&#x2D;4000&#8208;8000&hyphen;000000000002",
                "x_html": "tool--a1a1a1a1&#X2d;0000&minus;4000&dash;8000&#0045;000000000003 &amp; &#46; &#x2e; &nothing",
            }),
        );
        let referenced: Vec<String> = item.referenced().iter().map(|r| r.to_string()).collect();
        assert_eq!(
            referenced,
            [
                "indicator--a1a1a1a1-0000-4000-8000-000000000001",
                "indicator--a1a1a1a1-0000-4000-8000-000000000002",
                "tool--a1a1a1a1-0000-4000-8000-000000000003",
            ]
        );
        assert_eq!(
            shown_dashes("a &amp; b &#45 c &#x2D; &"),
            "a &amp; b &#45 c - &"
        );
    }

    #[test]
    fn ids_written_in_labels_are_referenced() {
        const A: &str = "indicator--a1a1a1a1-0000-4000-8000-000000000001";
        let mut item = context(
            "malware--a1a1a1a1-0000-4000-8000-000000000002",
            &[],
            serde_json::json!({ "name": "loader" }),
        );
        item.tags = vec![A.to_owned()];
        assert_eq!(item.referenced(), vec![ItemId::parse(A).unwrap()]);
    }

    #[test]
    fn the_creator_is_read_from_the_kept_properties() {
        const B: &str = "malware--a1a1a1a1-0000-4000-8000-000000000002";
        let named = context(
            B,
            &[],
            serde_json::json!({ "created_by_ref": "identity--x" }),
        );
        assert_eq!(named.created_by_ref().as_deref(), Some("identity--x"));
        assert_eq!(
            context(B, &[], serde_json::json!({})).created_by_ref(),
            None
        );
        assert_eq!(
            origin_identity_id("redmond.hq"),
            origin_identity_id("redmond.hq")
        );
        assert_ne!(
            origin_identity_id("redmond.hq"),
            origin_identity_id("berlin.office")
        );
    }
}
