//! Decode JSON the way Go's `encoding/json` does for the reference plugins.
//!
//! Real configs rely on Go's leniency: object keys match struct fields
//! case-insensitively (`bandWidth` fills `bandwidth`), an exact match is preferred,
//! unknown keys are ignored and, with duplicates, the later key wins. serde matches
//! keys exactly, so [`from_value`] wraps a `serde_json::Value` in a deserializer that,
//! whenever serde asks for a struct (and hands us its field names), renames the
//! object's keys to the canonical spelling first. Everything else is delegated to
//! `serde_json::Value`'s own deserializer, so type errors read the same.
//!
//! Do not use `#[serde(flatten)]` in config structs: serde decodes flattened fields as a
//! map without field names, so their keys would be matched exactly.

use serde::de::{
    self, DeserializeOwned, DeserializeSeed, IntoDeserializer, MapAccess, SeqAccess, Visitor,
};
use serde_json::{Map, Value};

/// Deserialize `T` from `v` with Go-style case-insensitive field matching.
pub fn from_value<T: DeserializeOwned>(v: Value) -> Result<T, serde_json::Error> {
    T::deserialize(Ci(v))
}

/// Parse bytes as JSON, then decode `T` with [`from_value`].
pub fn from_slice<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, serde_json::Error> {
    from_value(serde_json::from_slice(bytes)?)
}

/// Look a key up in an object the way Go would for a field named `name`.
pub fn get_ci<'a>(obj: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    obj.get(name).or_else(|| {
        obj.iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
            .next_back()
    })
}

fn canonical_keys(obj: Map<String, Value>, fields: &'static [&'static str]) -> Map<String, Value> {
    let mut out = Map::with_capacity(obj.len());
    for (k, v) in obj {
        // Go leaves a field untouched for `null`; dropping the key gives serde's default.
        if v.is_null() {
            continue;
        }
        let key = if fields.contains(&k.as_str()) {
            k
        } else {
            match fields.iter().find(|f| f.eq_ignore_ascii_case(&k)) {
                Some(f) => (*f).to_string(),
                None => k,
            }
        };
        // Later duplicates overwrite earlier ones, as Go does.
        out.insert(key, v);
    }
    out
}

struct Ci(Value);

impl<'de> de::Deserializer<'de> for Ci {
    type Error = serde_json::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Object(m) => visitor.visit_map(CiMap::new(m)),
            Value::Array(a) => visitor.visit_seq(CiSeq(a.into_iter())),
            other => other.deserialize_any(visitor),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Null => visitor.visit_none(),
            v => visitor.visit_some(Ci(v)),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Object(m) => visitor.visit_map(CiMap::new(canonical_keys(m, fields))),
            other => other.deserialize_struct(name, fields, visitor),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.0.deserialize_enum(name, variants, visitor)
    }

    fn deserialize_u8<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Self::Error> {
        self.0.deserialize_u8(v)
    }
    fn deserialize_u16<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Self::Error> {
        self.0.deserialize_u16(v)
    }
    fn deserialize_u32<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Self::Error> {
        self.0.deserialize_u32(v)
    }
    fn deserialize_u64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Self::Error> {
        self.0.deserialize_u64(v)
    }
    fn deserialize_i8<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Self::Error> {
        self.0.deserialize_i8(v)
    }
    fn deserialize_i16<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Self::Error> {
        self.0.deserialize_i16(v)
    }
    fn deserialize_i32<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Self::Error> {
        self.0.deserialize_i32(v)
    }
    fn deserialize_i64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Self::Error> {
        self.0.deserialize_i64(v)
    }

    serde::forward_to_deserialize_any! {
        bool i128 u128 f32 f64 char str string bytes byte_buf unit unit_struct
        seq tuple tuple_struct map identifier ignored_any
    }
}

struct CiMap {
    iter: serde_json::map::IntoIter,
    value: Option<Value>,
}

impl CiMap {
    fn new(m: Map<String, Value>) -> Self {
        CiMap {
            iter: m.into_iter(),
            value: None,
        }
    }
}

impl<'de> MapAccess<'de> for CiMap {
    type Error = serde_json::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Self::Error> {
        match self.iter.next() {
            Some((k, v)) => {
                self.value = Some(v);
                seed.deserialize(k.into_deserializer()).map(Some)
            }
            None => Ok(None),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, Self::Error> {
        let v = self.value.take().unwrap_or(Value::Null);
        seed.deserialize(Ci(v))
    }
}

struct CiSeq(std::vec::IntoIter<Value>);

impl<'de> SeqAccess<'de> for CiSeq {
    type Error = serde_json::Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Self::Error> {
        match self.0.next() {
            Some(v) => seed.deserialize(Ci(v)).map(Some),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::json;

    #[derive(Deserialize, Debug, Default)]
    #[serde(default)]
    struct Inner {
        #[serde(rename = "ingressRate")]
        ingress_rate: u64,
    }

    #[derive(Deserialize, Debug, Default)]
    #[serde(default)]
    struct Outer {
        name: String,
        #[serde(rename = "isGateway")]
        is_gateway: bool,
        bandwidth: Option<Inner>,
        list: Vec<Inner>,
        mtu: u32,
    }

    #[test]
    fn keys_match_case_insensitively_at_every_depth() {
        let v = json!({"NAME": "n", "isgateway": true, "bandWidth": {"INGRESSRATE": 5},
                       "List": [{"ingressrate": 7}], "unknown": 1});
        let o: Outer = from_value(v).unwrap();
        assert_eq!(o.name, "n");
        assert!(o.is_gateway);
        assert_eq!(o.bandwidth.unwrap().ingress_rate, 5);
        assert_eq!(o.list[0].ingress_rate, 7);
    }

    #[test]
    fn exact_match_preferred_and_last_duplicate_wins() {
        let o: Outer = from_value(json!({"MTU": 1, "mtu": 2})).unwrap();
        assert_eq!(o.mtu, 2);
        let o: Outer = from_value(json!({"mtu": 2, "Mtu": 3})).unwrap();
        assert_eq!(o.mtu, 3);
    }

    #[test]
    fn type_mismatch_is_an_error() {
        assert!(from_value::<Outer>(json!({"mtu": "1500"})).is_err());
        assert!(from_value::<Outer>(json!({"mtu": 1.5})).is_err());
        assert!(from_value::<Outer>(json!({"mtu": -1})).is_err());
        assert!(from_value::<Outer>(json!({"isGateway": "true"})).is_err());
    }

    #[test]
    fn null_means_absent() {
        let o: Outer = from_value(json!({"bandwidth": null, "mtu": null})).unwrap();
        assert!(o.bandwidth.is_none());
    }
}
