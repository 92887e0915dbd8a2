//! A JSON document as the detectors read it: strings (borrowed from the body when they have no
//! escapes, so most are never copied), arrays and objects; numbers, booleans and null are only
//! checked. Parsed by serde_json like `serde_json::Value`, with the same errors, and objects in
//! the same order as `Value`'s map (sorted by key, the last of duplicate keys kept).

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use std::borrow::Cow;
use std::fmt;

pub enum Json<'a> {
    String(Cow<'a, str>),
    Array(Vec<Json<'a>>),
    /// Sorted by key, the last of duplicate keys kept.
    Object(Vec<(Cow<'a, str>, Json<'a>)>),
    /// A number, a boolean or null.
    Other,
}

impl<'a> Json<'a> {
    pub fn parse(text: &'a str) -> Option<Json<'a>> {
        serde_json::from_str(text).ok()
    }
}

impl<'de> Deserialize<'de> for Json<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Json<'de>, E> {
        Ok(Json::Other)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Json<'de>, E> {
        Ok(Json::Other)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Json<'de>, E> {
        Ok(Json::Other)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Json<'de>, E> {
        Ok(Json::Other)
    }

    fn visit_unit<E>(self) -> Result<Json<'de>, E> {
        Ok(Json::Other)
    }

    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Json<'de>, E> {
        Ok(Json::String(Cow::Borrowed(s)))
    }

    fn visit_str<E>(self, s: &str) -> Result<Json<'de>, E> {
        Ok(Json::String(Cow::Owned(s.to_string())))
    }

    fn visit_string<E>(self, s: String) -> Result<Json<'de>, E> {
        Ok(Json::String(Cow::Owned(s)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json<'de>, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Json::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json<'de>, A::Error> {
        let mut object = Vec::new();
        while let Some((Key(k), v)) = map.next_entry()? {
            object.push((k, v));
        }
        // What a `BTreeMap` would hold, without its nodes: a stable sort keeps duplicate keys in
        // document order, and each later one is moved into the place of the earlier one it
        // replaces.
        object.sort_by(|a, b| a.0.cmp(&b.0));
        object.dedup_by(|later, earlier| {
            let duplicate = later.0 == earlier.0;
            if duplicate {
                std::mem::swap(later, earlier);
            }
            duplicate
        });
        Ok(Json::Object(object))
    }
}

/// An object key, borrowed when it has no escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object key")
            }

            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(s)))
            }

            fn visit_str<E>(self, s: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s.to_string())))
            }

            fn visit_string<E>(self, s: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s)))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The strings of a document in walking order, as `serde_json::Value` gives them.
    fn strings_of_value(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::String(s) => out.push(s.clone()),
            serde_json::Value::Array(items) => items.iter().for_each(|i| strings_of_value(i, out)),
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    out.push(format!("key {k}"));
                    strings_of_value(v, out);
                }
            }
            _ => {}
        }
    }

    fn strings_of_json(v: &Json, out: &mut Vec<String>) {
        match v {
            Json::String(s) => out.push(s.to_string()),
            Json::Array(items) => items.iter().for_each(|i| strings_of_json(i, out)),
            Json::Object(map) => {
                for (k, v) in map {
                    out.push(format!("key {k}"));
                    strings_of_json(v, out);
                }
            }
            Json::Other => {}
        }
    }

    #[test]
    fn reads_documents_as_serde_json_value_does() {
        for text in [
            r#"{"b": "x", "a": ["y", 1, true, null, {"c": "\u0041\n"}], "b": "z", "é\"k": 1e400}"#,
            r#"{"b": "x", "a": ["y", 1, true, null, {"c": "\u0041\n"}], "b": "z", "é\"k": 2.5}"#,
            r#"["\ud800"]"#,
            r#"{"a": 1} trailing"#,
            r#"[[[["deep"]]]]"#,
            "\"just a string\"",
            "{\"k\": 18446744073709551616}",
        ] {
            let value = serde_json::from_str::<serde_json::Value>(text).ok();
            let json = Json::parse(text);
            assert_eq!(value.is_some(), json.is_some(), "{text}");
            if let (Some(value), Some(json)) = (value, json) {
                let (mut a, mut b) = (vec![], vec![]);
                strings_of_value(&value, &mut a);
                strings_of_json(&json, &mut b);
                assert_eq!(a, b, "{text}");
            }
        }
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert!(serde_json::from_str::<serde_json::Value>(&deep).is_err());
        assert!(Json::parse(&deep).is_none());
    }
}
