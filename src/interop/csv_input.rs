//! CSV input: `type,value,tlp,tags,valid_until`, the last three columns optional, with an
//! optional header row (first field `type`). Empty cells take the defaults; tags are split on
//! `;` or `|`. Lines starting with `#` are comments. Positions are `line N` (1-based,
//! counting the header and comments).

use std::str::FromStr;

use super::{Draft, Sink, TooMany, default_type, parse_timestamp};
use crate::model::{Indicator, IndicatorType, ItemKind, Tlp, normalise_typed};

/// Fewest and most columns in a row.
const MIN_COLUMNS: usize = 2;
const MAX_COLUMNS: usize = 5;

pub(super) fn parse(text: &str, now_ms: i64, sink: &mut Sink<'_>) -> Result<(), TooMany> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .comment(Some(b'#'))
        .from_reader(text.as_bytes());
    let mut first = true;
    for result in reader.records() {
        let record = match result {
            Ok(record) => record,
            Err(e) => {
                sink.count()?;
                let line = e.position().map_or(0, csv::Position::line);
                sink.error(format!("line {line}"), format!("unreadable CSV row: {e}"));
                continue;
            }
        };
        let is_header = first
            && record
                .get(0)
                .is_some_and(|f| f.eq_ignore_ascii_case("type"));
        first = false;
        if is_header || record.iter().all(str::is_empty) {
            continue;
        }
        sink.count()?;
        let line = record.position().map_or(0, csv::Position::line);
        let draft = draft(&record, now_ms, sink);
        sink.take(|| format!("line {line}"), draft);
    }
    Ok(())
}

fn draft(record: &csv::StringRecord, now_ms: i64, sink: &Sink<'_>) -> Result<Draft, String> {
    if !(MIN_COLUMNS..=MAX_COLUMNS).contains(&record.len()) {
        return Err(format!(
            "expected 2 to 5 columns (type,value,tlp,tags,valid_until), got {}",
            record.len()
        ));
    }
    let cell = |i: usize| record.get(i).unwrap_or("");
    let value = cell(1);
    let indicator_type = match cell(0) {
        "" => default_type(sink.defaults, value)?,
        name => IndicatorType::from_str(name).map_err(|e| e.to_string())?,
    };
    let (indicator_type, value) =
        normalise_typed(indicator_type, value).map_err(|e| e.to_string())?;
    let tlp = match cell(2) {
        "" => None,
        name => Some(Tlp::from_str(name).map_err(|e| e.to_string())?),
    };
    let tags = cell(3)
        .split([';', '|'])
        .map(str::trim)
        .filter(|tag| !tag.is_empty())
        .map(str::to_owned)
        .collect();
    let valid_until_ms = match cell(4) {
        "" => None,
        text => Some(parse_timestamp(text).map_err(|e| format!("valid_until: {e}"))?),
    };
    Ok(Draft {
        id: None,
        modified_ms: now_ms,
        tlp,
        floor: None,
        tags,
        kind: ItemKind::Indicator(Indicator {
            indicator_type,
            value,
            description: String::new(),
            confidence: 0,
            kill_chain_phases: Vec::new(),
            valid_from_ms: now_ms,
            valid_until_ms,
            properties: crate::model::StixProperties::none(),
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::super::tests::{NOW, defaults, indicator, positions, values};
    use super::super::{Defaults, InputFormat, parse_input};
    use crate::model::{IndicatorType::*, Tlp};

    const NEXT_YEAR: &str = "2026-06-15T12:00:00Z";
    const NEXT_YEAR_MS: i64 = 1_781_524_800_000;

    #[test]
    fn input_edges() {
        let text = "ipv6,::ffff:192.0.2.1\ncidr,0.0.0.0/0\ncidr,::/0\n\
                    url,https://u:p@host.example/\nemail,mailto:a@b.example\n\
                    domain,xn--zz.example\n";
        let parsed = parse_input(InputFormat::Csv, text, &defaults(Some(Tlp::Green)), NOW);
        assert_eq!(
            values(&parsed),
            [(Ipv4, "192.0.2.1".into()), (Email, "a@b.example".into())]
        );
        assert_eq!(positions(&parsed), ["line 2", "line 3", "line 4", "line 6"]);
    }

    #[test]
    fn good_rows_become_items() {
        let text = format!(
            "Type,Value,TLP,Tags,Valid_Until\n\
             ipv4,1.2.3.4,amber,source:honeypot;scanner,{NEXT_YEAR}\n\
             domain, Example.COM. ,TLP:RED,a|b| a ,\n\
             # a comment row\n\
             ,https://EVIL.example:443/x\n\
             sha-256,\"E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855\",clear\n"
        );
        let parsed = parse_input(InputFormat::Csv, &text, &defaults(Some(Tlp::Green)), NOW);
        assert_eq!(parsed.errors, []);
        assert_eq!(
            values(&parsed),
            [
                (Ipv4, "1.2.3.4".into()),
                (Domain, "example.com".into()),
                (Url, "https://evil.example/x".into()),
                (
                    Sha256,
                    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855".into()
                ),
            ]
        );
        let tlps: Vec<Tlp> = parsed.items.iter().map(|i| i.tlp).collect();
        assert_eq!(tlps, [Tlp::Amber, Tlp::Red, Tlp::Green, Tlp::Clear]);
        assert_eq!(parsed.items[0].tags, ["source:honeypot", "scanner"]);
        assert_eq!(parsed.items[1].tags, ["a", "b"]);
        assert!(parsed.items[2].tags.is_empty());
        assert_eq!(
            indicator(&parsed.items[0]).valid_until_ms,
            Some(NEXT_YEAR_MS)
        );
        assert_eq!(indicator(&parsed.items[1]).valid_until_ms, None);
        for item in &parsed.items {
            assert_eq!(item.modified_ms, NOW);
            assert_eq!(indicator(item).valid_from_ms, NOW);
        }
    }

    #[test]
    fn header_is_optional() {
        let parsed = parse_input(
            InputFormat::Csv,
            "ipv4,1.2.3.4\nipv6,::1\n",
            &defaults(Some(Tlp::Green)),
            NOW,
        );
        assert_eq!(parsed.errors, []);
        assert_eq!(
            values(&parsed),
            [(Ipv4, "1.2.3.4".into()), (Ipv6, "::1".into())]
        );
    }

    #[test]
    fn bad_rows_are_reported_with_their_line() {
        let text = format!(
            "type,value,tlp,tags,valid_until\n\
             ipv4,1.2.3.4\n\
             ipv4,1.2.3.256\n\
             md5,d41d8cd98f00b204e9800998ecf8427\n\
             ipaddr,1.2.3.4\n\
             ipv4,1.2.3.5,purple\n\
             ipv4,1.2.3.6,green,two words\n\
             ipv4,1.2.3.7,green,,tomorrow\n\
             ipv4,1.2.3.8,green,,2001-01-01T00:00:00Z\n\
             ipv4\n\
             ipv4,1.2.3.9,green,,,extra\n\
             ,localhost\n\
             domain,example.net,green,x,{NEXT_YEAR}\n"
        );
        let parsed = parse_input(InputFormat::Csv, &text, &defaults(Some(Tlp::Green)), NOW);
        assert_eq!(
            values(&parsed),
            [(Ipv4, "1.2.3.4".into()), (Domain, "example.net".into())]
        );
        assert_eq!(
            positions(&parsed),
            [
                "line 3", "line 4", "line 5", "line 6", "line 7", "line 8", "line 9", "line 10",
                "line 11", "line 12"
            ]
        );
        let reasons: Vec<&str> = parsed.errors.iter().map(|e| e.reason.as_str()).collect();
        assert!(
            reasons[0].contains("octet 4 (256) is above 255"),
            "{}",
            reasons[0]
        );
        assert!(reasons[1].ends_with("md5 has 32 hex digits, got 31"));
        assert!(reasons[2].contains("unknown indicator type"));
        assert!(reasons[3].contains("unknown TLP marking"));
        assert!(reasons[4].contains("whitespace"));
        assert!(reasons[5].starts_with("valid_until:"));
        assert!(reasons[6].contains("later than valid_from"));
        assert!(reasons[7].contains("got 1"));
        assert!(reasons[8].contains("got 6"));
        assert_eq!(reasons[9], "cannot tell the indicator type; give --type");
    }

    #[test]
    fn empty_cells_take_defaults() {
        let d = Defaults {
            tlp: Some(Tlp::AmberStrict),
            indicator_type: Some(Domain),
            tags: vec!["feed:x".into()],
            origin: None,
        };
        let parsed = parse_input(InputFormat::Csv, ",evil.example,,\n", &d, NOW);
        assert_eq!(parsed.errors, []);
        assert_eq!(values(&parsed), [(Domain, "evil.example".into())]);
        assert_eq!(parsed.items[0].tlp, Tlp::AmberStrict);
        assert_eq!(parsed.items[0].tags, ["feed:x"]);
        let parsed = parse_input(InputFormat::Csv, "ipv4,1.2.3.4\n", &defaults(None), NOW);
        assert!(parsed.items.is_empty());
        assert_eq!(
            parsed.errors[0].to_string(),
            "line 1: no TLP marking (give one in the input or with --tlp)"
        );
    }

    #[test]
    fn quoted_values_may_hold_commas() {
        let text = "url,\"http://x.example/a?b=1,2\",green\n";
        let parsed = parse_input(InputFormat::Csv, text, &defaults(None), NOW);
        assert_eq!(parsed.errors, []);
        assert_eq!(values(&parsed), [(Url, "http://x.example/a?b=1,2".into())]);
    }
}
