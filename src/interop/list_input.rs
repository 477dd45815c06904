//! Plain lists: one indicator value per line, typed by `--type` or by its shape. Blank lines
//! and lines starting with `#` are skipped; positions are `line N` (1-based).

use super::{Draft, Sink, TooMany, default_type};
use crate::model::{Indicator, ItemKind, normalise_typed};

pub(super) fn parse(text: &str, now_ms: i64, sink: &mut Sink<'_>) -> Result<(), TooMany> {
    for (index, line) in text.lines().enumerate() {
        let value = line.trim();
        if value.is_empty() || value.starts_with('#') {
            continue;
        }
        sink.count()?;
        let draft = draft(value, now_ms, sink);
        sink.take(|| format!("line {}", index + 1), draft);
    }
    Ok(())
}

fn draft(value: &str, now_ms: i64, sink: &Sink<'_>) -> Result<Draft, String> {
    let indicator_type = default_type(sink.defaults, value)?;
    let (indicator_type, value) =
        normalise_typed(indicator_type, value).map_err(|e| e.to_string())?;
    Ok(Draft {
        id: None,
        modified_ms: now_ms,
        tlp: None,
        floor: None,
        tags: Vec::new(),
        kind: ItemKind::Indicator(Indicator {
            indicator_type,
            value,
            description: String::new(),
            confidence: 0,
            kill_chain_phases: Vec::new(),
            valid_from_ms: now_ms,
            valid_until_ms: None,
            properties: crate::model::StixProperties::none(),
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::super::tests::{NOW, defaults, indicator, positions, values};
    use super::super::{InputFormat, parse_input};
    use crate::model::{IndicatorType::*, Tlp};

    #[test]
    fn good_lines_become_items() {
        let text = "# honeypot hits\n\n  1.2.3.4  \r\n2001:DB8::1\n10.1.2.3/8\nExample.COM.\n\
                    HTTP://Evil.Example/x?y\nA@Example.com\n\
                    D41D8CD98F00B204E9800998ECF8427E\n[file:name = 'x.exe']\n";
        let parsed = parse_input(InputFormat::List, text, &defaults(Some(Tlp::Green)), NOW);
        assert_eq!(parsed.errors, []);
        assert_eq!(
            values(&parsed),
            [
                (Ipv4, "1.2.3.4".into()),
                (Ipv6, "2001:db8::1".into()),
                (Cidr, "10.0.0.0/8".into()),
                (Domain, "example.com".into()),
                (Url, "http://evil.example/x?y".into()),
                (Email, "a@example.com".into()),
                (Md5, "d41d8cd98f00b204e9800998ecf8427e".into()),
                (StixPattern, "[file:name = 'x.exe']".into()),
            ]
        );
        for item in &parsed.items {
            assert_eq!(item.tlp, Tlp::Green);
            assert_eq!(item.modified_ms, NOW);
            assert!(item.tags.is_empty());
            let i = indicator(item);
            assert_eq!(i.valid_from_ms, NOW);
            assert_eq!(i.valid_until_ms, None);
        }
        assert_ne!(parsed.items[0].id, parsed.items[1].id);
    }

    #[test]
    fn input_edges() {
        let text = "::ffff:192.0.2.1\n0.0.0.0/0\n::/0\nhttps://u:p@host.example/\n\
                    mailto:A@B.example\nxn--zz.example\n";
        let parsed = parse_input(InputFormat::List, text, &defaults(Some(Tlp::Green)), NOW);
        assert_eq!(
            values(&parsed),
            [(Ipv4, "192.0.2.1".into()), (Email, "a@b.example".into())]
        );
        assert_eq!(positions(&parsed), ["line 2", "line 3", "line 4", "line 6"]);
    }

    #[test]
    fn bad_lines_are_reported_and_the_rest_parse() {
        let text =
            "1.2.3.4\n1.2.3.256\nlocalhost\n\nd41d8cd98f00b204e9800998ecf8427\nexample.org\n";
        let parsed = parse_input(InputFormat::List, text, &defaults(Some(Tlp::Red)), NOW);
        assert_eq!(
            values(&parsed),
            [(Ipv4, "1.2.3.4".into()), (Domain, "example.org".into())]
        );
        assert_eq!(positions(&parsed), ["line 2", "line 3", "line 5"]);
        assert!(parsed.errors[0].reason.contains("octet 4 (256)"));
        assert_eq!(
            parsed.errors[1].reason,
            "cannot tell the indicator type; give --type"
        );
        assert_eq!(
            parsed.errors[2].reason,
            "cannot tell the indicator type; give --type"
        );
    }

    #[test]
    fn given_type_is_used_and_checked() {
        let mut d = defaults(Some(Tlp::Amber));
        d.indicator_type = Some(Md5);
        let text = "d41d8cd98f00b204e9800998ecf8427e\nd41d8cd98f00b204e9800998ecf8427\n";
        let parsed = parse_input(InputFormat::List, text, &d, NOW);
        assert_eq!(parsed.items.len(), 1);
        assert_eq!(positions(&parsed), ["line 2"]);
        assert!(
            parsed.errors[0]
                .reason
                .ends_with("md5 has 32 hex digits, got 31")
        );
    }

    #[test]
    fn no_tlp_is_an_error_for_every_line() {
        let parsed = parse_input(
            InputFormat::List,
            "1.2.3.4\n5.6.7.8\n",
            &defaults(None),
            NOW,
        );
        assert!(parsed.items.is_empty());
        assert_eq!(positions(&parsed), ["line 1", "line 2"]);
        assert_eq!(
            parsed.errors[0].reason,
            "no TLP marking (give one in the input or with --tlp)"
        );
    }
}
