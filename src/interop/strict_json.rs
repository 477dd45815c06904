//! JSON read so that a name given twice in one object, at any depth, is an error.
//! Parsers disagree on which of the two counts (`serde_json` and Python keep the last,
//! others the first), so such a text has no one meaning: the marking a publisher's tool
//! saw could be another than the one this node would read. Everything the node takes
//! from outside as STIX or MISP JSON is read through here.

use std::cell::Cell;
use std::fmt;

use serde::de::{self, Deserialize, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// Longest name shown in an error.
const SHOWN_NAME_CHARS: usize = 80;

/// A JSON value in which no object gives a name twice.
pub struct StrictValue(pub Value);

impl<'de> Deserialize<'de> for StrictValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let left = Cell::new(usize::MAX);
        deserializer
            .deserialize_any(StrictVisitor { left: &left })
            .map(StrictValue)
    }
}

/// Reads `bytes` as JSON, refusing a name given twice in one object.
pub fn from_slice(bytes: &[u8]) -> Result<Value, serde_json::Error> {
    serde_json::from_slice::<StrictValue>(bytes).map(|v| v.0)
}

/// [`from_slice`], refusing a text of more than `max_values` values (each scalar, array
/// and object counts one) before it is built whole: a value takes 32 bytes or more in
/// memory for as few as two bytes of text (`[]`), so the size of a text alone does not
/// bound what reading it takes.
pub fn from_slice_within(bytes: &[u8], max_values: usize) -> Result<Value, serde_json::Error> {
    let left = Cell::new(max_values);
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = Budget { left: &left }.deserialize(&mut deserializer)?;
    deserializer.end()?;
    Ok(value)
}

/// Reads one value, refusing a name given twice, and counts each of its values against
/// `left`, the budget shared by every level of one read (see [`from_slice_within`]).
#[derive(Clone, Copy)]
pub(crate) struct Budget<'a> {
    left: &'a Cell<usize>,
}

impl<'a> Budget<'a> {
    pub(crate) fn new(left: &'a Cell<usize>) -> Self {
        Budget { left }
    }

    /// Counts one value that the caller builds itself (an object it reads field by
    /// field, for instance).
    pub(crate) fn take<E: de::Error>(&self) -> Result<(), E> {
        StrictVisitor { left: self.left }.take()
    }
}

impl<'de> DeserializeSeed<'de> for Budget<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(StrictVisitor { left: self.left })
    }
}

struct StrictVisitor<'a> {
    left: &'a Cell<usize>,
}

impl StrictVisitor<'_> {
    /// Counts one value against the budget.
    fn take<E: de::Error>(&self) -> Result<(), E> {
        match self.left.get().checked_sub(1) {
            Some(left) => {
                self.left.set(left);
                Ok(())
            }
            None => Err(E::custom(
                "more JSON values than this node reads in one text",
            )),
        }
    }
}

impl<'de> Visitor<'de> for StrictVisitor<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        self.take()?;
        Ok(Value::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        self.take()?;
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        self.take()?;
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        self.take()?;
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        self.take()?;
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        self.take()?;
        Ok(Value::String(v))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        self.take()?;
        Ok(Value::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        self.take()?;
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        Budget { left: self.left }.deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        self.take()?;
        let mut out = Vec::new();
        while let Some(value) = seq.next_element_seed(Budget { left: self.left })? {
            out.push(value);
        }
        Ok(Value::Array(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        self.take()?;
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                let shown: String = key.chars().take(SHOWN_NAME_CHARS).collect();
                return Err(de::Error::custom(format!(
                    "the name {shown:?} is given twice in one object"
                )));
            }
            let value = map.next_value_seed(Budget { left: self.left })?;
            out.insert(key, value);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_given_twice_at_any_depth_is_refused() {
        for text in [
            r#"{"a":1,"a":2}"#,
            r#"{"x":[{"marking_ref":"m1","marking_ref":"m2"}]}"#,
            r#"[{"b":{"c":true,"c":false}}]"#,
        ] {
            let error = from_slice(text.as_bytes()).unwrap_err().to_string();
            assert!(error.contains("given twice"), "{text}: {error}");
        }
        let text = r#"{"a":[1,-2,2.5,"s",null,true,{"b":{}}],"c":{"a":1}}"#;
        assert_eq!(
            from_slice(text.as_bytes()).unwrap(),
            serde_json::from_str::<Value>(text).unwrap()
        );
        // Nesting is bounded as serde_json bounds it.
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(from_slice(deep.as_bytes()).is_err());
    }

    #[test]
    fn a_text_of_more_values_than_allowed_is_refused() {
        let text = format!("{{\"a\":[{}]}}", vec!["[]"; 99].join(","));
        // The object, the array and its 99 elements.
        assert!(from_slice_within(text.as_bytes(), 101).is_ok());
        let error = from_slice_within(text.as_bytes(), 100).unwrap_err();
        assert!(error.to_string().contains("more JSON values"), "{error}");
        assert!(from_slice_within(br#"{"a":1,"a":2}"#, 100).is_err());
        assert!(from_slice_within(b"{} []", 100).is_err());
    }
}
