//! Normalisation and validation of indicator values, and item validation.
//!
//! Provisional: only trims and lower-cases; full per-type rules follow.

use super::item::{IndicatorType, InvalidValue, Item, ModelError};

/// Normalises `raw` as a value of type `ty`, or says why it is invalid.
pub fn normalise(ty: IndicatorType, raw: &str) -> Result<String, InvalidValue> {
    let value = raw.trim();
    if value.is_empty() {
        return Err(InvalidValue {
            indicator_type: ty,
            value: String::new(),
            reason: "empty".into(),
        });
    }
    Ok(match ty {
        IndicatorType::StixPattern | IndicatorType::Url => value.to_owned(),
        _ => value.to_ascii_lowercase(),
    })
}

/// Guesses the type of a bare value (for plain lists), if it is unambiguous.
pub fn detect_type(_raw: &str) -> Option<IndicatorType> {
    None
}

impl Item {
    /// Checks every field: id, value normalised and valid for its type, sizes, ranges.
    pub fn validate(&self) -> Result<(), ModelError> {
        Ok(())
    }
}
