//! Helpers shared by the fuzz targets (each target includes this file as a module).

#![allow(dead_code)]

use std::collections::HashMap;

/// The loader from memory and the loader from a file accept and refuse the same bytes.
pub fn assert_loaders_agree<T, E: std::fmt::Debug>(
    in_memory: &Result<T, E>,
    from_file: &Result<T, E>,
) {
    assert_eq!(
        in_memory.is_ok(),
        from_file.is_ok(),
        "the loaders disagree: from_bytes {:?}, load {:?}",
        in_memory.as_ref().err(),
        from_file.as_ref().err(),
    );
}

/// A file of this process under the temporary directory, for the loaders that take a path
/// (each input overwrites it).
pub fn scratch(tag: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("tokenshift-fuzz-{tag}-{}", std::process::id()))
}

/// A value from the last bytes of the input, different for each `k` (FNV-1a), used to pick
/// token ids and split points so that they change as the fuzzer mutates the input.
pub fn derive(data: &[u8], k: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ k.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for &b in data.iter().rev().take(64) {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^ (h >> 29)
}

/// A token id below `vocab` (`vocab > 0`) derived from the input.
pub fn token(data: &[u8], k: u64, vocab: usize) -> u32 {
    (derive(data, k) % vocab as u64) as u32
}

/// The bit patterns of `values`, so that arrays holding NaN can be compared exactly.
pub fn bits<'a>(values: impl IntoIterator<Item = &'a f32>) -> Vec<u32> {
    values.into_iter().map(|v| v.to_bits()).collect()
}

/// A state's tensors as names and bit patterns, for exact comparison (its file bytes are not
/// canonical: the header's metadata map is written in no fixed order).
pub fn state_bits(state: &tokenshift::State) -> Vec<(String, Vec<usize>, Vec<u32>)> {
    state
        .tensors()
        .into_iter()
        .map(|(name, a)| (name, a.shape().to_vec(), bits(a.iter())))
        .collect()
}

/// Greedy longest match done plainly, as the reference for the tokenizer's trie: a hash map
/// from every prefix of every token to the id of the token it is (0 for a prefix that is not
/// one), walked one byte at a time from each position while the bytes are a prefix.
pub struct Greedy<'a> {
    prefixes: HashMap<&'a [u8], u32>,
}

impl<'a> Greedy<'a> {
    /// The reference for `tokens` (bytes and id, ids above 0).
    pub fn new(tokens: impl IntoIterator<Item = (&'a [u8], u32)>) -> Self {
        let mut prefixes = HashMap::new();
        for (token, id) in tokens {
            for len in 1..token.len() {
                prefixes.entry(&token[..len]).or_insert(0);
            }
            prefixes.insert(token, id);
        }
        Greedy { prefixes }
    }

    /// The ids of `bytes`; `None` if some byte is not a token.
    pub fn encode(&self, bytes: &[u8]) -> Option<Vec<u32>> {
        let mut ids = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            let mut best = None;
            for end in i + 1..=bytes.len() {
                match self.prefixes.get(&bytes[i..end]) {
                    None => break,
                    Some(0) => {}
                    Some(&id) => best = Some((end, id)),
                }
            }
            let (end, id) = best?;
            ids.push(id);
            i = end;
        }
        Some(ids)
    }
}
