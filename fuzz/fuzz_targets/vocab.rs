//! Vocabulary parsing from arbitrary bytes, then encoding with what was parsed.
//!
//! The input is a vocabulary file, optionally followed by a 0xFF byte (which no UTF-8 text
//! contains) and bytes to encode; without one, the vocabulary text itself is encoded. When
//! `WorldTokenizer::from_vocab_bytes` accepts the file:
//!
//! - `decode(encode(x)) == x`, every id in `1..vocab_size()`;
//! - the ids are those of greedy longest match, checked against a plain reference (a hash map
//!   of every prefix of every token; skipped when tokens are so long that it would be slow);
//! - every token encodes to its own id alone and `token_id` finds it.

#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use std::collections::HashMap;
use tokenshift::{Tokenizer, WorldTokenizer};

/// Bytes the reference may hash, at most, for building and for encoding: beyond this
/// (vocabularies with very long tokens) it is skipped, so that its own cost never times out.
const REFERENCE_BUDGET: usize = 1 << 26;

fuzz_target!(|data: &[u8]| {
    let (file, text) = match data.iter().position(|&b| b == 0xff) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, data),
    };
    let Ok(tok) = WorldTokenizer::from_vocab_bytes(file) else {
        return;
    };
    let n = tok.vocab_size();
    let ids = tok.encode_bytes(text);
    assert!(ids.iter().all(|&id| id != 0 && (id as usize) < n));
    assert_eq!(tok.decode(&ids).expect("encoded ids decode"), text);

    let tokens: HashMap<&[u8], u32> = (1..n as u32)
        .map(|id| (tok.token_bytes(id).expect("an id below vocab_size"), id))
        .collect();
    assert_eq!(tokens.len(), n - 1, "two ids share their bytes");
    let longest = tokens.keys().map(|t| t.len()).max().unwrap_or(1);
    let build: usize = tokens.keys().map(|t| t.len() * t.len()).sum();
    if build.max(text.len() * longest * longest) <= REFERENCE_BUDGET {
        let reference = common::Greedy::new(tokens.iter().map(|(&t, &id)| (t, id)));
        assert!(
            reference.encode(text).as_ref() == Some(&ids),
            "not greedy longest match"
        );
    }

    for (&bytes, &id) in &tokens {
        assert_eq!(tok.token_id(bytes), Some(id));
        assert_eq!(tok.encode_bytes(bytes), [id]);
    }
    assert!(tok.token_bytes(n as u32).is_err());
    assert_eq!(tok.token_id(b""), None);

    // The trait's appending form agrees with the inherent one.
    let mut out = vec![0];
    Tokenizer::encode_bytes_into(&tok, text, &mut out);
    assert_eq!(out[1..], ids[..]);
});
