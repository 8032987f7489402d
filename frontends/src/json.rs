//! Config values read strictly: serde_json's own `Value` keeps the last of two equal keys and
//! turns a non-finite float (TOML's `nan`, `inf`) into null, so a typo'd duplicate or a NaN would
//! silently fall back to another value or the default. This reader refuses both, naming the key.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Number, Value};

/// A JSON value without duplicate keys or non-finite numbers, from any serde format.
pub struct StrictValue(pub Value);

impl<'de> Deserialize<'de> for StrictValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        At("").deserialize(d).map(StrictValue)
    }
}

/// A key as errors show it: plain when it is a plain name, quoted and escaped otherwise, so that
/// a key holding a newline or a control character cannot break the one-line error.
pub fn key_name(key: &str) -> Cow<'_, str> {
    if key.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)) && !key.is_empty() {
        Cow::Borrowed(key)
    } else {
        Cow::Owned(format!("{key:?}"))
    }
}

/// Reads the value at a path of keys (`ttt_inner.bias`), for the errors.
#[derive(Clone, Copy)]
struct At<'a>(&'a str);

impl<'de> DeserializeSeed<'de> for At<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for At<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Number::from_f64(v).map(Value::Number).ok_or_else(|| E::custom(format!("config key {} = {v} is not a finite number", key_name(self.0))))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        self.deserialize(d)
    }

    // No capacity from size hints: the elements read are what the allocations follow.
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(self)? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let path = if self.0.is_empty() { key.clone() } else { format!("{}.{key}", self.0) };
            if out.contains_key(&key) {
                return Err(de::Error::custom(format!("duplicate config key {}", key_name(&path))));
            }
            let v = map.next_value_seed(At(&path))?;
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}
