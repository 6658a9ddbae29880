//! A small Go `encoding/gob` codec: enough to speak `net/rpc` with the reference's dhcp
//! plugin and daemon.
//!
//! Decoding is generic (any type definitions the peer sends are understood, values land in
//! a [`Value`] tree keyed by field name, as Go's decoder matches fields by name), so a Go
//! peer's extra or missing fields never break us. Encoding is for the fixed types below
//! ([`Ty`]): each connection sends a type's definition once, before its first value, as
//! Go's encoder does. Wire format (golang.org/pkg/encoding/gob): a stream of messages,
//! each `uint length` then `int typeId` then the payload; a negative id defines a type.

use anyhow::{anyhow, bail, Result};
use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};

/// Largest message we accept: a CNI config is at most 4 MiB, plus the other fields.
const MAX_MESSAGE: u64 = 8 << 20;
/// Nesting bound: our types are 4 deep; a hostile peer cannot recurse us to death.
const MAX_DEPTH: usize = 32;

// Go's predefined type ids.
const T_BOOL: i64 = 1;
const T_INT: i64 = 2;
const T_UINT: i64 = 3;
const T_FLOAT: i64 = 4;
const T_BYTES: i64 = 5;
const T_STRING: i64 = 6;
const T_COMPLEX: i64 = 7;
const T_INTERFACE: i64 = 8;

/// A decoded value. Strings and byte slices are both `Bytes`, as on the wire; a type with
/// its own marshaller (Go's `net.IP` is a TextMarshaler) is `Bytes` too.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Bool(bool),
    Int(i64),
    Uint(u64),
    Float(f64),
    Bytes(Vec<u8>),
    List(Vec<Value>),
    Map(Vec<(Value, Value)>),
    Struct(Vec<(String, Value)>),
}

impl Value {
    pub fn str(s: &str) -> Value {
        Value::Bytes(s.as_bytes().to_vec())
    }

    /// A struct's field (absent when the sender left it at its zero value).
    pub fn field(&self, name: &str) -> Option<&Value> {
        match self {
            Value::Struct(f) => f.iter().find(|(n, _)| n == name).map(|(_, v)| v),
            _ => None,
        }
    }

    /// A string field; absent means "" as in Go.
    pub fn string(&self, name: &str) -> Result<String> {
        match self.field(name) {
            None => Ok(String::new()),
            Some(Value::Bytes(b)) => {
                String::from_utf8(b.clone()).map_err(|_| anyhow!("gob: field {name} is not UTF-8"))
            }
            Some(v) => bail!("gob: field {name} is not a string: {v:?}"),
        }
    }

    pub fn bytes(&self, name: &str) -> Result<Vec<u8>> {
        match self.field(name) {
            None => Ok(Vec::new()),
            Some(Value::Bytes(b)) => Ok(b.clone()),
            Some(v) => bail!("gob: field {name} is not bytes: {v:?}"),
        }
    }

    pub fn int(&self, name: &str) -> Result<Option<i64>> {
        match self.field(name) {
            None => Ok(None),
            Some(Value::Int(i)) => Ok(Some(*i)),
            Some(Value::Uint(u)) => i64::try_from(*u)
                .map(Some)
                .map_err(|_| anyhow!("gob: field {name} out of range")),
            Some(v) => bail!("gob: field {name} is not an integer: {v:?}"),
        }
    }

    pub fn list(&self, name: &str) -> Result<&[Value]> {
        match self.field(name) {
            None => Ok(&[]),
            Some(Value::List(l)) => Ok(l),
            Some(v) => bail!("gob: field {name} is not a list: {v:?}"),
        }
    }

    /// Go's zero value of any type is left out of a struct on the wire.
    fn is_zero(&self) -> bool {
        match self {
            Value::Bool(b) => !b,
            Value::Int(i) => *i == 0,
            Value::Uint(u) => *u == 0,
            Value::Float(f) => *f == 0.0,
            Value::Bytes(b) => b.is_empty(),
            Value::List(l) => l.is_empty(),
            Value::Map(m) => m.is_empty(),
            Value::Struct(_) => false,
        }
    }
}

// ---------------------------------------------------------------------------------------
// The fixed types we send.

/// A type we can encode. User types carry the id we announce on every connection (ids
/// are per stream in gob, so fixed ones are fine).
#[derive(Clone, Copy)]
pub enum Ty {
    Bool,
    Int,
    Uint,
    Bytes,
    Str,
    User(&'static UserTy),
}

pub struct UserTy {
    pub id: i64,
    pub name: &'static str,
    pub kind: UserKind,
}

pub enum UserKind {
    Struct(&'static [(&'static str, Ty)]),
    Slice(Ty),
    /// Encoded by the Go type's MarshalText (Go's `net.IP`).
    Text,
}

impl Ty {
    fn id(self) -> i64 {
        match self {
            Ty::Bool => T_BOOL,
            Ty::Int => T_INT,
            Ty::Uint => T_UINT,
            Ty::Bytes => T_BYTES,
            Ty::Str => T_STRING,
            Ty::User(u) => u.id,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Primitive encoding.

fn put_uint(out: &mut Vec<u8>, x: u64) {
    if x < 128 {
        out.push(x as u8);
        return;
    }
    let bytes = x.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    let n = bytes.len() - skip;
    out.push((256 - n) as u8);
    out.extend_from_slice(&bytes[skip..]);
}

fn put_int(out: &mut Vec<u8>, i: i64) {
    let x = if i < 0 {
        (!(i as u64) << 1) | 1
    } else {
        (i as u64) << 1
    };
    put_uint(out, x);
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_uint(out, b.len() as u64);
    out.extend_from_slice(b);
}

/// A reader over one message's bytes.
struct Buf<'a> {
    b: &'a [u8],
}

impl Buf<'_> {
    fn byte(&mut self) -> Result<u8> {
        let (&first, rest) = self
            .b
            .split_first()
            .ok_or_else(|| anyhow!("gob: message truncated"))?;
        self.b = rest;
        Ok(first)
    }

    fn uint(&mut self) -> Result<u64> {
        let first = self.byte()?;
        if first < 128 {
            return Ok(first as u64);
        }
        let n = 256 - first as usize;
        if n > 8 {
            bail!("gob: invalid uint length {n}");
        }
        let mut x = 0u64;
        for _ in 0..n {
            x = (x << 8) | self.byte()? as u64;
        }
        Ok(x)
    }

    fn int(&mut self) -> Result<i64> {
        let x = self.uint()?;
        Ok(if x & 1 == 1 {
            !(x >> 1) as i64
        } else {
            (x >> 1) as i64
        })
    }

    fn bytes(&mut self) -> Result<Vec<u8>> {
        let n = self.len()?;
        let (head, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(head.to_vec())
    }

    /// A count that must fit in what is left (every element takes at least one byte).
    fn len(&mut self) -> Result<usize> {
        let n = self.uint()?;
        if n > self.b.len() as u64 {
            bail!("gob: length {n} exceeds the message");
        }
        Ok(n as usize)
    }

    fn string(&mut self) -> Result<String> {
        String::from_utf8(self.bytes()?).map_err(|_| anyhow!("gob: string is not UTF-8"))
    }
}

// ---------------------------------------------------------------------------------------
// Type definitions received.

#[derive(Clone, Debug)]
enum Wire {
    Array {
        elem: i64,
        len: u64,
    },
    Slice {
        elem: i64,
    },
    Struct {
        fields: Vec<(String, i64)>,
    },
    Map {
        key: i64,
        elem: i64,
    },
    /// GobEncoder, BinaryMarshaler or TextMarshaler: the value is a byte slice.
    External,
}

/// Walk a struct's fields: `f(field_number, buf)` must consume that field's value.
fn each_field(b: &mut Buf, mut f: impl FnMut(u64, &mut Buf) -> Result<()>) -> Result<()> {
    let mut num = 0u64;
    loop {
        let delta = b.uint()?;
        if delta == 0 {
            return Ok(());
        }
        num = num
            .checked_add(delta)
            .ok_or_else(|| anyhow!("gob: bad field delta"))?;
        f(num, b)?;
    }
}

/// CommonType {Name string; Id typeId}: we need neither (ids come from the message).
fn skip_common(b: &mut Buf) -> Result<()> {
    each_field(b, |n, b| match n {
        1 => b.bytes().map(|_| ()),
        2 => b.int().map(|_| ()),
        _ => bail!("gob: bad CommonType field {n}"),
    })
}

fn parse_wire(b: &mut Buf) -> Result<Wire> {
    let mut wire = None;
    each_field(b, |n, b| {
        let mut elem = 0;
        let mut key = 0;
        let mut len = 0u64;
        let mut fields = Vec::new();
        each_field(b, |m, b| {
            match (n, m) {
                (_, 1) => skip_common(b)?,
                (1, 2) | (2, 2) => elem = b.int()?,
                (1, 3) => len = b.int()?.max(0) as u64,
                (3, 2) => {
                    let count = b.len()?;
                    for _ in 0..count {
                        let mut name = String::new();
                        let mut id = 0;
                        each_field(b, |k, b| {
                            match k {
                                1 => name = b.string()?,
                                2 => id = b.int()?,
                                _ => bail!("gob: bad fieldType field {k}"),
                            }
                            Ok(())
                        })?;
                        fields.push((name, id));
                    }
                }
                (4, 2) => key = b.int()?,
                (4, 3) => elem = b.int()?,
                _ => bail!("gob: bad wireType field {n}.{m}"),
            }
            Ok(())
        })?;
        wire = Some(match n {
            1 => Wire::Array { elem, len },
            2 => Wire::Slice { elem },
            3 => Wire::Struct {
                fields: std::mem::take(&mut fields),
            },
            4 => Wire::Map { key, elem },
            5..=7 => Wire::External,
            _ => bail!("gob: unknown wireType field {n}"),
        });
        Ok(())
    })?;
    wire.ok_or_else(|| anyhow!("gob: empty type definition"))
}

// ---------------------------------------------------------------------------------------
// Decoder

/// One direction of a gob stream (type definitions are remembered per stream).
pub struct Decoder<R> {
    r: R,
    types: HashMap<i64, Wire>,
}

impl<R: Read> Decoder<R> {
    pub fn new(r: R) -> Self {
        Decoder {
            r,
            types: HashMap::new(),
        }
    }

    fn read_stream_uint(&mut self) -> Result<u64> {
        let mut one = [0u8; 1];
        self.r.read_exact(&mut one)?;
        if one[0] < 128 {
            return Ok(one[0] as u64);
        }
        let n = 256 - one[0] as usize;
        if n > 8 {
            bail!("gob: invalid message length prefix");
        }
        let mut buf = [0u8; 8];
        self.r.read_exact(&mut buf[..n])?;
        Ok(buf[..n].iter().fold(0u64, |x, b| (x << 8) | *b as u64))
    }

    /// The next value, after any type definitions that precede it.
    pub fn read(&mut self) -> Result<Value> {
        loop {
            let len = self.read_stream_uint()?;
            if len == 0 || len > MAX_MESSAGE {
                bail!("gob: message length {len} out of range");
            }
            let mut msg = vec![0u8; len as usize];
            self.r.read_exact(&mut msg)?;
            let mut b = Buf { b: &msg };
            let id = b.int()?;
            if id < 0 {
                let wire = parse_wire(&mut b)?;
                if self.types.insert(-id, wire).is_some() {
                    bail!("gob: duplicate type {} received", -id);
                }
                continue;
            }
            let is_struct = matches!(self.types.get(&id), Some(Wire::Struct { .. }));
            if !is_struct && b.uint()? != 0 {
                bail!("gob: bad singleton value");
            }
            return self.value(&mut b, id, 0);
        }
    }

    fn value(&self, b: &mut Buf, id: i64, depth: usize) -> Result<Value> {
        if depth > MAX_DEPTH {
            bail!("gob: values nested too deep");
        }
        Ok(match id {
            T_BOOL => Value::Bool(b.uint()? != 0),
            T_INT => Value::Int(b.int()?),
            T_UINT => Value::Uint(b.uint()?),
            T_FLOAT => {
                let bits = b.uint()?.swap_bytes();
                Value::Float(f64::from_bits(bits))
            }
            T_BYTES | T_STRING => Value::Bytes(b.bytes()?),
            T_COMPLEX => {
                b.uint()?;
                b.uint()?;
                Value::Float(0.0)
            }
            T_INTERFACE => bail!("gob: interface values are not supported"),
            _ => match self.types.get(&id) {
                None => bail!("gob: undefined type id {id}"),
                Some(Wire::External) => Value::Bytes(b.bytes()?),
                Some(Wire::Slice { elem }) | Some(Wire::Array { elem, .. }) => {
                    let n = b.len()?;
                    if let Some(Wire::Array { len, .. }) = self.types.get(&id) {
                        if n as u64 != *len {
                            bail!("gob: array of {n} elements, type says {len}");
                        }
                    }
                    let mut out = Vec::with_capacity(n);
                    for _ in 0..n {
                        out.push(self.value(b, *elem, depth + 1)?);
                    }
                    Value::List(out)
                }
                Some(Wire::Map { key, elem }) => {
                    let n = b.len()?;
                    let mut out = Vec::with_capacity(n);
                    for _ in 0..n {
                        let k = self.value(b, *key, depth + 1)?;
                        let v = self.value(b, *elem, depth + 1)?;
                        out.push((k, v));
                    }
                    Value::Map(out)
                }
                Some(Wire::Struct { fields }) => {
                    let mut out = Vec::new();
                    each_field(b, |n, b| {
                        let (name, fid) = fields
                            .get((n - 1) as usize)
                            .ok_or_else(|| anyhow!("gob: field {n} out of range"))?;
                        out.push((name.clone(), self.value(b, *fid, depth + 1)?));
                        Ok(())
                    })?;
                    Value::Struct(out)
                }
            },
        })
    }
}

// ---------------------------------------------------------------------------------------
// Encoder

/// One direction of a gob stream: remembers which type definitions were sent.
pub struct Encoder<W> {
    w: W,
    sent: HashSet<i64>,
}

fn message(out: &mut Vec<u8>, payload: &[u8]) {
    put_uint(out, payload.len() as u64);
    out.extend_from_slice(payload);
}

impl<W: Write> Encoder<W> {
    pub fn new(w: W) -> Self {
        Encoder {
            w,
            sent: HashSet::new(),
        }
    }

    pub fn get_mut(&mut self) -> &mut W {
        &mut self.w
    }

    /// Append the definitions of `ty` and every type inside it not yet sent.
    fn define(&mut self, out: &mut Vec<u8>, ty: Ty) {
        let Ty::User(u) = ty else { return };
        if !self.sent.insert(u.id) {
            return;
        }
        let mut p = Vec::new();
        put_int(&mut p, -u.id);
        let common = |p: &mut Vec<u8>| {
            // CommonType {Name, Id}
            put_uint(p, 1);
            put_uint(p, 1);
            put_bytes(p, u.name.as_bytes());
            put_uint(p, 1);
            put_int(p, u.id);
            put_uint(p, 0);
        };
        match &u.kind {
            UserKind::Struct(fields) => {
                put_uint(&mut p, 3); // StructT
                common(&mut p);
                if !fields.is_empty() {
                    put_uint(&mut p, 1); // Field []fieldType
                    put_uint(&mut p, fields.len() as u64);
                    for (name, fty) in fields.iter() {
                        put_uint(&mut p, 1);
                        put_bytes(&mut p, name.as_bytes());
                        put_uint(&mut p, 1);
                        put_int(&mut p, fty.id());
                        put_uint(&mut p, 0);
                    }
                }
                put_uint(&mut p, 0);
            }
            UserKind::Slice(elem) => {
                put_uint(&mut p, 2); // SliceT
                common(&mut p);
                put_uint(&mut p, 1);
                put_int(&mut p, elem.id());
                put_uint(&mut p, 0);
            }
            UserKind::Text => {
                put_uint(&mut p, 7); // TextMarshalerT
                common(&mut p);
                put_uint(&mut p, 0);
            }
        }
        put_uint(&mut p, 0); // end of wireType
        message(out, &p);
        match &u.kind {
            UserKind::Struct(fields) => {
                for (_, fty) in fields.iter() {
                    self.define(out, *fty);
                }
            }
            UserKind::Slice(elem) => self.define(out, *elem),
            UserKind::Text => {}
        }
    }

    /// Queue `v` as a value of type `ty` (a struct type) into `out`.
    pub fn encode(&mut self, out: &mut Vec<u8>, ty: &'static UserTy, v: &Value) -> Result<()> {
        self.define(out, Ty::User(ty));
        let mut p = Vec::new();
        put_int(&mut p, ty.id);
        encode_value(&mut p, Ty::User(ty), v)?;
        message(out, &p);
        Ok(())
    }

    /// Encode then write a batch of messages in one write.
    pub fn send(&mut self, items: &[(&'static UserTy, &Value)]) -> Result<()> {
        let mut out = Vec::new();
        for (ty, v) in items {
            self.encode(&mut out, ty, v)?;
        }
        self.w.write_all(&out)?;
        self.w.flush()?;
        Ok(())
    }
}

fn encode_value(p: &mut Vec<u8>, ty: Ty, v: &Value) -> Result<()> {
    match (ty, v) {
        (Ty::Bool, Value::Bool(b)) => put_uint(p, *b as u64),
        (Ty::Int, Value::Int(i)) => put_int(p, *i),
        (Ty::Uint, Value::Uint(u)) => put_uint(p, *u),
        (Ty::Bytes | Ty::Str, Value::Bytes(b)) => put_bytes(p, b),
        (Ty::User(u), v) => match (&u.kind, v) {
            (UserKind::Text, Value::Bytes(b)) => put_bytes(p, b),
            (UserKind::Slice(elem), Value::List(items)) => {
                put_uint(p, items.len() as u64);
                for item in items {
                    encode_value(p, *elem, item)?;
                }
            }
            (UserKind::Struct(fields), Value::Struct(values)) => {
                let mut last = 0usize;
                for (i, (name, fty)) in fields.iter().enumerate() {
                    let Some((_, fv)) = values.iter().find(|(n, _)| n == name) else {
                        continue;
                    };
                    if fv.is_zero() {
                        continue;
                    }
                    put_uint(p, (i + 1 - last) as u64);
                    last = i + 1;
                    encode_value(p, *fty, fv)?;
                }
                put_uint(p, 0);
            }
            _ => bail!("gob: value {v:?} does not fit type {}", u.name),
        },
        _ => bail!("gob: value {v:?} does not fit its type"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    static INNER: UserTy = UserTy {
        id: 70,
        name: "Inner",
        kind: UserKind::Struct(&[("A", Ty::Int), ("B", Ty::Str)]),
    };
    static INNERS: UserTy = UserTy {
        id: 71,
        name: "[]Inner",
        kind: UserKind::Slice(Ty::User(&INNER)),
    };
    static IP: UserTy = UserTy {
        id: 72,
        name: "IP",
        kind: UserKind::Text,
    };
    static OUTER: UserTy = UserTy {
        id: 69,
        name: "Outer",
        kind: UserKind::Struct(&[
            ("Name", Ty::Str),
            ("Seq", Ty::Uint),
            ("Items", Ty::User(&INNERS)),
            ("Addr", Ty::User(&IP)),
        ]),
    };

    #[test]
    fn uints_match_go() {
        // From the gob documentation: 7 is 07, 256 is FE 01 00.
        let mut v = Vec::new();
        put_uint(&mut v, 7);
        put_uint(&mut v, 256);
        assert_eq!(v, [7, 0xfe, 1, 0]);
        let mut v = Vec::new();
        put_int(&mut v, -129);
        put_int(&mut v, 3);
        // -129 is (128<<1)|1 = 257 = FE 01 01; 3 is 6.
        assert_eq!(v, [0xfe, 1, 1, 6]);
    }

    #[test]
    fn round_trip_through_definitions() {
        let v = Value::Struct(vec![
            ("Name".into(), Value::str("DHCP.Allocate")),
            ("Seq".into(), Value::Uint(300)),
            (
                "Items".into(),
                Value::List(vec![
                    Value::Struct(vec![("A".into(), Value::Int(-5))]),
                    Value::Struct(vec![("B".into(), Value::str("x"))]),
                ]),
            ),
            ("Addr".into(), Value::str("10.0.0.1")),
        ]);
        let mut enc = Encoder::new(Vec::new());
        enc.send(&[(&OUTER, &v), (&OUTER, &v)]).unwrap();
        let bytes = enc.w;
        let mut dec = Decoder::new(&bytes[..]);
        for _ in 0..2 {
            let got = dec.read().unwrap();
            assert_eq!(got.string("Name").unwrap(), "DHCP.Allocate");
            assert_eq!(got.int("Seq").unwrap(), Some(300));
            assert_eq!(got.string("Addr").unwrap(), "10.0.0.1");
            let items = got.list("Items").unwrap();
            assert_eq!(items[0].int("A").unwrap(), Some(-5));
            assert_eq!(items[1].string("B").unwrap(), "x");
        }
        assert!(dec.read().is_err(), "the stream ends");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bytes in [
            &[0x05, 0x01][..],
            &[0xff, 0xff, 0xff],
            &[0x03, 0x81, 0x03, 0x04],
            &[0x02, 0x80, 0x00],
            &[0x04, 0x83, 0x00, 0x0a, 0x0b],
        ] {
            let mut d = Decoder::new(bytes);
            assert!(d.read().is_err(), "{bytes:?}");
        }
    }
}
