//! A restricted reader of the pickle that `torch.save` writes for a state dict (`data.pkl`):
//! a dict or `OrderedDict` of names to tensors.
//!
//! Nothing is executed. The reader is a small stack machine that knows the opcodes such a
//! pickle uses (protocol 2, and the few protocol 4 opcodes a `pickle_protocol=4` save adds) and
//! an allow-list of classes: `collections.OrderedDict`, `torch._utils._rebuild_tensor_v2`,
//! `torch._utils._rebuild_parameter` and the typed storage classes (`torch.FloatStorage`, ...)
//! that name a tensor's storage in its persistent id. Any other opcode or class is an error that
//! names it. Values are shared, not copied, when the memo hands them out again, nesting is
//! bounded, and the copies made when a shared dict is extended are counted against a budget
//! proportional to the pickle's length, so no input makes the reader recurse deeply, allocate
//! much more than the input's size or run for long.

use std::collections::HashMap;
use std::rc::Rc;

use super::DType;

/// Deepest nesting of tuples and dicts accepted (a state dict needs 4 or so).
const MAX_DEPTH: usize = 64;

/// A typed storage class of torch (`torch.FloatStorage`, ...), as named in a pickle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StorageKind {
    /// The class name less `Storage` (`Float`, `BFloat16`, `Long`, ...).
    pub name: &'static str,
    /// Bytes per element.
    pub element_size: usize,
}

/// The storage classes a state dict may name, with their element sizes.
const STORAGE_KINDS: [(&str, usize); 15] = [
    ("Float", 4),
    ("Half", 2),
    ("BFloat16", 2),
    ("Double", 8),
    ("Long", 8),
    ("Int", 4),
    ("Short", 2),
    ("Char", 1),
    ("Byte", 1),
    ("Bool", 1),
    ("ComplexFloat", 8),
    ("ComplexDouble", 16),
    ("Float8_e4m3fn", 1),
    ("Float8_e5m2", 1),
    ("UInt16", 2),
];

impl StorageKind {
    /// The kind whose class is `torch.<class>`, if it is a storage class.
    fn from_class(class: &str) -> Option<StorageKind> {
        let name = class.strip_suffix("Storage")?;
        STORAGE_KINDS
            .iter()
            .find(|(n, _)| *n == name)
            .map(|&(name, element_size)| StorageKind { name, element_size })
    }

    /// The crate's type for these elements, or the storage's name for a type it does not read.
    pub fn dtype(&self) -> std::result::Result<DType, String> {
        match self.name {
            "Float" => Ok(DType::F32),
            "Half" => Ok(DType::F16),
            "BFloat16" => Ok(DType::Bf16),
            other => Err(other.to_string()),
        }
    }
}

/// A storage named by a tensor's persistent id: `('storage', class, key, location, numel)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StorageRecord {
    /// The element type.
    pub kind: StorageKind,
    /// The record holding the bytes: `<archive>/data/<key>`.
    pub key: String,
    /// The device it was saved from (`cpu`, `cuda:0`); not used.
    pub location: String,
    /// Number of elements.
    pub numel: u64,
}

/// A tensor as `_rebuild_tensor_v2` would build it: a view of a storage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorRecord {
    /// The storage viewed.
    pub storage: Rc<StorageRecord>,
    /// Offset of the first element within the storage, in elements.
    pub offset: u64,
    /// The shape, outermost axis first.
    pub shape: Vec<u64>,
    /// The step between neighbours along each axis, in elements.
    pub stride: Vec<u64>,
}

/// An allow-listed class named by `GLOBAL`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    OrderedDict,
    RebuildTensor,
    RebuildParameter,
    Storage(StorageKind),
}

/// A tuple's items or a dict's keys and values (flattened in pairs), with the nesting depth.
#[derive(Clone, Debug)]
struct Node {
    items: Vec<Value>,
    depth: usize,
}

/// A value on the stack or in the memo. Compound values are shared (`Rc`), so handing a memo
/// entry out again costs nothing.
#[derive(Clone, Debug)]
enum Value {
    None,
    Bool,
    Int(i64),
    Str(Rc<str>),
    Tuple(Rc<Node>),
    Dict(Rc<Node>),
    Class(Class),
    Storage(Rc<StorageRecord>),
    Tensor(Rc<TensorRecord>),
}

impl Value {
    fn depth(&self) -> usize {
        match self {
            Value::Tuple(n) | Value::Dict(n) => n.depth,
            _ => 0,
        }
    }

    /// What the value is, for errors.
    fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool => "a bool",
            Value::Int(_) => "an int",
            Value::Str(_) => "a string",
            Value::Tuple(_) => "a tuple",
            Value::Dict(_) => "a dict",
            Value::Class(_) => "a class",
            Value::Storage(_) => "a storage",
            Value::Tensor(_) => "a tensor",
        }
    }
}

/// The name of every pickle opcode (protocols 0 to 5), for errors.
fn opcode_name(op: u8) -> Option<&'static str> {
    Some(match op {
        b'(' => "MARK",
        b'.' => "STOP",
        b'0' => "POP",
        b'1' => "POP_MARK",
        b'2' => "DUP",
        b'F' => "FLOAT",
        b'I' => "INT",
        b'J' => "BININT",
        b'K' => "BININT1",
        b'L' => "LONG",
        b'M' => "BININT2",
        b'N' => "NONE",
        b'P' => "PERSID",
        b'Q' => "BINPERSID",
        b'R' => "REDUCE",
        b'S' => "STRING",
        b'T' => "BINSTRING",
        b'U' => "SHORT_BINSTRING",
        b'V' => "UNICODE",
        b'X' => "BINUNICODE",
        b'a' => "APPEND",
        b'b' => "BUILD",
        b'c' => "GLOBAL",
        b'd' => "DICT",
        b'}' => "EMPTY_DICT",
        b'e' => "APPENDS",
        b'g' => "GET",
        b'h' => "BINGET",
        b'i' => "INST",
        b'j' => "LONG_BINGET",
        b'l' => "LIST",
        b']' => "EMPTY_LIST",
        b'o' => "OBJ",
        b'p' => "PUT",
        b'q' => "BINPUT",
        b'r' => "LONG_BINPUT",
        b's' => "SETITEM",
        b't' => "TUPLE",
        b')' => "EMPTY_TUPLE",
        b'u' => "SETITEMS",
        b'G' => "BINFLOAT",
        0x80 => "PROTO",
        0x81 => "NEWOBJ",
        0x82 => "EXT1",
        0x83 => "EXT2",
        0x84 => "EXT4",
        0x85 => "TUPLE1",
        0x86 => "TUPLE2",
        0x87 => "TUPLE3",
        0x88 => "NEWTRUE",
        0x89 => "NEWFALSE",
        0x8a => "LONG1",
        0x8b => "LONG4",
        0x8c => "SHORT_BINUNICODE",
        0x8d => "BINUNICODE8",
        0x8e => "BINBYTES8",
        0x8f => "EMPTY_SET",
        0x90 => "ADDITEMS",
        0x91 => "FROZENSET",
        0x92 => "NEWOBJ_EX",
        0x93 => "STACK_GLOBAL",
        0x94 => "MEMOIZE",
        0x95 => "FRAME",
        0x96 => "BYTEARRAY8",
        0x97 => "NEXT_BUFFER",
        0x98 => "READONLY_BUFFER",
        b'B' => "BINBYTES",
        b'C' => "SHORT_BINBYTES",
        _ => return None,
    })
}

/// The stack machine.
struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    /// Items that may still be copied when a shared dict is extended.
    budget: usize,
}

type Res<T> = std::result::Result<T, String>;

impl<'a> Machine<'a> {
    fn take(&mut self, n: usize) -> Res<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or_else(|| {
                format!(
                    "truncated: {n} bytes wanted at byte {} of {}",
                    self.pos,
                    self.data.len()
                )
            })?;
        let bytes = &self.data[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn u8(&mut self) -> Res<u8> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Res<u16> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2")))
    }

    fn u32(&mut self) -> Res<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }

    fn u64(&mut self) -> Res<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }

    /// A line up to `\n` (for `GLOBAL`).
    fn line(&mut self) -> Res<&'a str> {
        let rest = &self.data[self.pos..];
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or("truncated: a GLOBAL name has no end of line")?;
        let line = std::str::from_utf8(&rest[..n]).map_err(|_| "a GLOBAL name is not UTF-8")?;
        self.pos += n + 1;
        Ok(line)
    }

    fn string(&mut self, n: usize) -> Res<Value> {
        let bytes = self.take(n)?;
        let s = std::str::from_utf8(bytes).map_err(|_| "a string is not UTF-8".to_string())?;
        Ok(Value::Str(s.into()))
    }

    fn pop(&mut self) -> Res<Value> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err("stack underflow".into());
        }
        Ok(self.stack.pop().expect("checked"))
    }

    fn top(&mut self) -> Res<&mut Value> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err("stack underflow".into());
        }
        Ok(self.stack.last_mut().expect("checked"))
    }

    /// The items since the last MARK, which is removed.
    fn pop_mark(&mut self) -> Res<Vec<Value>> {
        let mark = self.marks.pop().ok_or("no MARK to pop to")?;
        Ok(self.stack.split_off(mark))
    }

    fn push(&mut self, v: Value) {
        self.stack.push(v);
    }

    fn tuple(items: Vec<Value>) -> Res<Value> {
        let depth = 1 + items.iter().map(Value::depth).max().unwrap_or(0);
        if depth > MAX_DEPTH {
            return Err(format!("values nested deeper than {MAX_DEPTH}"));
        }
        Ok(Value::Tuple(Rc::new(Node { items, depth })))
    }

    fn empty_dict() -> Value {
        Value::Dict(Rc::new(Node {
            items: Vec::new(),
            depth: 1,
        }))
    }

    /// Adds key-value pairs to the dict on top of the stack (copying it first if the memo
    /// shares it, against the budget).
    fn set_items(&mut self, pairs: Vec<Value>) -> Res<()> {
        if !pairs.len().is_multiple_of(2) {
            return Err("SETITEMS with an odd number of items".into());
        }
        let depth = 1 + pairs.iter().map(Value::depth).max().unwrap_or(0);
        if depth > MAX_DEPTH {
            return Err(format!("values nested deeper than {MAX_DEPTH}"));
        }
        let mut budget = self.budget;
        let Value::Dict(node) = self.top()? else {
            let kind = self.top()?.kind();
            return Err(format!("SETITEM(S) on {kind}, not a dict"));
        };
        if Rc::strong_count(node) > 1 {
            budget = budget
                .checked_sub(node.items.len())
                .ok_or("too many copies of shared dicts")?;
        }
        let node = Rc::make_mut(node);
        node.depth = node.depth.max(depth);
        node.items.extend(pairs);
        self.budget = budget;
        Ok(())
    }

    fn class(module: &str, name: &str) -> Res<Class> {
        match (module, name) {
            ("collections", "OrderedDict") => Ok(Class::OrderedDict),
            ("torch._utils", "_rebuild_tensor_v2") => Ok(Class::RebuildTensor),
            ("torch._utils", "_rebuild_parameter") => Ok(Class::RebuildParameter),
            ("torch", class) => StorageKind::from_class(class)
                .map(Class::Storage)
                .ok_or_else(|| format!("class `torch.{class}` is not allowed")),
            _ => Err(format!(
                "class `{module}.{name}` is not allowed (a state dict of tensors names only \
                 OrderedDict, _rebuild_tensor_v2, _rebuild_parameter and storage classes)"
            )),
        }
    }

    /// The storage named by a persistent id.
    fn persistent(pid: Value) -> Res<Value> {
        let bad = || "a persistent id is not ('storage', class, key, location, numel)".to_string();
        let Value::Tuple(t) = pid else {
            return Err(bad());
        };
        match &t.items[..] {
            [Value::Str(tag), Value::Class(Class::Storage(kind)), Value::Str(key), Value::Str(location), Value::Int(numel)]
                if &**tag == "storage" =>
            {
                let numel = u64::try_from(*numel)
                    .map_err(|_| format!("storage `{key}` has {numel} elements"))?;
                Ok(Value::Storage(Rc::new(StorageRecord {
                    kind: *kind,
                    key: key.to_string(),
                    location: location.to_string(),
                    numel,
                })))
            }
            _ => Err(bad()),
        }
    }

    /// A tuple of non-negative ints.
    fn dims(v: &Value, what: &str) -> Res<Vec<u64>> {
        let Value::Tuple(t) = v else {
            return Err(format!("a tensor's {what} is {}, not a tuple", v.kind()));
        };
        t.items
            .iter()
            .map(|d| match d {
                Value::Int(i) => {
                    u64::try_from(*i).map_err(|_| format!("a tensor's {what} holds {i}"))
                }
                other => Err(format!("a tensor's {what} holds {}", other.kind())),
            })
            .collect()
    }

    fn reduce(callable: Value, args: Value) -> Res<Value> {
        let Value::Class(class) = callable else {
            return Err(format!("REDUCE calls {}, not a class", callable.kind()));
        };
        let Value::Tuple(args) = args else {
            return Err(format!("REDUCE arguments are {}, not a tuple", args.kind()));
        };
        let args = &args.items[..];
        match class {
            Class::OrderedDict if args.is_empty() => Ok(Self::empty_dict()),
            Class::OrderedDict => Err("OrderedDict called with arguments".into()),
            Class::RebuildTensor => match args {
                [Value::Storage(storage), Value::Int(offset), size, stride, Value::Bool, Value::Dict(_), rest @ ..]
                    if rest.len() <= 1 =>
                {
                    let offset = u64::try_from(*offset)
                        .map_err(|_| format!("a tensor's storage offset is {offset}"))?;
                    let shape = Self::dims(size, "size")?;
                    let stride = Self::dims(stride, "stride")?;
                    if shape.len() != stride.len() {
                        return Err(format!(
                            "a tensor's size {shape:?} and stride {stride:?} differ in length"
                        ));
                    }
                    Ok(Value::Tensor(Rc::new(TensorRecord {
                        storage: storage.clone(),
                        offset,
                        shape,
                        stride,
                    })))
                }
                _ => Err(
                    "_rebuild_tensor_v2 called with arguments other than (storage, \
                          offset, size, stride, requires_grad, hooks[, metadata])"
                        .into(),
                ),
            },
            Class::RebuildParameter => match args {
                [t @ Value::Tensor(_), Value::Bool, Value::Dict(_)] => Ok(t.clone()),
                _ => Err(
                    "_rebuild_parameter called with arguments other than (tensor, \
                          requires_grad, hooks)"
                        .into(),
                ),
            },
            Class::Storage(kind) => Err(format!("REDUCE calls torch.{}Storage", kind.name)),
        }
    }

    fn memo_get(&self, key: u32) -> Res<Value> {
        self.memo
            .get(&key)
            .cloned()
            .ok_or_else(|| format!("memo entry {key} was never stored"))
    }

    fn memo_put(&mut self, key: u32) -> Res<()> {
        let v = self.top()?.clone();
        self.memo.insert(key, v);
        Ok(())
    }

    /// Runs to STOP; returns the one value left.
    fn run(&mut self) -> Res<Value> {
        loop {
            let at = self.pos;
            let op = self.u8()?;
            let named = |e: String| match opcode_name(op) {
                Some(name) => format!("{name} at byte {at}: {e}"),
                None => format!("opcode 0x{op:02x} at byte {at}: {e}"),
            };
            match self.step(op) {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => return Err(named(e)),
            }
        }
        if !self.marks.is_empty() || self.stack.len() != 1 {
            return Err(format!(
                "STOP with {} values and {} marks on the stack (want one value)",
                self.stack.len(),
                self.marks.len()
            ));
        }
        Ok(self.stack.pop().expect("one value"))
    }

    /// Executes one opcode; `Ok(false)` at STOP.
    fn step(&mut self, op: u8) -> Res<bool> {
        match op {
            0x80 => {
                let proto = self.u8()?;
                if !(2..=5).contains(&proto) {
                    return Err(format!("protocol {proto} (only 2 to 5 are read)"));
                }
            }
            0x95 => {
                self.u64()?;
            }
            b'.' => return Ok(false),
            b'(' => self.marks.push(self.stack.len()),
            b'}' => self.push(Self::empty_dict()),
            b')' => self.push(Self::tuple(Vec::new())?),
            b'N' => self.push(Value::None),
            0x88 => self.push(Value::Bool),
            0x89 => self.push(Value::Bool),
            b'K' => {
                let v = self.u8()?;
                self.push(Value::Int(v.into()));
            }
            b'M' => {
                let v = self.u16()?;
                self.push(Value::Int(v.into()));
            }
            b'J' => {
                let v = self.u32()? as i32;
                self.push(Value::Int(v.into()));
            }
            0x8a => {
                let n = usize::from(self.u8()?);
                if n > 8 {
                    return Err(format!("an integer of {n} bytes"));
                }
                let bytes = self.take(n)?;
                let mut buf = if bytes.last().is_some_and(|&b| b & 0x80 != 0) {
                    [0xff; 8]
                } else {
                    [0; 8]
                };
                buf[..n].copy_from_slice(bytes);
                self.push(Value::Int(i64::from_le_bytes(buf)));
            }
            b'X' => {
                let n = self.u32()? as usize;
                let s = self.string(n)?;
                self.push(s);
            }
            0x8c => {
                let n = usize::from(self.u8()?);
                let s = self.string(n)?;
                self.push(s);
            }
            b'c' => {
                let module = self.line()?;
                let name = self.line()?;
                self.push(Value::Class(Self::class(module, name)?));
            }
            0x93 => {
                let name = self.pop()?;
                let module = self.pop()?;
                let (Value::Str(module), Value::Str(name)) = (module, name) else {
                    return Err("module and name are not strings".into());
                };
                self.push(Value::Class(Self::class(&module, &name)?));
            }
            b'Q' => {
                let pid = self.pop()?;
                self.push(Self::persistent(pid)?);
            }
            b't' => {
                let items = self.pop_mark()?;
                self.push(Self::tuple(items)?);
            }
            0x85..=0x87 => {
                let n = usize::from(op - 0x84);
                let mut items = (0..n).map(|_| self.pop()).collect::<Res<Vec<_>>>()?;
                items.reverse();
                self.push(Self::tuple(items)?);
            }
            b'R' => {
                let args = self.pop()?;
                let callable = self.pop()?;
                self.push(Self::reduce(callable, args)?);
            }
            b's' => {
                let value = self.pop()?;
                let key = self.pop()?;
                self.set_items(vec![key, value])?;
            }
            b'u' => {
                let items = self.pop_mark()?;
                self.set_items(items)?;
            }
            b'b' => {
                // An OrderedDict's attributes (a state dict's `_metadata`): not needed.
                let state = self.pop()?;
                let target = self.top()?;
                if !matches!(target, Value::Dict(_)) {
                    return Err(format!(
                        "BUILD of {} with {} (only a dict's attributes are accepted)",
                        target.kind(),
                        state.kind()
                    ));
                }
            }
            b'q' => {
                let key = self.u8()?;
                self.memo_put(key.into())?;
            }
            b'r' => {
                let key = self.u32()?;
                self.memo_put(key)?;
            }
            0x94 => {
                let key = u32::try_from(self.memo.len()).map_err(|_| "memo full")?;
                self.memo_put(key)?;
            }
            b'h' => {
                let key = self.u8()?;
                let v = self.memo_get(key.into())?;
                self.push(v);
            }
            b'j' => {
                let key = self.u32()?;
                let v = self.memo_get(key)?;
                self.push(v);
            }
            other => {
                return Err(match opcode_name(other) {
                    Some(_) => "not used by a torch state dict of tensors".to_string(),
                    None => "not a pickle opcode".to_string(),
                })
            }
        }
        Ok(true)
    }
}

/// The tensors of a state dict pickle, in the pickle's order: the pickled object must be a
/// dict or `OrderedDict` whose keys are strings and whose values are tensors.
///
/// # Errors
/// A message naming the opcode and its byte offset, the class, or the key that is wrong:
/// truncated input, an opcode or class outside the allow-list, stack underflow, a memo entry
/// never stored, a persistent id or tensor arguments of the wrong form, a value other than a
/// tensor.
pub fn state_dict(pickle: &[u8]) -> std::result::Result<Vec<(String, TensorRecord)>, String> {
    let mut machine = Machine {
        data: pickle,
        pos: 0,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        budget: 4096 + pickle.len(),
    };
    let top = machine.run()?;
    let Value::Dict(dict) = top else {
        return Err(format!("the pickled object is {}, not a dict", top.kind()));
    };
    dict.items
        .chunks_exact(2)
        .map(|pair| match pair {
            [Value::Str(name), Value::Tensor(t)] => Ok((name.to_string(), (**t).clone())),
            [Value::Str(name), other] => Err(format!(
                "`{name}` is {}, not a tensor (only a dict of tensors is read)",
                other.kind()
            )),
            [key, _] => Err(format!("a key is {}, not a string", key.kind())),
            _ => unreachable!("chunks of two"),
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A pickle assembled from opcodes and arguments, the way torch writes a state dict.
    #[derive(Default)]
    pub(crate) struct Pickle(pub Vec<u8>);

    impl Pickle {
        pub fn op(mut self, bytes: &[u8]) -> Self {
            self.0.extend_from_slice(bytes);
            self
        }
        pub fn str(self, s: &str) -> Self {
            let mut b = vec![b'X'];
            b.extend((s.len() as u32).to_le_bytes());
            b.extend(s.as_bytes());
            self.op(&b)
        }
        pub fn global(self, module: &str, name: &str) -> Self {
            self.op(format!("c{module}\n{name}\n").as_bytes())
        }
        pub fn int(self, v: u32) -> Self {
            let mut b = vec![b'J'];
            b.extend(v.to_le_bytes());
            self.op(&b)
        }
        pub fn ints(mut self, v: &[u32]) -> Self {
            self = self.op(b"(");
            for &x in v {
                self = self.int(x);
            }
            self.op(b"t")
        }
        /// One `name: tensor` item: storage class `kind`, key, numel, offset, shape, stride.
        #[allow(clippy::too_many_arguments)]
        pub fn tensor(
            self,
            name: &str,
            kind: &str,
            key: &str,
            numel: u32,
            offset: u32,
            shape: &[u32],
            stride: &[u32],
        ) -> Self {
            self.str(name)
                .global("torch._utils", "_rebuild_tensor_v2")
                .op(b"((")
                .str("storage")
                .global("torch", kind)
                .str(key)
                .str("cpu")
                .int(numel)
                .op(b"tQ")
                .int(offset)
                .ints(shape)
                .ints(stride)
                .op(b"\x89")
                .global("collections", "OrderedDict")
                .op(b")R")
                .op(b"tR")
        }
        /// A whole state dict of `items` (each made by `tensor` on an empty pickle).
        pub fn dict(items: Vec<Pickle>) -> Self {
            let mut p = Pickle::default().op(b"\x80\x02}q\x00(");
            for item in items {
                p = p.op(&item.0);
            }
            p.op(b"u.")
        }
    }

    fn item(name: &str) -> Pickle {
        Pickle::default().tensor(name, "BFloat16Storage", "0", 6, 0, &[2, 3], &[3, 1])
    }

    #[test]
    fn reads_a_state_dict() {
        let p = Pickle::dict(vec![
            item("a"),
            Pickle::default().tensor("b", "LongStorage", "7", 4, 1, &[3], &[1]),
        ]);
        let dict = state_dict(&p.0).unwrap();
        assert_eq!(dict.len(), 2);
        let (name, t) = &dict[0];
        assert_eq!(name, "a");
        assert_eq!(t.storage.kind.dtype(), Ok(DType::Bf16));
        assert_eq!(
            (t.offset, &t.shape[..], &t.stride[..]),
            (0, &[2, 3][..], &[3, 1][..])
        );
        let (name, t) = &dict[1];
        assert_eq!(name, "b");
        assert_eq!(t.storage.kind.dtype(), Err("Long".into()));
        assert_eq!((&t.storage.key[..], t.storage.numel, t.offset), ("7", 4, 1));
    }

    #[test]
    fn reads_an_ordered_dict_with_metadata_and_memo() {
        // OrderedDict() then its items, then BUILD with the `_metadata` attribute; the second
        // tensor is the first one again from the memo (a tied weight).
        let p = Pickle::default()
            .op(b"\x80\x02")
            .global("collections", "OrderedDict")
            .op(b")Rq\x00(")
            .op(&item("a").0)
            .op(b"q\x01")
            .str("b")
            .op(b"h\x01u}")
            .str("_metadata")
            .op(b"}s")
            .op(b"b.");
        let dict = state_dict(&p.0).unwrap();
        assert_eq!(dict.len(), 2);
        assert_eq!(dict[0].1, dict[1].1);
    }

    #[test]
    fn malformed_pickles_are_errors_naming_what_is_wrong() {
        let good = Pickle::dict(vec![item("a")]).0;
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (good[..good.len() - 1].to_vec(), "truncated"),
            (good[..10].to_vec(), "truncated"),
            (b"\x80\x02.".to_vec(), "STOP with 0 values"),
            (b"\x80\x02}}.".to_vec(), "STOP with 2 values"),
            (b"\x80\x02s.".to_vec(), "SETITEM at byte 2: stack underflow"),
            (
                b"\x80\x02(\x85.".to_vec(),
                "TUPLE1 at byte 3: stack underflow",
            ),
            (b"\x80\x02h\x05.".to_vec(), "memo entry 5 was never stored"),
            (b"\x80\x02j\x00\x00\x01\x00.".to_vec(), "memo entry 65536"),
            (b"\x80\x02u.".to_vec(), "no MARK"),
            (b"\x80\x02]".to_vec(), "EMPTY_LIST at byte 2: not used"),
            (
                b"\x80\x02cos\nsystem\n".to_vec(),
                "class `os.system` is not allowed",
            ),
            (
                Pickle::default()
                    .op(b"\x80\x02")
                    .global("torch", "Tensor")
                    .0,
                "class `torch.Tensor`",
            ),
            (
                b"\x80\x02\xff".to_vec(),
                "opcode 0xff at byte 2: not a pickle",
            ),
            (b"\x80\x01}.".to_vec(), "protocol 1"),
            (b"\x80\x02K\x01.".to_vec(), "an int, not a dict"),
            (b"\x80\x02}K\x01K\x02s.".to_vec(), "a key is an int"),
            (
                Pickle::default().op(b"\x80\x02}").str("x").op(b"Ns.").0,
                "`x` is None, not a tensor",
            ),
            (b"\x80\x02)Q.".to_vec(), "persistent id"),
            (
                Pickle::default()
                    .op(b"\x80\x02")
                    .global("torch._utils", "_rebuild_tensor_v2")
                    .op(b")R.")
                    .0,
                "_rebuild_tensor_v2 called",
            ),
            (
                Pickle::default()
                    .op(b"\x80\x02")
                    .global("collections", "OrderedDict")
                    .op(b"K\x01\x85R.")
                    .0,
                "OrderedDict called with arguments",
            ),
            (b"\x80\x02K\x01)R.".to_vec(), "REDUCE calls an int"),
            (b"\x80\x02\x8a\x09".to_vec(), "an integer of 9 bytes"),
            (b"\x80\x02X\xff\xff\xff\xff".to_vec(), "truncated"),
            (b"\x80\x02X\x01\x00\x00\x00\xff".to_vec(), "not UTF-8"),
            (b"\x80\x02K\x01K\x02b.".to_vec(), "BUILD of an int"),
        ];
        for (bytes, want) in cases {
            let err = state_dict(&bytes).unwrap_err();
            assert!(err.contains(want), "{want:?} not in {err:?}");
        }
    }

    #[test]
    fn storage_offsets_sizes_and_strides_must_be_non_negative() {
        let negative = (-1i32 as u32).to_le_bytes();
        let mut offset = Pickle::dict(vec![item("a")]).0;
        // The storage offset is the first BININT after BINPERSID.
        let q = offset.iter().position(|&b| b == b'Q').unwrap();
        offset[q + 2..q + 6].copy_from_slice(&negative);
        assert!(state_dict(&offset)
            .unwrap_err()
            .contains("storage offset is -1"));
        let negative_size = Pickle::dict(vec![Pickle::default().tensor(
            "a",
            "FloatStorage",
            "0",
            6,
            0,
            &[u32::MAX],
            &[1],
        )]);
        let err = state_dict(&negative_size.0).unwrap_err();
        assert!(err.contains("size holds -1"), "{err}");
    }

    #[test]
    fn deep_nesting_and_shared_dict_copies_are_bounded() {
        let mut deep = b"\x80\x02)".to_vec();
        deep.extend(std::iter::repeat_n(0x85u8, 10_000));
        deep.push(b'.');
        assert!(state_dict(&deep).unwrap_err().contains("nested deeper"));

        // A dict of many items, then again and again from the memo, each extended by one item
        // (so each copied).
        let mut p = Pickle::default().op(b"\x80\x02}q\x00(");
        for i in 0..2000 {
            p = p.str(&format!("k{i}")).op(b"N");
        }
        p = p.op(b"uq\x00");
        for _ in 0..100_000 {
            p = p.op(b"h\x00K\x01Ns");
        }
        let err = state_dict(&p.0).unwrap_err();
        assert!(err.contains("too many copies"), "{err}");
    }
}
