//! Whether a STIX 2.1 pattern is written in the STIX patterning language (STIX 2.1
//! part 9), so that an indicator the node takes in is exported as STIX that tools can
//! read. This checks the grammar and the few rules a conforming reader adds to it (one
//! qualifier of each kind on an observation, hash values of the length their algorithm
//! gives, object and property names in the form STIX names them); it does not
//! evaluate a pattern, and what the pattern is about is read by [`super::observables`].
//!
//! Checked against the OASIS validator (`stix2-validator` in strict mode, which parses
//! with the reference `stix2-patterns`) on thousands of generated patterns
//! (`tests/review_patterns.rs`): nothing accepted here is refused there. It is stricter
//! in a few ways: the object type and first property of an `EXISTS` path are held to the
//! naming rules a comparison's are; an MD6 value must have an MD6 length; a hash is
//! compared with one string only; no index follows `hashes`, and none is negative (the
//! reference validator fails on both).

use std::fmt;

use super::item::{IndicatorType, Item, ItemKind};

/// Deepest nesting of parentheses and brackets read; a pattern nested deeper is refused
/// rather than read by ever deeper recursion.
pub const MAX_NESTING: usize = 64;

/// Why a pattern is not valid STIX patterning, and where (a character offset).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PatternSyntaxError {
    /// Offset, in characters, of the token where reading stopped.
    pub at: usize,
    /// What was expected or what is wrong.
    pub problem: String,
}

impl fmt::Display for PatternSyntaxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the pattern is not valid STIX patterning: {} (at character {})",
            self.problem, self.at
        )
    }
}

/// Checks the pattern of an indicator kept as a pattern (`stix-pattern`); the node writes
/// the patterns of typed indicators itself. A revocation is not held to it, so that an
/// indicator taken in before this check can still be revoked.
pub fn check_item_pattern(item: &Item) -> Result<(), PatternSyntaxError> {
    match &item.kind {
        ItemKind::Indicator(indicator)
            if indicator.indicator_type == IndicatorType::StixPattern =>
        {
            check_pattern_syntax(&indicator.value)
        }
        _ => Ok(()),
    }
}

/// Checks `pattern` against the STIX 2.1 patterning grammar and its added rules.
pub fn check_pattern_syntax(pattern: &str) -> Result<(), PatternSyntaxError> {
    comparisons(pattern).map(drop)
}

/// The comparisons of a pattern that passes [`check_pattern_syntax`], in pattern order
/// (those of every observation, whatever joins them), or why it does not pass.
pub fn comparisons(pattern: &str) -> Result<Vec<Comparison>, PatternSyntaxError> {
    let tokens = lex(pattern)?;
    let mut parser = Parser {
        tokens: &tokens,
        at: 0,
        depth: 0,
        end: pattern.chars().count(),
        found: Vec::new(),
    };
    parser.observations()?;
    match parser.peek() {
        None => Ok(parser.found),
        Some(token) => Err(parser.error_at(
            token.at,
            format!(
                "{} where AND, OR or FOLLOWEDBY or the end was expected",
                token.kind.shown()
            ),
        )),
    }
}

/// One comparison of a pattern (`path [NOT] operator value`, or `EXISTS path`), as the
/// grammar reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Comparison {
    /// The object type the path starts from (`email-message` in
    /// `email-message:from_ref.value`).
    pub object_type: String,
    /// The path's steps after the type: each key as written (unquoted), `*` for `[*]`
    /// and `#` for an index (`["from_ref", "value"]`).
    pub steps: Vec<String>,
    /// What the path is compared by.
    pub operator: Operator,
    /// Whether `NOT` precedes the operator.
    pub negated: bool,
    /// The string literals compared with: one, or those of a set.
    pub strings: Vec<String>,
    /// Whether anything but a string literal is compared with (a number, a boolean, a
    /// hex, binary or timestamp literal).
    pub other_literals: bool,
    /// Whether a literal that may hold any data is compared with: a string, a hex or a
    /// binary literal.
    pub carries_data: bool,
    /// Whether a number is compared with.
    pub numbers: bool,
}

/// A comparison's operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operator {
    /// `=` or `==`.
    Equal,
    /// `!=` or `<>`.
    NotEqual,
    /// `<`, `<=`, `>`, `>=`.
    Order,
    /// `IN ( … )`.
    In,
    /// `LIKE`.
    Like,
    /// `MATCHES`.
    Matches,
    /// `ISSUBSET`.
    IsSubset,
    /// `ISSUPERSET`.
    IsSuperset,
    /// `EXISTS path`.
    Exists,
}

#[derive(Clone, Debug, PartialEq)]
enum Kind {
    /// A keyword: `AND`, `OR`, `NOT`, `FOLLOWEDBY`, `LIKE`, `MATCHES`, `ISSUPERSET`,
    /// `ISSUBSET`, `EXISTS`, `LAST`, `IN`, `START`, `STOP`, `SECONDS`, `WITHIN`,
    /// `REPEATS`, `TIMES`.
    Keyword(&'static str),
    Bool,
    /// A name: letters, digits and `_` (and `-` when `hyphen`), not starting with a digit.
    Name {
        text: String,
        hyphen: bool,
    },
    /// A string literal, unescaped.
    Text(String),
    PositiveInt,
    NegativeInt,
    PositiveFloat,
    NegativeFloat,
    Hex,
    Binary,
    Timestamp,
    /// `=` and `==` (`negated: false`), `!=` and `<>` (`negated: true`).
    Equality {
        negated: bool,
    },
    /// `<`, `<=`, `>`, `>=`.
    Order,
    Colon,
    Dot,
    Comma,
    OpenParen,
    CloseParen,
    OpenBracket,
    CloseBracket,
    Star,
    /// `+`, `-`, `^`, `/` standing alone: tokens of the grammar used by no rule.
    Unused(char),
}

impl Kind {
    fn shown(&self) -> String {
        match self {
            Kind::Keyword(word) => (*word).to_owned(),
            Kind::Bool => "a boolean".into(),
            Kind::Name { text, .. } => format!("{:?}", shorten(text)),
            Kind::Text(_) => "a string".into(),
            Kind::PositiveInt | Kind::NegativeInt => "an integer".into(),
            Kind::PositiveFloat | Kind::NegativeFloat => "a number".into(),
            Kind::Hex => "a hex literal".into(),
            Kind::Binary => "a binary literal".into(),
            Kind::Timestamp => "a timestamp".into(),
            Kind::Equality { .. } | Kind::Order => "a comparison operator".into(),
            Kind::Colon => "':'".into(),
            Kind::Dot => "'.'".into(),
            Kind::Comma => "','".into(),
            Kind::OpenParen => "'('".into(),
            Kind::CloseParen => "')'".into(),
            Kind::OpenBracket => "'['".into(),
            Kind::CloseBracket => "']'".into(),
            Kind::Star => "'*'".into(),
            Kind::Unused(c) => format!("'{c}'"),
        }
    }
}

/// At most 40 characters of `text`, for a message; shown with `{:?}`, which escapes
/// what does not print.
fn shorten(text: &str) -> String {
    text.chars().take(40).collect()
}

#[derive(Clone, Debug)]
struct Token {
    kind: Kind,
    /// Offset in characters.
    at: usize,
}

const KEYWORDS: [&str; 17] = [
    "AND",
    "OR",
    "NOT",
    "FOLLOWEDBY",
    "LIKE",
    "MATCHES",
    "ISSUPERSET",
    "ISSUBSET",
    "EXISTS",
    "LAST",
    "IN",
    "START",
    "STOP",
    "SECONDS",
    "WITHIN",
    "REPEATS",
    "TIMES",
];

/// White space the grammar skips.
fn is_space(c: char) -> bool {
    matches!(
        c,
        ' ' | '\t'
            | '\r'
            | '\n'
            | '\u{0B}'
            | '\u{0C}'
            | '\u{85}'
            | '\u{A0}'
            | '\u{1680}'
            | '\u{2000}'
            ..='\u{200A}' | '\u{2028}' | '\u{2029}' | '\u{202F}' | '\u{205F}' | '\u{3000}'
    )
}

fn lex(pattern: &str) -> Result<Vec<Token>, PatternSyntaxError> {
    let chars: Vec<char> = pattern.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    let error = |at: usize, problem: &str| PatternSyntaxError {
        at,
        problem: problem.to_owned(),
    };
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        let start = i;
        if is_space(c) {
            i += 1;
            continue;
        }
        // Comments are skipped, as the grammar does.
        if c == '/' && next == Some('*') {
            let close = (i + 2..chars.len().saturating_sub(1))
                .find(|&j| chars[j] == '*' && chars[j + 1] == '/')
                .ok_or_else(|| error(i, "a comment that is not closed"))?;
            i = close + 2;
            continue;
        }
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\r' && chars[i] != '\n' {
                i += 1;
            }
            continue;
        }
        let kind = match c {
            '\'' => {
                let (text, end) =
                    string_at(&chars, i).ok_or_else(|| error(i, "a string that is not closed"))?;
                i = end;
                Kind::Text(text)
            }
            'h' | 'b' | 't' if next == Some('\'') => {
                // A typed literal when the quoted text has its form; otherwise a name
                // (`h`) followed by a string, which no rule takes.
                match typed_literal(&chars, i) {
                    Some((kind, end)) => {
                        i = end;
                        kind
                    }
                    None => {
                        i += 1;
                        Kind::Name {
                            text: c.to_string(),
                            hyphen: false,
                        }
                    }
                }
            }
            c if c.is_ascii_alphabetic() || c == '_' => {
                let mut end = i + 1;
                while end < chars.len() && (chars[end].is_ascii_alphanumeric() || chars[end] == '_')
                {
                    end += 1;
                }
                let plain_end = end;
                while end < chars.len()
                    && (chars[end].is_ascii_alphanumeric()
                        || chars[end] == '_'
                        || chars[end] == '-')
                {
                    end += 1;
                }
                let text: String = chars[i..end].iter().collect();
                let plain: String = chars[i..plain_end].iter().collect();
                i = end;
                if end == plain_end {
                    if let Some(keyword) = KEYWORDS.iter().find(|k| **k == plain) {
                        Kind::Keyword(keyword)
                    } else if plain == "true" || plain == "false" {
                        Kind::Bool
                    } else {
                        Kind::Name {
                            text,
                            hyphen: false,
                        }
                    }
                } else {
                    Kind::Name { text, hyphen: true }
                }
            }
            c if c.is_ascii_digit() || c == '.' || c == '+' || c == '-' => {
                match number(&chars, i) {
                    Some((kind, end)) => {
                        i = end;
                        kind
                    }
                    None if c == '.' => {
                        i += 1;
                        Kind::Dot
                    }
                    None if c == '+' || c == '-' => {
                        i += 1;
                        Kind::Unused(c)
                    }
                    None => {
                        return Err(error(i, "a number that is not written as STIX writes one"));
                    }
                }
            }
            '=' => {
                i += if next == Some('=') { 2 } else { 1 };
                Kind::Equality { negated: false }
            }
            '!' if next == Some('=') => {
                i += 2;
                Kind::Equality { negated: true }
            }
            '<' if next == Some('>') => {
                i += 2;
                Kind::Equality { negated: true }
            }
            '<' | '>' => {
                i += if next == Some('=') { 2 } else { 1 };
                Kind::Order
            }
            ':' => {
                i += 1;
                Kind::Colon
            }
            ',' => {
                i += 1;
                Kind::Comma
            }
            '(' => {
                i += 1;
                Kind::OpenParen
            }
            ')' => {
                i += 1;
                Kind::CloseParen
            }
            '[' => {
                i += 1;
                Kind::OpenBracket
            }
            ']' => {
                i += 1;
                Kind::CloseBracket
            }
            '*' => {
                i += 1;
                Kind::Star
            }
            '^' | '/' => {
                i += 1;
                Kind::Unused(c)
            }
            other => {
                // Shown escaped unless plainly printable: a direction override or an
                // invisible character would otherwise reach logs and answers as is.
                let shown = if other.is_ascii_graphic() {
                    format!("'{other}'")
                } else {
                    format!("'{}'", other.escape_unicode())
                };
                return Err(PatternSyntaxError {
                    at: i,
                    problem: format!("{shown} is not part of the patterning language"),
                });
            }
        };
        tokens.push(Token { kind, at: start });
    }
    Ok(tokens)
}

/// A string literal starting at the quote at `i`: its unescaped text and the offset after
/// its closing quote. Inside, a backslash escapes only a quote or a backslash.
fn string_at(chars: &[char], i: usize) -> Option<(String, usize)> {
    let mut text = String::new();
    let mut j = i + 1;
    loop {
        match chars.get(j)? {
            '\'' => return Some((text, j + 1)),
            '\\' => match chars.get(j + 1)? {
                c @ ('\'' | '\\') => {
                    text.push(*c);
                    j += 2;
                }
                _ => return None,
            },
            c => {
                text.push(*c);
                j += 1;
            }
        }
    }
}

/// A hex (`h'…'`), binary (`b'…'`) or timestamp (`t'…'`) literal at `i`, if the quoted
/// text has the literal's form.
fn typed_literal(chars: &[char], i: usize) -> Option<(Kind, usize)> {
    let close = (i + 2..chars.len()).find(|&j| chars[j] == '\'')?;
    let body = &chars[i + 2..close];
    let fits = match chars[i] {
        'h' => body.len() % 2 == 0 && body.iter().all(char::is_ascii_hexdigit),
        'b' => is_base64(body),
        _ => is_timestamp(body),
    };
    let kind = match chars[i] {
        'h' => Kind::Hex,
        'b' => Kind::Binary,
        _ => Kind::Timestamp,
    };
    fits.then_some((kind, close + 1))
}

fn is_base64(body: &[char]) -> bool {
    let is_char = |c: &char| c.is_ascii_alphanumeric() || *c == '+' || *c == '/';
    if body.is_empty() || body.len() % 4 != 0 {
        return false;
    }
    let padding = body.iter().rev().take_while(|c| **c == '=').count();
    padding <= 2 && body[..body.len() - padding].iter().all(is_char)
}

/// `YYYY-MM-DDTHH:MM:SS[.s+]Z`, with the ranges the grammar gives each field.
fn is_timestamp(body: &[char]) -> bool {
    let text: String = body.iter().collect();
    let b = text.as_bytes();
    let digits = |range: std::ops::Range<usize>| {
        b.get(range.clone())
            .is_some_and(|d| d.iter().all(u8::is_ascii_digit))
            .then(|| text[range].parse::<u32>().ok())
            .flatten()
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' {
        return false;
    }
    if b[16] != b':' || b[b.len() - 1] != b'Z' {
        return false;
    }
    let (Some(_), Some(month), Some(day), Some(hour), Some(minute), Some(second)) = (
        digits(0..4),
        digits(5..7),
        digits(8..10),
        digits(11..13),
        digits(14..16),
        digits(17..19),
    ) else {
        return false;
    };
    let fraction = &b[19..b.len() - 1];
    let fraction_ok = fraction.is_empty()
        || (fraction.len() > 1
            && fraction[0] == b'.'
            && fraction[1..].iter().all(u8::is_ascii_digit));
    (1..=12).contains(&month)
        && (1..=31).contains(&day)
        && hour <= 23
        && minute <= 59
        && second <= 60
        && fraction_ok
}

/// A number at `i`: an integer (`0` or no leading zero) or a float (`[digits].digits`),
/// with an optional sign. `None` when none starts there.
fn number(chars: &[char], i: usize) -> Option<(Kind, usize)> {
    let negative = chars[i] == '-';
    let mut j = i;
    if chars[j] == '+' || chars[j] == '-' {
        j += 1;
    }
    let digits_from = |mut k: usize| {
        while k < chars.len() && chars[k].is_ascii_digit() {
            k += 1;
        }
        k
    };
    let int_end = digits_from(j);
    if chars.get(int_end) == Some(&'.') && chars.get(int_end + 1).is_some_and(char::is_ascii_digit)
    {
        let end = digits_from(int_end + 1);
        let kind = if negative {
            Kind::NegativeFloat
        } else {
            Kind::PositiveFloat
        };
        return Some((kind, end));
    }
    if int_end == j {
        return None;
    }
    // A leading zero stands alone: `007` is three integers, which no rule takes.
    let end = if chars[j] == '0' { j + 1 } else { int_end };
    let kind = if negative {
        Kind::NegativeInt
    } else {
        Kind::PositiveInt
    };
    Some((kind, end))
}

struct Parser<'a> {
    tokens: &'a [Token],
    at: usize,
    depth: usize,
    /// Length of the pattern in characters, where an unexpected end is reported.
    end: usize,
    /// The comparisons read so far.
    found: Vec<Comparison>,
}

/// The kinds of qualifier, at most one of each directly on one observation.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Qualifier {
    Within,
    Repeats,
    StartStop,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at)
    }

    fn next(&mut self) -> Option<&Token> {
        let token = self.tokens.get(self.at);
        self.at += 1;
        token
    }

    fn error_at(&self, at: usize, problem: String) -> PatternSyntaxError {
        PatternSyntaxError { at, problem }
    }

    /// An error at the current token, saying what was expected instead.
    fn expected(&self, what: &str) -> PatternSyntaxError {
        match self.peek() {
            Some(token) => self.error_at(
                token.at,
                format!("{what} was expected, not {}", token.kind.shown()),
            ),
            None => self.error_at(self.end, format!("{what} was expected before the end")),
        }
    }

    fn is_keyword(&self, word: &str) -> bool {
        matches!(self.peek(), Some(Token { kind: Kind::Keyword(k), .. }) if *k == word)
    }

    fn enter(&mut self) -> Result<(), PatternSyntaxError> {
        self.depth += 1;
        if self.depth > MAX_NESTING {
            return Err(self.expected(&format!(
                "nesting at most {MAX_NESTING} deep; something else"
            )));
        }
        Ok(())
    }

    /// Observation expressions joined by `AND`, `OR` or `FOLLOWEDBY`.
    fn observations(&mut self) -> Result<(), PatternSyntaxError> {
        loop {
            self.observation()?;
            if self.is_keyword("AND") || self.is_keyword("OR") || self.is_keyword("FOLLOWEDBY") {
                self.at += 1;
            } else {
                return Ok(());
            }
        }
    }

    /// `[ comparisons ]` or `( observations )`, then its qualifiers.
    fn observation(&mut self) -> Result<(), PatternSyntaxError> {
        let simple = match self.peek().map(|t| &t.kind) {
            Some(Kind::OpenBracket) => {
                self.at += 1;
                self.enter()?;
                self.comparisons()?;
                self.close(Kind::CloseBracket, "']' or AND or OR")?;
                true
            }
            Some(Kind::OpenParen) => {
                self.at += 1;
                self.enter()?;
                self.observations()?;
                self.close(Kind::CloseParen, "')' or AND, OR or FOLLOWEDBY")?;
                false
            }
            _ => return Err(self.expected("an observation ('[' or '(')")),
        };
        let mut seen: Vec<Qualifier> = Vec::new();
        loop {
            let at = self.peek().map_or(self.end, |t| t.at);
            let qualifier = if self.is_keyword("WITHIN") {
                self.at += 1;
                match self.next().map(|t| &t.kind) {
                    Some(Kind::PositiveInt | Kind::PositiveFloat) => {}
                    _ => {
                        self.at -= 1;
                        return Err(self.expected("a positive number of seconds after WITHIN"));
                    }
                }
                self.keyword("SECONDS")?;
                Qualifier::Within
            } else if self.is_keyword("REPEATS") {
                self.at += 1;
                match self.next().map(|t| &t.kind) {
                    Some(Kind::PositiveInt) => {}
                    _ => {
                        self.at -= 1;
                        return Err(self.expected("a positive integer after REPEATS"));
                    }
                }
                self.keyword("TIMES")?;
                Qualifier::Repeats
            } else if self.is_keyword("START") {
                self.at += 1;
                self.timestamp("START")?;
                self.keyword("STOP")?;
                self.timestamp("STOP")?;
                Qualifier::StartStop
            } else {
                return Ok(());
            };
            if simple && seen.contains(&qualifier) {
                return Err(self.error_at(
                    at,
                    "one observation has two qualifiers of the same kind".into(),
                ));
            }
            seen.push(qualifier);
        }
    }

    fn close(&mut self, kind: Kind, what: &str) -> Result<(), PatternSyntaxError> {
        if self.peek().map(|t| &t.kind) == Some(&kind) {
            self.at += 1;
            self.depth -= 1;
            Ok(())
        } else {
            Err(self.expected(what))
        }
    }

    fn keyword(&mut self, word: &str) -> Result<(), PatternSyntaxError> {
        if self.is_keyword(word) {
            self.at += 1;
            Ok(())
        } else {
            Err(self.expected(word))
        }
    }

    fn timestamp(&mut self, after: &str) -> Result<(), PatternSyntaxError> {
        if matches!(self.peek().map(|t| &t.kind), Some(Kind::Timestamp)) {
            self.at += 1;
            Ok(())
        } else {
            Err(self.expected(&format!("a timestamp (t'…Z') after {after}")))
        }
    }

    /// Comparisons joined by `AND` or `OR`, inside an observation's brackets.
    fn comparisons(&mut self) -> Result<(), PatternSyntaxError> {
        loop {
            self.comparison()?;
            if self.is_keyword("AND") || self.is_keyword("OR") {
                self.at += 1;
            } else {
                return Ok(());
            }
        }
    }

    /// `( comparisons )`, `EXISTS path`, or `path [NOT] operator value`.
    fn comparison(&mut self) -> Result<(), PatternSyntaxError> {
        if matches!(self.peek().map(|t| &t.kind), Some(Kind::OpenParen)) {
            self.at += 1;
            self.enter()?;
            self.comparisons()?;
            return self.close(Kind::CloseParen, "')' or AND or OR");
        }
        if self.is_keyword("EXISTS") {
            self.at += 1;
            let path = self.path()?;
            self.found.push(Comparison {
                object_type: path.object_type,
                steps: path.steps,
                operator: Operator::Exists,
                negated: false,
                strings: Vec::new(),
                other_literals: false,
                carries_data: false,
                numbers: false,
            });
            return Ok(());
        }
        let path = self.path()?;
        let negated = self.is_keyword("NOT");
        if negated {
            self.at += 1;
        }
        let operator = self.next().map(|t| t.kind.clone());
        let value_at = self.at;
        let operator = match operator {
            Some(Kind::Equality { negated }) => {
                self.primitive(true)?;
                if negated {
                    Operator::NotEqual
                } else {
                    Operator::Equal
                }
            }
            Some(Kind::Order) => {
                self.primitive(false)?;
                Operator::Order
            }
            Some(Kind::Keyword("IN")) => {
                self.set()?;
                Operator::In
            }
            Some(Kind::Keyword(word @ ("LIKE" | "MATCHES" | "ISSUBSET" | "ISSUPERSET"))) => {
                if !matches!(self.peek().map(|t| &t.kind), Some(Kind::Text(_))) {
                    return Err(self.expected("a string after the operator"));
                }
                self.at += 1;
                match word {
                    "LIKE" => Operator::Like,
                    "MATCHES" => Operator::Matches,
                    "ISSUBSET" => Operator::IsSubset,
                    _ => Operator::IsSuperset,
                }
            }
            _ => {
                self.at -= 1;
                return Err(self.expected("a comparison operator"));
            }
        };
        // What the comparison compares a hash with: every token of the value.
        let value = &self.tokens[value_at..self.at];
        check_hash(&path, value, value_at_offset(self, value_at))?;
        let mut strings = Vec::new();
        let mut other_literals = false;
        let mut carries_data = false;
        let mut numbers = false;
        for token in value {
            match &token.kind {
                Kind::Text(text) => {
                    strings.push(text.clone());
                    carries_data = true;
                }
                Kind::OpenParen | Kind::CloseParen | Kind::Comma => {}
                Kind::Bool | Kind::Timestamp => other_literals = true,
                Kind::PositiveInt
                | Kind::NegativeInt
                | Kind::PositiveFloat
                | Kind::NegativeFloat => {
                    other_literals = true;
                    numbers = true;
                }
                _ => {
                    other_literals = true;
                    carries_data = true;
                }
            }
        }
        self.found.push(Comparison {
            object_type: path.object_type,
            steps: path.steps,
            operator,
            negated,
            strings,
            other_literals,
            carries_data,
            numbers,
        });
        Ok(())
    }

    /// A literal: a string, number, hex, binary, timestamp, or (for equality) a boolean.
    fn primitive(&mut self, boolean: bool) -> Result<(), PatternSyntaxError> {
        match self.peek().map(|t| &t.kind) {
            Some(
                Kind::Text(_)
                | Kind::PositiveInt
                | Kind::NegativeInt
                | Kind::PositiveFloat
                | Kind::NegativeFloat
                | Kind::Hex
                | Kind::Binary
                | Kind::Timestamp,
            ) => {
                self.at += 1;
                Ok(())
            }
            Some(Kind::Bool) if boolean => {
                self.at += 1;
                Ok(())
            }
            _ => Err(self.expected(if boolean {
                "a value (a quoted string, a number, true or false, h'…', b'…' or t'…')"
            } else {
                "a value that has an order (a quoted string, a number, h'…', b'…' or t'…')"
            })),
        }
    }

    /// `( )` or `( value, … )`.
    fn set(&mut self) -> Result<(), PatternSyntaxError> {
        if !matches!(self.peek().map(|t| &t.kind), Some(Kind::OpenParen)) {
            return Err(self.expected("a set of values in '(' ')' after IN"));
        }
        self.at += 1;
        if matches!(self.peek().map(|t| &t.kind), Some(Kind::CloseParen)) {
            self.at += 1;
            return Ok(());
        }
        loop {
            self.primitive(true)?;
            match self.next().map(|t| &t.kind) {
                Some(Kind::Comma) => {}
                Some(Kind::CloseParen) => return Ok(()),
                _ => {
                    self.at -= 1;
                    return Err(self.expected("',' or ')' in the set"));
                }
            }
        }
    }

    /// `type:property` then `.key`, `.'key'`, `[index]` or `[*]` steps.
    fn path(&mut self) -> Result<Path, PatternSyntaxError> {
        let start = self.peek().map_or(self.end, |t| t.at);
        let object_type = match self.next().map(|t| &t.kind) {
            Some(Kind::Name { text, .. }) => text.clone(),
            _ => {
                self.at -= 1;
                return Err(self.expected("an object path (type:property)"));
            }
        };
        if !matches!(self.next().map(|t| &t.kind), Some(Kind::Colon)) {
            self.at -= 1;
            return Err(self.expected("':' after the object type"));
        }
        let first = match self.next().map(|t| &t.kind) {
            Some(Kind::Name {
                text,
                hyphen: false,
            }) => text.clone(),
            Some(Kind::Text(text)) => text.clone(),
            _ => {
                self.at -= 1;
                return Err(self.expected("a property name (letters, digits and '_', or quoted)"));
            }
        };
        check_type_name(&object_type).map_err(|problem| self.error_at(start, problem))?;
        check_property_name(&object_type, &first)
            .map_err(|problem| self.error_at(start, problem))?;
        let mut steps = vec![first.clone()];
        let mut last = Some(first.clone());
        let mut hashes = first == "hashes";
        let step_at = |parser: &Self| parser.peek().map_or(parser.end, |t| t.at);
        loop {
            let at = step_at(self);
            match self.peek().map(|t| &t.kind) {
                Some(Kind::Dot) => {
                    self.at += 1;
                    match self.next().map(|t| &t.kind) {
                        Some(Kind::Name {
                            text,
                            hyphen: false,
                        })
                        | Some(Kind::Text(text)) => {
                            let key = text.clone();
                            // A hash is named by its algorithm, in plain ASCII: readers
                            // fold other letters and quotes into names of their own.
                            if hashes && (!key.is_ascii() || key.contains('\'')) {
                                return Err(self.error_at(
                                    at,
                                    format!(
                                        "{:?} is not a hash algorithm's name (plain ASCII letters, digits and '-')",
                                        shorten(&key)
                                    ),
                                ));
                            }
                            hashes |= key == "hashes";
                            steps.push(key.clone());
                            last = Some(key);
                        }
                        _ => {
                            self.at -= 1;
                            return Err(self
                                .expected("a key after '.' (letters, digits and '_', or quoted)"));
                        }
                    }
                }
                Some(Kind::OpenBracket) => {
                    // A step `[0]`, `[-1]` or `[*]`; an observation's `[` never follows a
                    // path, so this is the path's.
                    self.at += 1;
                    match self.next().map(|t| &t.kind) {
                        // Readers of STIX disagree on what a negative index selects.
                        Some(Kind::NegativeInt) => {
                            return Err(
                                self.error_at(at, "a list index is 0 or more, or '*'".into())
                            );
                        }
                        Some(Kind::PositiveInt) if hashes => {
                            return Err(self.error_at(
                                at,
                                "a hash is named by its algorithm, not by an index".into(),
                            ));
                        }
                        Some(Kind::PositiveInt) => {
                            steps.push("#".into());
                            last = None;
                        }
                        Some(Kind::Star) => {
                            steps.push("*".into());
                            last = Some("*".into());
                        }
                        _ => {
                            self.at -= 1;
                            return Err(self.expected("an index or '*' in '[' ']'"));
                        }
                    }
                    if !matches!(self.next().map(|t| &t.kind), Some(Kind::CloseBracket)) {
                        self.at -= 1;
                        return Err(self.expected("']' after the index"));
                    }
                }
                _ => break,
            }
        }
        Ok(Path {
            object_type,
            steps,
            hashes,
            last,
        })
    }
}

/// What a comparison's hash check needs of its path.
struct Path {
    object_type: String,
    /// Every step after the type, as [`Comparison::steps`] gives them.
    steps: Vec<String>,
    /// Whether a step of the path is `hashes`.
    hashes: bool,
    /// The last step when it is a key (`*` for `[*]`), `None` for an index.
    last: Option<String>,
}

/// The hash algorithms whose values have a known form, by name without case or hyphens:
/// the name STIX gives it and the lengths of its hex values (`None` for SSDEEP, whose
/// values are up to 128 of letters, digits and `/+:.`).
fn hash_form(name: &str) -> Option<(&'static str, Option<&'static [usize]>)> {
    let key: String = name
        .chars()
        .filter(|c| *c != '-')
        .collect::<String>()
        .to_ascii_uppercase();
    Some(match key.as_str() {
        "MD5" => ("MD5", Some(&[32])),
        "MD6" => ("MD6", Some(&[32, 40, 56, 64, 96, 128])),
        "RIPEMD160" => ("RIPEMD-160", Some(&[40])),
        "SHA1" => ("SHA-1", Some(&[40])),
        "SHA224" => ("SHA-224", Some(&[56])),
        "SHA256" => ("SHA-256", Some(&[64])),
        "SHA384" => ("SHA-384", Some(&[96])),
        "SHA512" => ("SHA-512", Some(&[128])),
        "SHA3224" => ("SHA3-224", Some(&[56])),
        "SHA3256" => ("SHA3-256", Some(&[64])),
        "SHA3384" => ("SHA3-384", Some(&[96])),
        "SHA3512" => ("SHA3-512", Some(&[128])),
        "SSDEEP" => ("SSDEEP", None),
        "WHIRLPOOL" => ("WHIRLPOOL", Some(&[128])),
        _ => return None,
    })
}

fn fits_hash(value: &str, lengths: Option<&[usize]>) -> bool {
    match lengths {
        Some(lengths) => {
            lengths.contains(&value.len()) && value.bytes().all(|b| b.is_ascii_hexdigit())
        }
        None => {
            (1..=128).contains(&value.len())
                && value
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"/+:.".contains(&b))
        }
    }
}

/// Where the value of a comparison starts (its first token, or the end).
fn value_at_offset(parser: &Parser<'_>, value_at: usize) -> usize {
    parser.tokens.get(value_at).map_or(parser.end, |t| t.at)
}

/// A comparison on a hash of a known algorithm compares it with one string of the
/// algorithm's form: not a set, a number or another literal (readers check the value's
/// text against the form, and a set or a number never has it).
fn check_hash(path: &Path, value: &[Token], at: usize) -> Result<(), PatternSyntaxError> {
    if !path.hashes {
        return Ok(());
    }
    let Some((name, lengths)) = path.last.as_deref().and_then(hash_form) else {
        return Ok(());
    };
    match value {
        [
            Token {
                kind: Kind::Text(text),
                ..
            },
        ] if fits_hash(text, lengths) => Ok(()),
        [
            Token {
                kind: Kind::Text(text),
                at,
            },
        ] => Err(PatternSyntaxError {
            at: *at,
            problem: format!("{:?} is not a {name} hash", shorten(text)),
        }),
        _ => Err(PatternSyntaxError {
            at,
            problem: format!(
                "a {name} hash is compared with one quoted value, not a set or a number"
            ),
        }),
    }
}

/// The cyber-observable types STIX 2.1 defines.
const OBSERVABLE_TYPES: [&str; 18] = [
    "artifact",
    "autonomous-system",
    "directory",
    "domain-name",
    "email-addr",
    "email-message",
    "file",
    "ipv4-addr",
    "ipv6-addr",
    "mac-addr",
    "mutex",
    "network-traffic",
    "process",
    "software",
    "url",
    "user-account",
    "windows-registry-key",
    "x509-certificate",
];

/// An object type is one STIX defines, or a name of 3 to 250 lower-case letters, digits
/// and single hyphens between them (a leading or trailing hyphen allowed).
fn check_type_name(name: &str) -> Result<(), String> {
    if OBSERVABLE_TYPES.contains(&name) {
        return Ok(());
    }
    let inner = name.strip_prefix('-').unwrap_or(name);
    let inner = inner.strip_suffix('-').unwrap_or(inner);
    let form = !inner.is_empty()
        && inner.split('-').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        });
    if form && (3..=250).contains(&name.len()) {
        Ok(())
    } else {
        Err(format!(
            "{:?} is not a valid observable type name (3 to 250 lower-case letters, digits and hyphens)",
            shorten(name)
        ))
    }
}

/// A path's first property is 3 to 250 lower-case letters, digits and `_`, or `id` on a
/// type STIX defines.
fn check_property_name(object_type: &str, name: &str) -> Result<(), String> {
    let form = (3..=250).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if form || (name == "id" && OBSERVABLE_TYPES.contains(&object_type)) {
        Ok(())
    } else {
        Err(format!(
            "{:?} is not a valid observable property name (3 to 250 lower-case letters, digits and '_')",
            shorten(name)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid(pattern: &str) {
        assert_eq!(check_pattern_syntax(pattern), Ok(()), "{pattern}");
    }

    fn invalid(pattern: &str) -> String {
        match check_pattern_syntax(pattern) {
            Ok(()) => panic!("accepted: {pattern}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn patterns_of_the_specification_are_valid() {
        for pattern in [
            "[x-acme-list:items[0].hashes.MD5 = 'd41d8cd98f00b204e9800998ecf8427e']",
            "[ipv4-addr:value = '198.51.100.1']",
            "[ipv4-addr:value = '198.51.100.1' OR domain-name:value = 'c2.example']",
            "[file:hashes.'SHA-256' = 'aec070645fe53ee3b3763059376134f058cc337247c978add178b6ccdfb0019f']",
            "[file:hashes.MD5 = 'd41d8cd98f00b204e9800998ecf8427e']",
            "[url:value = 'http://example.com/foo' OR url:value = 'http://example.com/bar']",
            "[domain-name:value = 'x.example'] AND [ipv4-addr:value = '1.2.3.4'] WITHIN 300 SECONDS",
            "[a-b:prop_name = 'x'] FOLLOWEDBY [file:name = 'b'] REPEATS 5 TIMES",
            "([file:name = 'a'] AND [file:name = 'b']) WITHIN 1.5 SECONDS",
            "[file:name = 'a'] START t'2016-06-01T00:00:00Z' STOP t'2016-07-01T00:00:00.123Z'",
            "[network-traffic:dst_ref.type = 'ipv4-addr' AND network-traffic:dst_port = 443]",
            "[email-message:from_ref.value MATCHES '.+\\\\@example\\\\.com$']",
            "[file:extensions.'windows-pebinary-ext'.sections[*].entropy > 7.0]",
            "[windows-registry-key:key = 'HKEY_LOCAL_MACHINE\\\\System' AND windows-registry-key:values[0].name = 'x']",
            "[user-account:account_type = 'unix' AND user-account:user_id = '1007' AND user-account:account_login = 'Peter']",
            "[artifact:mime_type = 'application/vnd.tcpdump.pcap' AND artifact:payload_bin MATCHES '\\\\xd4\\\\xc3\\\\xb2\\\\xa1\\\\x02\\\\x00\\\\x04\\\\x00']",
            "[file:size IN (1, 2, 3)] OR [file:name IN ()]",
            "[file:name NOT = 'a' AND file:size NOT > 10]",
            "[EXISTS file:name]",
            "[(file:name = 'a' OR file:name = 'b') AND file:size <= -1]",
            "[x509-certificate:hashes.'SHA-1' = '0123456789abcdef0123456789abcdef01234567']",
            "[ipv4-addr:value ISSUBSET '198.51.100.0/24']",
            "[file:name LIKE 'a%' ] /* a comment */",
            "[artifact:payload_bin = b'aGVsbG8=' AND artifact:x_hex = h'00ff']",
            "[process:is_hidden = true]",
            "[file:name = 'it\\'s']",
            "[file:name='a']AND[file:name='b']",
            "[ipv4-addr:id = 'x']",
        ] {
            valid(pattern);
        }
    }

    #[test]
    fn patterns_outside_the_language_are_refused_saying_where() {
        for (pattern, expect) in [
            ("[ipv4-addr:value = '1.2.3.4'] OR", "before the end"),
            ("[ipv4-addr:value = 1.2.3.4]", "at character"),
            ("[ipv4-addr:value = '1.2.3.4'] WITHIN 5", "SECONDS"),
            ("[file:name = unquoted]", "a value"),
            ("ipv4-addr:value = '1.2.3.4'", "an observation"),
            ("[ipv4-addr:value = '1.2.3.4'", "']'"),
            ("[ipv4-addr:value = '1.2.3.4]", "not closed"),
            ("[file:hashes.SHA-256 = 'aa']", "a key after"),
            ("[file:hashes.MD5 = 'abc']", "not a MD5 hash"),
            ("[file:hashes.'sha-256' LIKE '%ab%']", "not a SHA-256 hash"),
            ("[ipv4-addr:value = '1.2.3.4'] @", "'@' is not part"),
            ("[Foo:value = 'x']", "observable type"),
            ("[ab:value = 'x']", "observable type"),
            ("[file:Name = 'x']", "property name"),
            ("[file:nm = 'x']", "property name"),
            (
                "[file:name = 'x'] WITHIN 5 SECONDS WITHIN 6 SECONDS",
                "two qualifiers",
            ),
            ("[file:name = 'x'] WITHIN -5 SECONDS", "positive number"),
            ("[file:name = 'x'] REPEATS 1.5 TIMES", "positive integer"),
            (
                "[file:name = 'x'] START t'2016-13-01T00:00:00Z' STOP t'2016-07-01T00:00:00Z'",
                "timestamp",
            ),
            ("[file:size > true]", "has an order"),
            ("[file:name LIKE 5]", "a string"),
            ("[file:name = 'a\\b']", "not closed"),
            (
                "[file:name = 'a'] and [file:name = 'b']",
                "AND, OR or FOLLOWEDBY",
            ),
            ("[file:size = 007]", "']' or AND or OR"),
            ("[]", "object path"),
            ("", "before the end"),
            ("[file:name = 'a'] /* open", "comment"),
            ("[file:AND = 'a']", "property name"),
            ("[file:name IN (1, 2]", "',' or ')'"),
            (
                "[file:hashes.MD5 IN ('d41d8cd98f00b204e9800998ecf8427e')]",
                "not a set",
            ),
            ("[file:hashes.MD5 = 5]", "not a set or a number"),
            ("[file:hashes[0] = 'x']", "not by an index"),
            ("[file:hashes.MD5[0] = 'x']", "not by an index"),
            ("[x-foo:list[-1] = 'x']", "0 or more"),
            ("[file:hashes.'MD\\'5' = 'x']", "algorithm's name"),
            ("[file:hashes.'\u{17f}ha1' = 'x']", "algorithm's name"),
        ] {
            let error = invalid(pattern);
            assert!(error.contains(expect), "{pattern}: {error}");
        }
    }

    #[test]
    fn characters_that_do_not_print_are_shown_escaped() {
        for pattern in [
            "[file:name = 'a'] \u{202e}",
            "[file:name = 'a'] \u{200b}",
            "[\u{202e}file:name = 'a']",
        ] {
            let error = invalid(pattern);
            assert!(error.is_ascii(), "{error}");
            assert!(error.contains("\\u{"), "{error}");
        }
    }

    #[test]
    fn nesting_is_bounded() {
        let deep = format!(
            "{}[file:name = 'a']{}",
            "(".repeat(MAX_NESTING + 1),
            ")".repeat(MAX_NESTING + 1)
        );
        assert!(invalid(&deep).contains("nesting"));
        let fine = format!(
            "{}[file:name = 'a']{}",
            "(".repeat(MAX_NESTING - 1),
            ")".repeat(MAX_NESTING - 1)
        );
        valid(&fine);
        // Nothing an attacker writes runs the checker out of stack.
        let _ = check_pattern_syntax(&"([".repeat(10_000));
    }
}
