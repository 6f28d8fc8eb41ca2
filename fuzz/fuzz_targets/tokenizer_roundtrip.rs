//! The shipped World vocabulary (and the byte-level one) on arbitrary bytes.
//!
//! - `decode(encode(x)) == x`, with every id in `1..vocab_size()`;
//! - the ids are those of greedy longest match, checked against a plain reference built from
//!   `token_bytes` (a hash map of every prefix of every token);
//! - streaming the tokens' bytes through `Utf8Stream`, whole or split at points derived from
//!   the input, gives `String::from_utf8_lossy(x)`, and at most 3 bytes are ever pending;
//! - `ByteTokenizer` round-trips too.

#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use tokenshift::{ByteTokenizer, Tokenizer, Utf8Stream, WorldTokenizer};

/// The reference encoder for the World vocabulary, built from `token_bytes`.
fn reference() -> &'static common::Greedy<'static> {
    static REFERENCE: OnceLock<common::Greedy<'static>> = OnceLock::new();
    REFERENCE.get_or_init(|| {
        let tok = WorldTokenizer::world();
        common::Greedy::new(
            (1..tok.vocab_size() as u32)
                .map(|id| (tok.token_bytes(id).expect("an id below vocab_size"), id)),
        )
    })
}

fuzz_target!(|data: &[u8]| {
    let tok = WorldTokenizer::world();
    let ids = tok.encode_bytes(data);
    assert!(ids
        .iter()
        .all(|&id| id != 0 && (id as usize) < tok.vocab_size()));
    assert_eq!(tok.decode(&ids).expect("encoded ids decode"), data);
    assert!(
        reference().encode(data).as_ref() == Some(&ids),
        "not greedy longest match"
    );

    // Streaming text out token by token.
    let lossy = String::from_utf8_lossy(data);
    let mut stream = Utf8Stream::new();
    let mut text = String::new();
    for &id in &ids {
        stream.push_into(tok.token_bytes(id).expect("an encoded id"), &mut text);
        assert!(stream.pending().len() <= 3);
    }
    text += &stream.finish();
    assert_eq!(text, lossy);
    assert!(stream.pending().is_empty());

    // Streaming the raw bytes in pieces whose lengths come from the input.
    let mut text = String::new();
    let mut rest = data;
    let mut k = 0;
    while !rest.is_empty() {
        let piece = (common::derive(data, k) % 5) as usize;
        let (now, later) = rest.split_at(piece.min(rest.len()));
        text += &stream.push(now);
        assert!(stream.pending().len() <= 3);
        rest = later;
        k += 1;
    }
    text += &stream.finish();
    assert_eq!(text, lossy);

    let bytes = ByteTokenizer.encode_bytes(data);
    assert_eq!(bytes.len(), data.len());
    assert_eq!(ByteTokenizer.decode(&bytes).expect("byte ids decode"), data);
});
