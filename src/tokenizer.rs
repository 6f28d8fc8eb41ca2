//! Tokenizers: the RWKV World vocabulary, a byte-level vocabulary, and an incremental UTF-8
//! decoder for streaming generated text.
//!
//! Both tokenizers map **bytes** to ids (text is its UTF-8 encoding), so every byte string is
//! encodable and `decode(encode(b)) == b` for every `b`:
//!
//! - [`WorldTokenizer`]: the RWKV "World" vocabulary (`rwkv_vocab_v20230424.txt`, 65 529 tokens).
//!   Encoding is greedy longest match, left to right, with no normalisation or pre-tokenisation,
//!   exactly as the official `TRIE_TOKENIZER` of the `rwkv` Python package:
//!
//!   ```text
//!   i = 0;  while i < len(b):  t = the longest token with b[i..i+len(t)] == t;  emit id(t);  i += len(t)
//!   ```
//!
//! - [`ByteTokenizer`]: `id = byte + 1`, for small byte-level models (the same ids as the World
//!   vocabulary gives single bytes).
//!
//! In both, id 0 is the end-of-text token: it is never produced by encoding and decodes to no
//! bytes. Generation code can take either through the [`Tokenizer`] trait, and turn token bytes
//! into printable text with [`Utf8Stream`].
//!
//! # Example
//!
//! ```
//! use tokenshift::tokenizer::{Tokenizer, Utf8Stream, WorldTokenizer};
//!
//! # fn main() -> tokenshift::Result<()> {
//! let tok = WorldTokenizer::world();
//! let ids = tok.encode("Hello world\n\n");
//! assert_eq!(ids, [33155, 40213, 261]);
//! assert_eq!(tok.decode(&ids)?, b"Hello world\n\n");
//!
//! // Streaming: text comes out only once its UTF-8 sequence is complete.
//! let mut stream = Utf8Stream::new();
//! let mut text = String::new();
//! for id in tok.encode("日本") {
//!     text += &stream.push(tok.token_bytes(id)?);
//! }
//! text += &stream.finish();
//! assert_eq!(text, "日本");
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]

use crate::error::{Error, Result};
use std::path::Path;
use std::sync::OnceLock;

/// A vocabulary that turns bytes into token ids and back.
///
/// Id 0 is the end-of-text token in every implementation of this crate: encoding never emits it
/// and it decodes to no bytes. Ids `>= vocab_size()` are rejected by [`Tokenizer::token_bytes`]
/// and [`Tokenizer::decode`] with [`Error::TokenOutOfRange`].
///
/// The trait is object safe (`&dyn Tokenizer` works), and `&T` is a tokenizer when `T` is.
pub trait Tokenizer {
    /// Number of ids, end-of-text included: every id in `0..vocab_size()` decodes.
    ///
    /// A model's output width can be larger (World models pad to 65 536); ids at or above this
    /// size are not tokens and should be banned when sampling.
    fn vocab_size(&self) -> usize;

    /// Appends the ids of `bytes` to `out`. Every byte string is encodable.
    fn encode_bytes_into(&self, bytes: &[u8], out: &mut Vec<u32>);

    /// The bytes of one token (empty for the end-of-text id 0).
    ///
    /// # Errors
    /// [`Error::TokenOutOfRange`] if `id >= vocab_size()`.
    fn token_bytes(&self, id: u32) -> Result<&[u8]>;

    /// The ids of `bytes`.
    fn encode_bytes(&self, bytes: &[u8]) -> Vec<u32> {
        let mut out = Vec::new();
        self.encode_bytes_into(bytes, &mut out);
        out
    }

    /// The ids of the UTF-8 encoding of `text`.
    fn encode(&self, text: &str) -> Vec<u32> {
        self.encode_bytes(text.as_bytes())
    }

    /// Appends the concatenated bytes of `ids` to `out`.
    ///
    /// # Errors
    /// [`Error::TokenOutOfRange`] naming the first id `>= vocab_size()`; `out` is then left as it
    /// was.
    fn decode_into(&self, ids: &[u32], out: &mut Vec<u8>) -> Result<()> {
        let start = out.len();
        for &id in ids {
            match self.token_bytes(id) {
                Ok(bytes) => out.extend_from_slice(bytes),
                Err(e) => {
                    out.truncate(start);
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// The concatenated bytes of `ids` (not necessarily valid UTF-8: see [`Utf8Stream`] or
    /// [`String::from_utf8_lossy`]).
    ///
    /// # Errors
    /// [`Error::TokenOutOfRange`] naming the first id `>= vocab_size()`.
    fn decode(&self, ids: &[u32]) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.decode_into(ids, &mut out)?;
        Ok(out)
    }
}

impl<T: Tokenizer + ?Sized> Tokenizer for &T {
    fn vocab_size(&self) -> usize {
        (**self).vocab_size()
    }
    fn encode_bytes_into(&self, bytes: &[u8], out: &mut Vec<u32>) {
        (**self).encode_bytes_into(bytes, out)
    }
    fn token_bytes(&self, id: u32) -> Result<&[u8]> {
        (**self).token_bytes(id)
    }
}

/// Every byte value once, so single-byte tokens can be returned as slices.
static ALL_BYTES: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = i as u8;
        i += 1;
    }
    table
};

/// Byte-level vocabulary: `id = byte + 1` for the 256 byte values, id 0 = end of text,
/// `vocab_size() = 257`.
///
/// These are the ids the World vocabulary gives single bytes, so a byte-level model and a World
/// model agree on them.
///
/// ```
/// use tokenshift::tokenizer::{ByteTokenizer, Tokenizer};
/// let tok = ByteTokenizer;
/// assert_eq!(tok.encode("A\n"), [66, 11]);
/// assert_eq!(tok.decode(&[66, 0, 11]).unwrap(), b"A\n");
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ByteTokenizer;

impl Tokenizer for ByteTokenizer {
    fn vocab_size(&self) -> usize {
        257
    }

    fn encode_bytes_into(&self, bytes: &[u8], out: &mut Vec<u32>) {
        out.extend(bytes.iter().map(|&b| u32::from(b) + 1));
    }

    fn token_bytes(&self, id: u32) -> Result<&[u8]> {
        match id {
            0 => Ok(&[]),
            1..=256 => {
                let b = id as usize - 1;
                Ok(&ALL_BYTES[b..b + 1])
            }
            _ => Err(Error::TokenOutOfRange {
                token: id,
                vocab: 257,
            }),
        }
    }
}

/// Marks "no node" / "no value" in the trie tables (offset 0 is never a node, id 0 never a
/// value).
const NONE: u32 = 0;

/// The longest token a vocabulary may hold, in bytes: twice the longest of the World
/// vocabulary (128). Greedy longest match looks at most this many bytes ahead of each
/// position, so encoding costs at most this many trie steps per input byte whatever the
/// vocabulary.
pub const MAX_TOKEN_BYTES: usize = 256;

/// Largest trie size (in `u32` words): edges store a node's offset in their upper 24 bits.
const MAX_TRIE_WORDS: usize = 1 << 24;

/// Nodes with more children than this store a dense 256-entry child table.
const DENSE_ABOVE: usize = 16;

/// The count word of a node with a dense child table.
const DENSE: u32 = u32::MAX;

/// The RWKV World tokenizer: a vocabulary of byte strings with ids `1..vocab_size()`, plus the
/// end-of-text id 0, and greedy longest-match encoding.
///
/// # Vocabulary format
///
/// `rwkv_vocab_v20230424.txt`: one token per line (LF or CRLF line ends; blank lines are
/// skipped), `<id> <literal> <length>` where the literal is a Python string literal:
///
/// - `'…'` / `"…"` (optionally `u`-prefixed): the token is its UTF-8 encoding;
/// - `b'…'` / `b"…"`: the token is those bytes (ASCII characters and escapes only).
///
/// Escapes are Python's: `\\ \' \" \a \b \f \n \r \t \v`, octal `\ooo`, `\xhh`, and in str
/// literals `\uXXXX` and `\UXXXXXXXX` (`\N{…}` is not supported); an unknown escape keeps its
/// backslash, as in Python. `<length>` must equal the token's byte length. The ids must run
/// from 1 to N without gaps or repeats, no two ids may have the same bytes, no token may be
/// empty or longer than [`MAX_TOKEN_BYTES`], and every single byte must be a token (so every
/// input is encodable).
///
/// # Encoding
///
/// At each position the longest token that is a prefix of the remaining bytes is taken — the
/// same ids as the official `TRIE_TOKENIZER.encodeBytes`. Lookup goes through a table indexed by
/// the first two bytes and then a trie, so the cost per input byte does not grow with the
/// vocabulary.
#[derive(Clone, Debug)]
pub struct WorldTokenizer {
    /// All token bytes back to back, in id order (id 1 first).
    bytes: Vec<u8>,
    /// `bytes[offsets[id - 1]..offsets[id]]` is token `id`; length `vocab_size()`.
    offsets: Vec<u32>,
    /// Id of each single-byte token.
    single: [u32; 256],
    /// `level2[b0 << 8 | b1]`: offset in `trie` of the node reached by the two bytes `b0 b1`,
    /// or [`NONE`].
    level2: Vec<u32>,
    /// The trie below depth 2, one node after another so that a step mostly touches one cache
    /// line: a node at offset `o` is `[value, n, e_1, …, e_n]`, where `value` is the id of the
    /// token ending there (or [`NONE`]) and each edge is `child_offset << 8 | byte`, sorted by
    /// byte; a node with many children is `[value, DENSE, c_0, …, c_255]` with `c_b` the child
    /// offset for byte `b` (or [`NONE`]). Offset 0 holds a placeholder node.
    trie: Vec<u32>,
}

/// The shipped vocabulary file.
static WORLD_VOCAB: &[u8] = include_bytes!("../assets/vocab/rwkv_vocab_v20230424.txt");

impl WorldTokenizer {
    /// The official RWKV World vocabulary (`rwkv_vocab_v20230424.txt` from the `rwkv` 0.8.32
    /// Python package, Apache-2.0, embedded in the crate), parsed on first use.
    ///
    /// `vocab_size()` is 65 530 (ids 0..=65 529); World models have 65 536 output logits, and
    /// the last six are not tokens.
    pub fn world() -> &'static WorldTokenizer {
        static WORLD: OnceLock<WorldTokenizer> = OnceLock::new();
        WORLD.get_or_init(|| {
            // The embedded file is parsed by the tests; failing here is a build defect.
            WorldTokenizer::from_vocab_bytes(WORLD_VOCAB)
                .expect("the embedded World vocabulary is well formed")
        })
    }

    /// Reads a vocabulary file in the [format above](WorldTokenizer#vocabulary-format).
    ///
    /// # Errors
    /// [`Error::Io`] if the file cannot be read, [`Error::Vocab`] naming the line if it is
    /// malformed.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let data = std::fs::read(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_vocab_bytes(&data)
    }

    /// Parses vocabulary text in the [format above](WorldTokenizer#vocabulary-format).
    ///
    /// # Errors
    /// [`Error::Vocab`] naming the offending line (1-based) and what is wrong with it.
    pub fn from_vocab_str(text: &str) -> Result<Self> {
        Self::from_vocab_bytes(text.as_bytes())
    }

    /// Parses the raw bytes of a vocabulary file (which must be UTF-8, as the official reader
    /// requires).
    ///
    /// # Errors
    /// [`Error::Vocab`] naming the offending line (1-based) and what is wrong with it.
    pub fn from_vocab_bytes(data: &[u8]) -> Result<Self> {
        // (id, token bytes, line number)
        let mut entries: Vec<(u32, Vec<u8>, usize)> = Vec::new();
        for (index, raw) in data.split(|&b| b == b'\n').enumerate() {
            let line_no = index + 1;
            let line = std::str::from_utf8(raw).map_err(|e| {
                Error::Vocab(format!(
                    "line {line_no}: not valid UTF-8 (byte {} of the line)",
                    e.valid_up_to() + 1
                ))
            })?;
            let line = line.trim_end_matches([' ', '\t', '\r']);
            if line.is_empty() {
                continue;
            }
            let (id, token) = parse_line(line)
                .map_err(|msg| Error::Vocab(format!("line {line_no} (`{line}`): {msg}")))?;
            entries.push((id, token, line_no));
        }
        Self::from_entries(entries)
    }

    /// Builds the id table and the trie; checks ids, duplicates and single bytes.
    fn from_entries(mut entries: Vec<(u32, Vec<u8>, usize)>) -> Result<Self> {
        let n = entries.len();
        if n == 0 {
            return Err(Error::Vocab("no tokens".into()));
        }
        entries.sort_by_key(|e| e.0);
        for pair in entries.windows(2) {
            if pair[0].0 == pair[1].0 {
                return Err(Error::Vocab(format!(
                    "line {}: id {} was already given on line {}",
                    pair[1].2, pair[1].0, pair[0].2
                )));
            }
        }
        for (expected, entry) in (1u32..).zip(&entries) {
            if entry.0 != expected {
                return Err(Error::Vocab(format!(
                    "id {expected} is missing (ids must run from 1 to {n} without gaps; \
                     line {} has id {})",
                    entry.2, entry.0
                )));
            }
        }
        let total: usize = entries.iter().map(|e| e.1.len()).sum();
        if total > u32::MAX as usize {
            return Err(Error::Vocab("token bytes exceed 4 GiB".into()));
        }

        let mut bytes = Vec::with_capacity(total);
        let mut offsets = Vec::with_capacity(n + 1);
        offsets.push(0u32);
        for (_, token, _) in &entries {
            bytes.extend_from_slice(token);
            offsets.push(bytes.len() as u32);
        }

        let mut single = [NONE; 256];
        let mut builder = TrieBuilder::new();
        for (id, token, line_no) in &entries {
            let previous = if let [b] = token[..] {
                std::mem::replace(&mut single[b as usize], *id)
            } else {
                builder.insert(token, *id)
            };
            if previous != NONE {
                let other = entries[previous as usize - 1].2;
                return Err(Error::Vocab(format!(
                    "line {line_no}: token {id} has the same bytes as token {previous} \
                     (line {other})"
                )));
            }
        }
        if let Some(b) = single.iter().position(|&id| id == NONE) {
            return Err(Error::Vocab(format!(
                "the single byte 0x{b:02x} is not a token (every byte must be, so that every \
                 input can be encoded)"
            )));
        }
        let (level2, trie) = builder.finish()?;
        Ok(WorldTokenizer {
            bytes,
            offsets,
            single,
            level2,
            trie,
        })
    }

    /// Number of ids, end-of-text included (65 530 for the World vocabulary).
    pub fn vocab_size(&self) -> usize {
        self.offsets.len()
    }

    /// The ids of the UTF-8 encoding of `text` (greedy longest match).
    pub fn encode(&self, text: &str) -> Vec<u32> {
        self.encode_bytes(text.as_bytes())
    }

    /// The ids of `bytes` (greedy longest match). Every byte string is encodable.
    pub fn encode_bytes(&self, bytes: &[u8]) -> Vec<u32> {
        // Tokens average several bytes; a quarter of the input length rarely reallocates.
        let mut out = Vec::with_capacity(bytes.len() / 4 + 1);
        self.encode_bytes_into(bytes, &mut out);
        out
    }

    /// Appends the ids of `bytes` to `out` (greedy longest match).
    pub fn encode_bytes_into(&self, bytes: &[u8], out: &mut Vec<u32>) {
        let n = bytes.len();
        let mut i = 0;
        while i < n {
            let (len, id) = self.longest_match(bytes, i);
            out.push(id);
            i += len;
        }
    }

    /// Length and id of the longest token that starts `bytes[i..]` (`i < bytes.len()`).
    #[inline]
    fn longest_match(&self, bytes: &[u8], i: usize) -> (usize, u32) {
        let b0 = bytes[i];
        let mut best = (1, self.single[b0 as usize]);
        let Some(&b1) = bytes.get(i + 1) else {
            return best;
        };
        let mut node = self.level2[(b0 as usize) << 8 | b1 as usize];
        if node == NONE {
            return best;
        }
        let mut j = i + 2;
        loop {
            let at = node as usize;
            let value = self.trie[at];
            if value != NONE {
                best = (j - i, value);
            }
            let Some(&b) = bytes.get(j) else {
                return best;
            };
            let count = self.trie[at + 1];
            node = if count == DENSE {
                self.trie[at + 2 + b as usize]
            } else {
                let edges = &self.trie[at + 2..at + 2 + count as usize];
                match edges.iter().find(|&&e| e as u8 == b) {
                    Some(&edge) => edge >> 8,
                    None => NONE,
                }
            };
            if node == NONE {
                return best;
            }
            j += 1;
        }
    }

    /// The bytes of token `id` (empty for the end-of-text id 0).
    ///
    /// # Errors
    /// [`Error::TokenOutOfRange`] if `id >= vocab_size()`.
    pub fn token_bytes(&self, id: u32) -> Result<&[u8]> {
        let i = id as usize;
        if id == 0 {
            Ok(&[])
        } else if i < self.offsets.len() {
            Ok(&self.bytes[self.offsets[i - 1] as usize..self.offsets[i] as usize])
        } else {
            Err(Error::TokenOutOfRange {
                token: id,
                vocab: self.vocab_size(),
            })
        }
    }

    /// The concatenated bytes of `ids` (id 0 contributes nothing).
    ///
    /// # Errors
    /// [`Error::TokenOutOfRange`] naming the first id `>= vocab_size()`.
    pub fn decode(&self, ids: &[u32]) -> Result<Vec<u8>> {
        Tokenizer::decode(self, ids)
    }

    /// The id of a token given by its exact bytes, if it is one (`None` for the empty string).
    pub fn token_id(&self, token: &[u8]) -> Option<u32> {
        if token.is_empty() {
            return None;
        }
        match self.longest_match(token, 0) {
            (len, id) if len == token.len() => Some(id),
            _ => None,
        }
    }
}

impl Tokenizer for WorldTokenizer {
    fn vocab_size(&self) -> usize {
        WorldTokenizer::vocab_size(self)
    }
    fn encode_bytes_into(&self, bytes: &[u8], out: &mut Vec<u32>) {
        WorldTokenizer::encode_bytes_into(self, bytes, out)
    }
    fn token_bytes(&self, id: u32) -> Result<&[u8]> {
        WorldTokenizer::token_bytes(self, id)
    }
    fn encode_bytes(&self, bytes: &[u8]) -> Vec<u32> {
        WorldTokenizer::encode_bytes(self, bytes)
    }
}

/// A trie under construction: node 0 is a placeholder, then one node per distinct prefix of
/// length >= 2 of the inserted tokens.
struct TrieBuilder {
    level2: Vec<u32>,
    values: Vec<u32>,
    children: Vec<Vec<(u8, u32)>>,
}

impl TrieBuilder {
    fn new() -> Self {
        TrieBuilder {
            level2: vec![NONE; 1 << 16],
            values: vec![NONE],
            children: vec![Vec::new()],
        }
    }

    fn new_node(&mut self) -> u32 {
        self.values.push(NONE);
        self.children.push(Vec::new());
        (self.values.len() - 1) as u32
    }

    /// Inserts a token of length >= 2; returns the id that already had these bytes, or [`NONE`].
    fn insert(&mut self, token: &[u8], id: u32) -> u32 {
        let key = (token[0] as usize) << 8 | token[1] as usize;
        let mut node = self.level2[key];
        if node == NONE {
            node = self.new_node();
            self.level2[key] = node;
        }
        for &b in &token[2..] {
            let found = self.children[node as usize]
                .iter()
                .find(|c| c.0 == b)
                .map(|c| c.1);
            node = match found {
                Some(child) => child,
                None => {
                    let child = self.new_node();
                    self.children[node as usize].push((b, child));
                    child
                }
            };
        }
        std::mem::replace(&mut self.values[node as usize], id)
    }

    /// Lays the nodes out one after another as `[value, n, edges…]` (see
    /// `WorldTokenizer::trie`) and maps node numbers to offsets.
    fn finish(self) -> Result<(Vec<u32>, Vec<u32>)> {
        let mut offset = Vec::with_capacity(self.values.len());
        let mut words = 0usize;
        for children in &self.children {
            offset.push(words as u32);
            words += 2 + if children.len() > DENSE_ABOVE {
                256
            } else {
                children.len()
            };
            if words > MAX_TRIE_WORDS {
                return Err(Error::Vocab(format!(
                    "the tokens are too many or too long for the encoder's trie (more than \
                     {MAX_TRIE_WORDS} words)"
                )));
            }
        }
        let mut trie = Vec::with_capacity(words);
        for (value, mut children) in self.values.into_iter().zip(self.children) {
            children.sort_unstable_by_key(|c| c.0);
            trie.push(value);
            if children.len() > DENSE_ABOVE {
                trie.push(DENSE);
                let table = trie.len();
                trie.resize(table + 256, NONE);
                for &(label, child) in &children {
                    trie[table + label as usize] = offset[child as usize];
                }
            } else {
                trie.push(children.len() as u32);
                trie.extend(
                    children
                        .iter()
                        .map(|&(label, child)| offset[child as usize] << 8 | u32::from(label)),
                );
            }
        }
        let level2 = self
            .level2
            .iter()
            .map(|&node| {
                if node == NONE {
                    NONE
                } else {
                    offset[node as usize]
                }
            })
            .collect();
        Ok((level2, trie))
    }
}

/// Parses `<id> <literal> <length>` (no line end) into the id and the token bytes.
fn parse_line(line: &str) -> std::result::Result<(u32, Vec<u8>), String> {
    let (Some(first), Some(last)) = (line.find(' '), line.rfind(' ')) else {
        return Err("expected `<id> <literal> <length>`".into());
    };
    if first == last {
        return Err("expected `<id> <literal> <length>`".into());
    }
    let id_text = &line[..first];
    let literal = line[first + 1..last].trim_matches([' ', '\t']);
    let len_text = &line[last + 1..];
    let id: u32 = parse_decimal(id_text).ok_or_else(|| format!("bad id `{id_text}`"))?;
    if id == 0 {
        return Err("id 0 is reserved for end of text".into());
    }
    let length: u32 =
        parse_decimal(len_text).ok_or_else(|| format!("bad byte length `{len_text}`"))?;
    let token = parse_literal(literal)?;
    if token.is_empty() {
        return Err("empty token".into());
    }
    if token.len() > MAX_TOKEN_BYTES {
        return Err(format!(
            "a token of {} bytes; tokens may be at most {MAX_TOKEN_BYTES} bytes",
            token.len()
        ));
    }
    if token.len() != length as usize {
        return Err(format!(
            "the literal is {} bytes but the length column says {length}",
            token.len()
        ));
    }
    Ok((id, token))
}

/// A non-empty run of ASCII digits that fits in `u32`.
fn parse_decimal(text: &str) -> Option<u32> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// Decodes a Python str (`'…'`, `"…"`, `u'…'`) or bytes (`b'…'`, `b"…"`) literal to bytes (str
/// literals UTF-8 encoded).
fn parse_literal(literal: &str) -> std::result::Result<Vec<u8>, String> {
    let (is_bytes, rest) = match literal.as_bytes().first() {
        Some(b'b' | b'B') => (true, &literal[1..]),
        Some(b'u' | b'U') => (false, &literal[1..]),
        Some(b'r' | b'R' | b'f' | b'F') => {
            return Err(format!(
                "unsupported string prefix in `{literal}` (only b'…' and '…' literals)"
            ))
        }
        _ => (false, literal),
    };
    let quote = match rest.chars().next() {
        Some(q @ ('\'' | '"')) => q,
        _ => return Err(format!("`{literal}` is not a quoted Python literal")),
    };
    if rest.len() < 2 || !rest.ends_with(quote) {
        return Err(format!("unterminated literal `{literal}`"));
    }
    let triple: String = std::iter::repeat_n(quote, 3).collect();
    if rest.len() >= 6 && rest.starts_with(&triple) && rest.ends_with(&triple) {
        return Err(format!(
            "triple-quoted literals are not supported: `{literal}`"
        ));
    }
    let body = &rest[1..rest.len() - 1];
    let mut out = Vec::with_capacity(body.len());
    let mut chars = body.chars().peekable();
    while let Some(c) = chars.next() {
        if c == quote {
            return Err(format!("unescaped {quote} inside `{literal}`"));
        }
        if c != '\\' {
            if is_bytes && !c.is_ascii() {
                return Err(format!(
                    "bytes literal `{literal}` contains the non-ASCII character {c:?}"
                ));
            }
            push_char(&mut out, c);
            continue;
        }
        let Some(e) = chars.next() else {
            return Err(format!("literal `{literal}` ends inside an escape"));
        };
        match e {
            '\\' | '\'' | '"' => push_char(&mut out, e),
            'a' => out.push(0x07),
            'b' => out.push(0x08),
            'f' => out.push(0x0c),
            'n' => out.push(b'\n'),
            'r' => out.push(b'\r'),
            't' => out.push(b'\t'),
            'v' => out.push(0x0b),
            '0'..='7' => {
                let mut value = e.to_digit(8).unwrap_or(0);
                for _ in 0..2 {
                    match chars.peek().and_then(|d| d.to_digit(8)) {
                        Some(d) => {
                            value = value * 8 + d;
                            chars.next();
                        }
                        None => break,
                    }
                }
                push_code(&mut out, value, is_bytes, literal)?;
            }
            'x' => {
                let value = hex_digits(&mut chars, 2, literal)?;
                push_code(&mut out, value, is_bytes, literal)?;
            }
            'u' | 'U' if !is_bytes => {
                let value = hex_digits(&mut chars, if e == 'u' { 4 } else { 8 }, literal)?;
                push_code(&mut out, value, false, literal)?;
            }
            'N' if !is_bytes => {
                return Err(format!("\\N{{…}} escapes are not supported: `{literal}`"));
            }
            other => {
                // Python keeps unknown escapes verbatim (with a warning).
                if is_bytes && !other.is_ascii() {
                    return Err(format!(
                        "bytes literal `{literal}` contains the non-ASCII character {other:?}"
                    ));
                }
                out.push(b'\\');
                push_char(&mut out, other);
            }
        }
    }
    Ok(out)
}

fn push_char(out: &mut Vec<u8>, c: char) {
    let mut buf = [0u8; 4];
    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
}

/// Appends an escaped value: a byte in bytes literals, a code point (UTF-8 encoded) in str
/// literals.
fn push_code(
    out: &mut Vec<u8>,
    value: u32,
    is_bytes: bool,
    literal: &str,
) -> std::result::Result<(), String> {
    if is_bytes {
        let byte = u8::try_from(value)
            .map_err(|_| format!("escape value {value} is not a byte in `{literal}`"))?;
        out.push(byte);
    } else {
        let c = char::from_u32(value).ok_or_else(|| {
            format!("escape value U+{value:04X} is not a Unicode scalar value in `{literal}`")
        })?;
        push_char(out, c);
    }
    Ok(())
}

fn hex_digits(
    chars: &mut std::iter::Peekable<std::str::Chars<'_>>,
    count: usize,
    literal: &str,
) -> std::result::Result<u32, String> {
    let mut value = 0u32;
    for _ in 0..count {
        let digit = chars
            .next()
            .and_then(|c| c.to_digit(16))
            .ok_or_else(|| format!("truncated \\x, \\u or \\U escape in `{literal}`"))?;
        value = value.wrapping_mul(16).wrapping_add(digit);
    }
    Ok(value)
}

/// Incremental UTF-8 decoder for streamed token bytes.
///
/// Tokens do not end on character boundaries (a CJK character or an emoji may be split over
/// several byte tokens), so generated text is printed through this decoder: [`push`] returns
/// only complete characters and holds back an incomplete trailing sequence until more bytes
/// arrive. A byte sequence that can no longer become valid UTF-8 becomes U+FFFD, one per
/// maximal invalid subpart (the rule of [`String::from_utf8_lossy`]); [`finish`] flushes a
/// trailing incomplete sequence as one U+FFFD.
///
/// For any split of a byte string `b` into pushes, the concatenated output of the pushes and
/// `finish` equals `String::from_utf8_lossy(b)`.
///
/// [`push`]: Utf8Stream::push
/// [`finish`]: Utf8Stream::finish
///
/// ```
/// use tokenshift::tokenizer::Utf8Stream;
/// let mut s = Utf8Stream::new();
/// let emoji = "😀".as_bytes();
/// assert_eq!(s.push(&emoji[..2]), "");
/// assert_eq!(s.push(&emoji[2..]), "😀");
/// assert_eq!(s.push(b"\xff!"), "\u{FFFD}!");
/// assert_eq!(s.push(b"\xe6\x97"), "");
/// assert_eq!(s.finish(), "\u{FFFD}");
/// ```
#[derive(Clone, Debug, Default)]
pub struct Utf8Stream {
    /// An incomplete (so far valid) UTF-8 sequence: at most 3 bytes.
    pending: Vec<u8>,
}

impl Utf8Stream {
    /// An empty decoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends `bytes` and returns the text that is now complete.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        let mut out = String::new();
        self.push_into(bytes, &mut out);
        out
    }

    /// Appends `bytes` and writes the text that is now complete to `out`.
    pub fn push_into(&mut self, bytes: &[u8], out: &mut String) {
        if self.pending.is_empty() {
            self.decode_into(bytes, out);
        } else {
            let mut joined = std::mem::take(&mut self.pending);
            joined.extend_from_slice(bytes);
            self.decode_into(&joined, out);
        }
    }

    /// Decodes `bytes` (with nothing pending) to `out`, keeping an incomplete tail pending.
    fn decode_into(&mut self, mut bytes: &[u8], out: &mut String) {
        loop {
            match std::str::from_utf8(bytes) {
                Ok(text) => {
                    out.push_str(text);
                    return;
                }
                Err(e) => {
                    let (valid, rest) = bytes.split_at(e.valid_up_to());
                    // `valid` was just checked, so this never takes the default.
                    out.push_str(std::str::from_utf8(valid).unwrap_or_default());
                    match e.error_len() {
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            bytes = &rest[bad..];
                        }
                        None => {
                            self.pending.extend_from_slice(rest);
                            return;
                        }
                    }
                }
            }
        }
    }

    /// Bytes held back as the start of an incomplete character (0 to 3 bytes).
    pub fn pending(&self) -> &[u8] {
        &self.pending
    }

    /// Ends the stream: returns U+FFFD if an incomplete character is pending (else the empty
    /// string) and resets the decoder.
    pub fn finish(&mut self) -> String {
        if self.pending.is_empty() {
            String::new()
        } else {
            self.pending.clear();
            char::REPLACEMENT_CHARACTER.to_string()
        }
    }
}
