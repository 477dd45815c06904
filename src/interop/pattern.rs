//! STIX 2.1 patterns for single indicators: recognising one simple equality comparison
//! (`[ipv4-addr:value = '198.51.100.1']`) and writing one. Anything richer stays an opaque
//! pattern; this is not a STIX pattern parser.

use crate::model::IndicatorType;

/// The type and (unescaped, not yet normalised) value of a pattern that is one equality
/// comparison on a supported object path, or `None` for any other pattern.
///
/// Supported paths: `ipv4-addr:value` (a `/` in the value makes it a CIDR network),
/// `ipv6-addr:value` (likewise), `domain-name:value`, `url:value`, `email-addr:value` and
/// `file:hashes.<name>` for MD5, SHA-1 and SHA-256 (name quoted or not, any case, with or
/// without the hyphen). Whitespace around the brackets and `=` is free.
pub(super) fn recognise(pattern: &str) -> Option<(IndicatorType, String)> {
    let mut cursor = Cursor {
        rest: pattern.trim(),
    };
    cursor.eat('[')?;
    cursor.skip_whitespace();
    let ty = cursor.object_path()?;
    cursor.skip_whitespace();
    cursor.eat('=')?;
    cursor.skip_whitespace();
    let value = cursor.string_literal()?;
    cursor.skip_whitespace();
    cursor.eat(']')?;
    if !cursor.rest.is_empty() {
        return None;
    }
    let ty = match ty {
        IndicatorType::Ipv4 | IndicatorType::Ipv6 if value.contains('/') => IndicatorType::Cidr,
        other => other,
    };
    Some((ty, value))
}

/// The STIX pattern for a normalised value of a typed indicator, or the value itself for
/// [`IndicatorType::StixPattern`].
pub(super) fn write(ty: IndicatorType, value: &str) -> String {
    let path = match ty {
        IndicatorType::Ipv4 => "ipv4-addr:value",
        IndicatorType::Ipv6 => "ipv6-addr:value",
        IndicatorType::Cidr if value.contains(':') => "ipv6-addr:value",
        IndicatorType::Cidr => "ipv4-addr:value",
        IndicatorType::Domain => "domain-name:value",
        IndicatorType::Url => "url:value",
        IndicatorType::Email => "email-addr:value",
        IndicatorType::Md5 => "file:hashes.MD5",
        IndicatorType::Sha1 => "file:hashes.'SHA-1'",
        IndicatorType::Sha256 => "file:hashes.'SHA-256'",
        // Context object types have no pattern; no indicator has one of them.
        _ => return value.to_owned(),
    };
    let mut out = String::with_capacity(path.len() + value.len() + 8);
    out.push('[');
    out.push_str(path);
    out.push_str(" = '");
    for c in value.chars() {
        if c == '\'' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push_str("']");
    out
}

struct Cursor<'a> {
    rest: &'a str,
}

impl Cursor<'_> {
    fn eat(&mut self, c: char) -> Option<()> {
        self.rest = self.rest.strip_prefix(c)?;
        Some(())
    }

    fn eat_str(&mut self, s: &str) -> Option<()> {
        self.rest = self.rest.strip_prefix(s)?;
        Some(())
    }

    fn skip_whitespace(&mut self) {
        self.rest = self.rest.trim_start();
    }

    fn object_path(&mut self) -> Option<IndicatorType> {
        const VALUE_PATHS: [(&str, IndicatorType); 5] = [
            ("ipv4-addr:value", IndicatorType::Ipv4),
            ("ipv6-addr:value", IndicatorType::Ipv6),
            ("domain-name:value", IndicatorType::Domain),
            ("url:value", IndicatorType::Url),
            ("email-addr:value", IndicatorType::Email),
        ];
        for (path, ty) in VALUE_PATHS {
            if self.eat_str(path).is_some() {
                return Some(ty);
            }
        }
        self.eat_str("file:hashes.")?;
        let name = if self.eat('\'').is_some() {
            let end = self.rest.find('\'')?;
            let name = &self.rest[..end];
            self.rest = &self.rest[end + 1..];
            name
        } else {
            let end = self
                .rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
                .unwrap_or(self.rest.len());
            let name = &self.rest[..end];
            self.rest = &self.rest[end..];
            name
        };
        match name.to_ascii_lowercase().replace('-', "").as_str() {
            "md5" => Some(IndicatorType::Md5),
            "sha1" => Some(IndicatorType::Sha1),
            "sha256" => Some(IndicatorType::Sha256),
            _ => None,
        }
    }

    /// A single-quoted string with `\'` and `\\` escapes (the only ones STIX defines).
    fn string_literal(&mut self) -> Option<String> {
        self.eat('\'')?;
        let mut value = String::new();
        let mut chars = self.rest.char_indices();
        while let Some((at, c)) = chars.next() {
            match c {
                '\'' => {
                    self.rest = &self.rest[at + 1..];
                    return Some(value);
                }
                '\\' => match chars.next() {
                    Some((_, escaped @ ('\'' | '\\'))) => value.push(escaped),
                    _ => return None,
                },
                other => value.push(other),
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use IndicatorType::*;

    fn simple(p: &str) -> Option<(IndicatorType, String)> {
        recognise(p)
    }

    #[test]
    fn recognises_simple_comparisons() {
        let cases = [
            ("[ipv4-addr:value = '198.51.100.1']", Ipv4, "198.51.100.1"),
            ("[ipv4-addr:value='10.0.0.0/8']", Cidr, "10.0.0.0/8"),
            (
                "  [ ipv6-addr:value\t=  '2001:db8::1' ]  ",
                Ipv6,
                "2001:db8::1",
            ),
            ("[ipv6-addr:value = '2001:db8::/32']", Cidr, "2001:db8::/32"),
            ("[domain-name:value = 'example.com']", Domain, "example.com"),
            (
                "[url:value = 'http://x.example/it\\'s']",
                Url,
                "http://x.example/it's",
            ),
            (
                "[url:value = 'http://x.example/a\\\\b']",
                Url,
                "http://x.example/a\\b",
            ),
            (
                "[email-addr:value = 'a@example.com']",
                Email,
                "a@example.com",
            ),
            ("[file:hashes.MD5 = 'abc']", Md5, "abc"),
            ("[file:hashes.md5 = 'abc']", Md5, "abc"),
            ("[file:hashes.'MD5' = 'abc']", Md5, "abc"),
            ("[file:hashes.'SHA-1' = 'abc']", Sha1, "abc"),
            ("[file:hashes.SHA1 = 'abc']", Sha1, "abc"),
            ("[file:hashes.'SHA-256' = 'abc']", Sha256, "abc"),
            ("[file:hashes.SHA256='abc']", Sha256, "abc"),
            ("[file:hashes.sha-256 = 'abc']", Sha256, "abc"),
        ];
        for (pattern, ty, value) in cases {
            assert_eq!(simple(pattern), Some((ty, value.to_owned())), "{pattern}");
        }
    }

    #[test]
    fn leaves_everything_else_alone() {
        for pattern in [
            "[ipv4-addr:value = '1.2.3.4' OR ipv4-addr:value = '5.6.7.8']",
            "[ipv4-addr:value = '1.2.3.4'] AND [domain-name:value = 'x.com']",
            "[ipv4-addr:value != '1.2.3.4']",
            "[ipv4-addr:value == '1.2.3.4']",
            "[ipv4-addr:value MATCHES '^1']",
            "[ipv4-addr:value = '1.2.3.4'] WITHIN 5 SECONDS",
            "[file:hashes.'SHA-512' = 'abc']",
            "[file:name = 'evil.exe']",
            "[ipv4-addr:value_x = '1.2.3.4']",
            "[url:value = 'unterminated]",
            "[url:value = 'bad \\n escape']",
            "[url:value = 'x'",
            "ipv4-addr:value = '1.2.3.4'",
            "[file:hashes.'MD5 = 'abc']",
            "",
        ] {
            assert_eq!(simple(pattern), None, "{pattern}");
        }
    }

    #[test]
    fn writes_patterns_that_read_back() {
        let cases = [
            (Ipv4, "1.2.3.4"),
            (Ipv6, "2001:db8::1"),
            (Cidr, "10.0.0.0/8"),
            (Cidr, "2001:db8::/32"),
            (Domain, "example.com"),
            (Url, "http://x.example/it's\\here"),
            (Email, "o'brien@example.com"),
            (Md5, "d41d8cd98f00b204e9800998ecf8427e"),
            (Sha1, "da39a3ee5e6b4b0d3255bfef95601890afd80709"),
            (Sha256, "ab"),
        ];
        for (ty, value) in cases {
            let pattern = write(ty, value);
            assert_eq!(simple(&pattern), Some((ty, value.to_owned())), "{pattern}");
        }
        assert_eq!(write(Md5, "ab"), "[file:hashes.MD5 = 'ab']");
        assert_eq!(write(StixPattern, "[a:b = 'c']"), "[a:b = 'c']");
    }
}
