//! Items to and from their signed wire form (`wire::Item`). The encoding of an item
//! is what its leaf digest covers; decoding checks every field and rejects what the
//! model cannot represent.

use super::item::{
    ContextObject, Indicator, IndicatorType, Item, ItemId, ItemKind, ModelError, Revocation, Tlp,
};
use super::properties::StixProperties;
use crate::wire;

impl From<&Indicator> for wire::Indicator {
    fn from(i: &Indicator) -> Self {
        wire::Indicator {
            indicator_type: i.indicator_type.as_str().to_owned(),
            value: i.value.clone(),
            description: i.description.clone(),
            confidence: u32::from(i.confidence),
            kill_chain_phases: i.kill_chain_phases.clone(),
            valid_from_unix_ms: i.valid_from_ms,
            valid_until_unix_ms: i.valid_until_ms,
            stix_properties: i.properties.as_str().to_owned(),
        }
    }
}

/// An indicator's wire form to the model, checking representability only. `trusted`:
/// bytes this node verified and stored earlier, whose kept properties were checked then
/// and are not parsed again on every read.
fn indicator(i: wire::Indicator, trusted: bool) -> Result<Indicator, ModelError> {
    let wire::Indicator {
        indicator_type,
        value,
        description,
        confidence,
        kill_chain_phases,
        valid_from_unix_ms,
        valid_until_unix_ms,
        stix_properties,
    } = i;
    Ok(Indicator {
        indicator_type: indicator_type.parse::<IndicatorType>()?,
        value,
        description,
        confidence: u8::try_from(confidence).map_err(|_| ModelError::Field {
            field: "confidence",
            problem: format!("{confidence} is above 100"),
        })?,
        kill_chain_phases,
        valid_from_ms: valid_from_unix_ms,
        valid_until_ms: valid_until_unix_ms,
        properties: if trusted {
            StixProperties::trusted(stix_properties)
        } else {
            StixProperties::parse(stix_properties)?
        },
    })
}

impl From<Tlp> for wire::Tlp {
    fn from(tlp: Tlp) -> Self {
        match tlp {
            Tlp::Clear => wire::Tlp::Clear,
            Tlp::Green => wire::Tlp::Green,
            Tlp::Amber => wire::Tlp::Amber,
            Tlp::AmberStrict => wire::Tlp::AmberStrict,
            Tlp::Red => wire::Tlp::Red,
        }
    }
}

impl TryFrom<i32> for Tlp {
    type Error = ModelError;
    fn try_from(value: i32) -> Result<Self, Self::Error> {
        match wire::Tlp::try_from(value) {
            Ok(wire::Tlp::Clear) => Ok(Tlp::Clear),
            Ok(wire::Tlp::Green) => Ok(Tlp::Green),
            Ok(wire::Tlp::Amber) => Ok(Tlp::Amber),
            Ok(wire::Tlp::AmberStrict) => Ok(Tlp::AmberStrict),
            Ok(wire::Tlp::Red) => Ok(Tlp::Red),
            Ok(wire::Tlp::Unspecified) | Err(_) => Err(ModelError::BadTlp(value.to_string())),
        }
    }
}

impl From<&Item> for wire::Item {
    fn from(item: &Item) -> Self {
        let kind = match &item.kind {
            ItemKind::Indicator(i) => wire::item::Kind::Indicator(wire::Indicator::from(i)),
            ItemKind::Revocation(r) => wire::item::Kind::Revocation(wire::Revocation {
                reason: r.reason.clone(),
                indicator_type: r.indicator_type.as_str().to_owned(),
                indicator: r
                    .indicator
                    .as_deref()
                    .map(|i| Box::new(wire::Indicator::from(i))),
            }),
            ItemKind::Context(c) => wire::item::Kind::Context(wire::ContextObject {
                object_type: c.object_type.as_str().to_owned(),
                refs: c.refs.iter().map(|r| r.as_str().to_owned()).collect(),
                stix_properties: c.properties.as_str().to_owned(),
            }),
        };
        wire::Item {
            id: item.id.as_str().to_owned(),
            modified_unix_ms: item.modified_ms,
            tlp: wire::Tlp::from(item.tlp) as i32,
            tags: item.tags.clone(),
            kind: Some(kind),
        }
    }
}

impl TryFrom<wire::Item> for Item {
    type Error = ModelError;

    /// Decodes and validates; the result satisfies [`Item::validate`].
    fn try_from(item: wire::Item) -> Result<Self, Self::Error> {
        let item = convert(item, false)?;
        item.validate()?;
        Ok(item)
    }
}

/// The wire form to the model, checking representability only (not [`Item::validate`]).
fn convert(item: wire::Item, trusted: bool) -> Result<Item, ModelError> {
    {
        let wire::Item {
            id,
            modified_unix_ms,
            tlp,
            tags,
            kind,
        } = item;
        let kind = match kind {
            Some(wire::item::Kind::Indicator(i)) => ItemKind::Indicator(indicator(i, trusted)?),
            Some(wire::item::Kind::Revocation(wire::Revocation {
                reason,
                indicator_type,
                indicator: revoked,
            })) => ItemKind::Revocation(Revocation {
                indicator_type: indicator_type.parse::<IndicatorType>()?,
                reason,
                indicator: revoked
                    .map(|i| indicator(*i, trusted))
                    .transpose()?
                    .map(Box::new),
            }),
            Some(wire::item::Kind::Context(wire::ContextObject {
                object_type,
                refs,
                stix_properties,
            })) => ItemKind::Context(ContextObject {
                object_type: IndicatorType::context_type(&object_type)
                    .ok_or_else(|| ModelError::BadType(object_type.chars().take(64).collect()))?,
                refs: refs
                    .iter()
                    .map(|r| ItemId::parse(r))
                    .collect::<Result<_, _>>()?,
                properties: if trusted {
                    StixProperties::trusted(stix_properties)
                } else {
                    StixProperties::parse_for(super::properties::Holder::Context, stix_properties)?
                },
            }),
            None => {
                return Err(ModelError::Field {
                    field: "kind",
                    problem: "neither indicator nor revocation".into(),
                });
            }
        };
        Ok(Item {
            id: ItemId::parse(&id)?,
            modified_ms: modified_unix_ms,
            tlp: Tlp::try_from(tlp)?,
            tags,
            kind,
        })
    }
}

impl Item {
    /// An item submitted for publishing by `origin`: a missing version gets the current
    /// time, the value is normalised, and an indicator without an id gets the one derived
    /// from its origin, type and value ([`ItemId::derived`]); then every field is
    /// validated. A revocation must name the id it revokes.
    pub fn from_draft(
        mut draft: wire::Item,
        origin: &str,
        now_ms: i64,
    ) -> Result<Self, ModelError> {
        if draft.modified_unix_ms == 0 {
            draft.modified_unix_ms = now_ms;
        }
        // Tags are compared without regard to case; this node writes them in lower case.
        let mut tags: Vec<String> = Vec::with_capacity(draft.tags.len());
        for tag in draft.tags.drain(..) {
            let tag = tag.to_ascii_lowercase();
            if !tags.contains(&tag) {
                tags.push(tag);
            }
        }
        draft.tags = tags;
        if let Some(wire::item::Kind::Indicator(indicator)) = &mut draft.kind {
            if indicator.valid_from_unix_ms == 0 {
                indicator.valid_from_unix_ms = draft.modified_unix_ms;
            }
            let ty: IndicatorType = indicator.indicator_type.parse()?;
            let (ty, value) = super::normalise_typed(ty, &indicator.value)?;
            indicator.value = value;
            indicator.indicator_type = ty.as_str().to_owned();
            if draft.id.is_empty() {
                draft.id = ItemId::derived(origin, ty, &indicator.value).to_string();
            }
        }
        if draft.id.is_empty() {
            return Err(ModelError::Field {
                field: "id",
                problem: "a revocation or context object needs the id it is published under".into(),
            });
        }
        Item::try_from(draft)
    }

    /// The exact bytes that are hashed into a bundle: the prost encoding of the wire form,
    /// written straight from the item (the same bytes as
    /// `wire::Item::from(self).encode_to_vec()`, without copying its strings first).
    pub fn encode(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(direct::item_len(self));
        direct::item(self, &mut buf);
        buf
    }

    /// Decodes item bytes that this node verified and stored earlier, without
    /// validating them again.
    pub fn decode_stored(bytes: &[u8]) -> Result<Self, ModelError> {
        let wire: wire::Item = prost::Message::decode(bytes).map_err(|e| ModelError::Field {
            field: "item",
            problem: format!("cannot decode: {e}"),
        })?;
        convert(wire, true)
    }

    /// Decodes item bytes from a bundle and validates the result.
    pub fn decode(bytes: &[u8]) -> Result<Self, ModelError> {
        let wire: wire::Item = prost::Message::decode(bytes).map_err(|e| ModelError::Field {
            field: "item",
            problem: format!("cannot decode: {e}"),
        })?;
        Item::try_from(wire)
    }
}

/// The prost encoding of [`wire::Item`] written from the model, field by field in tag
/// order as the generated code writes them ([`crate::util::proto`]).
mod direct {
    use super::{ContextObject, Indicator, Item, ItemKind, wire};
    use crate::util::proto::{
        bytes, bytes_len, element, element_len, message_head, message_len, nonzero, nonzero_len,
        strings, strings_len, varint, varint_len,
    };

    fn indicator_len(i: &Indicator) -> usize {
        bytes_len(1, i.indicator_type.as_str().as_bytes())
            + bytes_len(2, i.value.as_bytes())
            + bytes_len(3, i.description.as_bytes())
            + nonzero_len(4, u64::from(i.confidence))
            + strings_len(5, &i.kill_chain_phases)
            + nonzero_len(6, i.valid_from_ms as u64)
            + i.valid_until_ms
                .map_or(0, |until| varint_len(7, until as u64))
            + bytes_len(8, i.properties.as_str().as_bytes())
    }

    fn indicator(i: &Indicator, buf: &mut Vec<u8>) {
        bytes(1, i.indicator_type.as_str().as_bytes(), buf);
        bytes(2, i.value.as_bytes(), buf);
        bytes(3, i.description.as_bytes(), buf);
        nonzero(4, u64::from(i.confidence), buf);
        strings(5, &i.kill_chain_phases, buf);
        nonzero(6, i.valid_from_ms as u64, buf);
        if let Some(until) = i.valid_until_ms {
            varint(7, until as u64, buf);
        }
        bytes(8, i.properties.as_str().as_bytes(), buf);
    }

    fn context_len(c: &ContextObject) -> usize {
        bytes_len(1, c.object_type.as_str().as_bytes())
            + c.refs
                .iter()
                .map(|r| element_len(2, r.as_str().as_bytes()))
                .sum::<usize>()
            + bytes_len(3, c.properties.as_str().as_bytes())
    }

    /// The tag of the item's `kind` and the length of its body.
    fn kind_len(item: &Item) -> (u32, usize) {
        match &item.kind {
            ItemKind::Indicator(i) => (10, indicator_len(i)),
            ItemKind::Revocation(r) => (
                11,
                bytes_len(1, r.reason.as_bytes())
                    + bytes_len(2, r.indicator_type.as_str().as_bytes())
                    + r.indicator
                        .as_deref()
                        .map_or(0, |i| message_len(3, indicator_len(i))),
            ),
            ItemKind::Context(c) => (12, context_len(c)),
        }
    }

    fn tlp(item: &Item) -> u64 {
        // An enumeration is an `int32`, widened with its sign as prost does.
        i64::from(wire::Tlp::from(item.tlp) as i32) as u64
    }

    pub(super) fn item_len(item: &Item) -> usize {
        let (tag, len) = kind_len(item);
        bytes_len(1, item.id.as_str().as_bytes())
            + nonzero_len(2, item.modified_ms as u64)
            + nonzero_len(3, tlp(item))
            + strings_len(4, &item.tags)
            + message_len(tag, len)
    }

    pub(super) fn item(item: &Item, buf: &mut Vec<u8>) {
        bytes(1, item.id.as_str().as_bytes(), buf);
        nonzero(2, item.modified_ms as u64, buf);
        nonzero(3, tlp(item), buf);
        strings(4, &item.tags, buf);
        let (tag, len) = kind_len(item);
        message_head(tag, len, buf);
        match &item.kind {
            ItemKind::Indicator(i) => indicator(i, buf),
            ItemKind::Revocation(r) => {
                bytes(1, r.reason.as_bytes(), buf);
                bytes(2, r.indicator_type.as_str().as_bytes(), buf);
                if let Some(i) = r.indicator.as_deref() {
                    message_head(3, indicator_len(i), buf);
                    indicator(i, buf);
                }
            }
            ItemKind::Context(c) => {
                bytes(1, c.object_type.as_str().as_bytes(), buf);
                for r in &c.refs {
                    element(2, r.as_str().as_bytes(), buf);
                }
                bytes(3, c.properties.as_str().as_bytes(), buf);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Item {
        Item {
            id: ItemId::new_random(),
            modified_ms: 1_700_000_000_000,
            tlp: Tlp::Amber,
            tags: vec!["source:honeypot".into()],
            kind: ItemKind::Indicator(Indicator {
                indicator_type: IndicatorType::Domain,
                value: "c2.example.com".into(),
                description: "beacon".into(),
                confidence: 80,
                kill_chain_phases: vec!["mitre-attack:command-and-control".into()],
                valid_from_ms: 1_700_000_000_000,
                valid_until_ms: Some(1_800_000_000_000),
                properties: StixProperties::none(),
            }),
        }
    }

    #[test]
    fn round_trips() {
        let item = sample();
        assert_eq!(Item::decode(&item.encode()).unwrap(), item);
        let revocation = Item {
            kind: ItemKind::Revocation(Revocation {
                indicator_type: IndicatorType::Domain,
                reason: "false positive".into(),
                indicator: None,
            }),
            ..sample()
        };
        assert_eq!(Item::decode(&revocation.encode()).unwrap(), revocation);
    }

    /// The direct encoding gives the very bytes of the wire form's prost encoding, for
    /// every kind of item and the edges of each field (empty, zero, negative, absent,
    /// long enough for a two-byte length).
    #[test]
    fn direct_encoding_is_the_wire_encoding() {
        let long = "x".repeat(300);
        let indicators = [
            match sample().kind {
                ItemKind::Indicator(i) => i,
                _ => unreachable!(),
            },
            Indicator {
                indicator_type: IndicatorType::Url,
                value: long.clone(),
                description: String::new(),
                confidence: 0,
                kill_chain_phases: vec![String::new(), long.clone()],
                valid_from_ms: 0,
                valid_until_ms: Some(0),
                properties: StixProperties::trusted(format!("{{\"name\":\"{long}\"}}")),
            },
            Indicator {
                indicator_type: IndicatorType::StixPattern,
                value: String::new(),
                description: long.clone(),
                confidence: 100,
                kill_chain_phases: Vec::new(),
                valid_from_ms: -5,
                valid_until_ms: Some(-1),
                properties: StixProperties::none(),
            },
        ];
        let mut kinds: Vec<ItemKind> = Vec::new();
        for indicator in &indicators {
            kinds.push(ItemKind::Indicator(indicator.clone()));
            kinds.push(ItemKind::Revocation(Revocation {
                indicator_type: indicator.indicator_type,
                reason: "false positive".into(),
                indicator: Some(Box::new(indicator.clone())),
            }));
        }
        kinds.push(ItemKind::Revocation(Revocation {
            indicator_type: IndicatorType::Domain,
            reason: String::new(),
            indicator: None,
        }));
        for refs in [Vec::new(), vec![ItemId::new_random(), ItemId::new_random()]] {
            for properties in [
                StixProperties::none(),
                StixProperties::trusted(format!("{{\"relationship_type\":\"{long}\"}}")),
            ] {
                kinds.push(ItemKind::Context(ContextObject {
                    object_type: IndicatorType::Relationship,
                    refs: refs.clone(),
                    properties,
                }));
            }
        }
        for kind in kinds {
            for (modified_ms, tlp, tags) in [
                (
                    1_700_000_000_000,
                    Tlp::Amber,
                    vec!["source:honeypot".to_owned()],
                ),
                (0, Tlp::Clear, Vec::new()),
                (-1, Tlp::Red, vec![String::new(), long.clone()]),
                (i64::MAX, Tlp::AmberStrict, vec!["a".to_owned()]),
                (i64::MIN, Tlp::Green, Vec::new()),
            ] {
                let item = Item {
                    modified_ms,
                    tlp,
                    tags,
                    kind: kind.clone(),
                    ..sample()
                };
                let expected = prost::Message::encode_to_vec(&wire::Item::from(&item));
                let encoded = item.encode();
                assert_eq!(encoded, expected, "{item:?}");
                assert_eq!(direct::item_len(&item), encoded.len(), "{item:?}");
            }
        }
    }

    #[test]
    fn rejects_unrepresentable_fields() {
        let mut wire = wire::Item::from(&sample());
        wire.tlp = 0;
        assert!(matches!(
            Item::try_from(wire.clone()),
            Err(ModelError::BadTlp(_))
        ));
        wire.tlp = 99;
        assert!(matches!(
            Item::try_from(wire.clone()),
            Err(ModelError::BadTlp(_))
        ));
        let mut wire = wire::Item::from(&sample());
        wire.id = "bundle--x".into();
        assert!(matches!(Item::try_from(wire), Err(ModelError::BadId(_))));
        let mut wire = wire::Item::from(&sample());
        wire.kind = None;
        assert!(Item::try_from(wire).is_err());
        assert!(Item::decode(&[0xff, 0xff, 0xff]).is_err());
    }
}
