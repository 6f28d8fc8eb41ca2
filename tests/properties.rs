//! Properties over generated inputs (proptest): tokenizers invert themselves on any bytes and
//! match a plain greedy reference, vocabulary parsing never panics, the sampler never draws a
//! banned or dead token whatever the logits and settings, and the layers' constructors from
//! arrays accept consistent shapes (then run to finite outputs) and refuse inconsistent ones
//! with an error.

use ndarray::{Array1, Array2};
use proptest::prelude::*;
use std::collections::HashMap;
use tokenshift::mixer::aft::{AftFull, AftLocal, AftProjections, AftSimple};
use tokenshift::mixer::gla::Gla;
use tokenshift::mixer::linear_attention::{Favor, FeatureMap, LinearAttention};
use tokenshift::mixer::retention::Retention;
use tokenshift::mixer::short_conv::ShortConv;
use tokenshift::ops::{HeadNorm, NormKind};
use tokenshift::sample::{Sampler, SamplerConfig};
use tokenshift::{ByteTokenizer, Error, SequenceMixer, Tokenizer, WorldTokenizer};

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Greedy longest match over a token → id map: the definition the tokenizer implements.
fn greedy(tokens: &HashMap<Vec<u8>, u32>, longest: usize, bytes: &[u8]) -> Vec<u32> {
    let mut ids = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let len = (1..=longest.min(bytes.len() - i))
            .rev()
            .find(|&len| tokens.contains_key(&bytes[i..i + len]))
            .expect("every single byte is a token");
        ids.push(tokens[&bytes[i..i + len]]);
        i += len;
    }
    ids
}

/// A vocabulary file of the 256 single bytes (ids 1..=256) and `extra` tokens after them.
fn vocab_file(extra: &[Vec<u8>]) -> (String, HashMap<Vec<u8>, u32>) {
    let mut text = String::new();
    let mut map = HashMap::new();
    let singles = (0..=255u8).map(|b| vec![b]);
    for (id, token) in (1u32..).zip(singles.chain(extra.iter().cloned())) {
        let literal: String = token.iter().map(|b| format!("\\x{b:02x}")).collect();
        text.push_str(&format!("{id} b'{literal}' {}\n", token.len()));
        map.insert(token, id);
    }
    (text, map)
}

/// Distinct multi-byte tokens over a small alphabet, so that they overlap in inputs.
fn extra_tokens() -> impl Strategy<Value = Vec<Vec<u8>>> {
    proptest::collection::btree_set(proptest::collection::vec(97u8..101, 2..9), 0..24)
        .prop_map(|set| set.into_iter().collect())
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn world_and_byte_tokenizers_invert_on_any_bytes(
        bytes in proptest::collection::vec(any::<u8>(), 0..512),
    ) {
        let world = WorldTokenizer::world();
        prop_assert_eq!(world.decode(&world.encode_bytes(&bytes)).unwrap(), bytes.clone());
        let ids = ByteTokenizer.encode_bytes(&bytes);
        prop_assert_eq!(ByteTokenizer.decode(&ids).unwrap(), bytes);
    }

    #[test]
    fn small_vocabularies_encode_by_greedy_longest_match(
        extra in extra_tokens(),
        text in proptest::collection::vec(prop_oneof![97u8..101, any::<u8>()], 0..200),
    ) {
        let (file, map) = vocab_file(&extra);
        let tok = WorldTokenizer::from_vocab_str(&file).unwrap();
        let longest = extra.iter().map(Vec::len).max().unwrap_or(1);
        let ids = tok.encode_bytes(&text);
        prop_assert_eq!(&ids, &greedy(&map, longest, &text));
        prop_assert_eq!(tok.decode(&ids).unwrap(), text);
    }

    #[test]
    fn vocabulary_parsing_never_panics(
        bytes in proptest::collection::vec(any::<u8>(), 0..400),
        prefix_bytes in any::<bool>(),
    ) {
        let _ = WorldTokenizer::from_vocab_bytes(&bytes);
        if prefix_bytes {
            // After a valid prefix, so that the parser reaches the later lines.
            let (mut file, _) = vocab_file(&[]);
            file.push_str("257 ");
            let mut data = file.into_bytes();
            data.extend_from_slice(&bytes);
            let _ = WorldTokenizer::from_vocab_bytes(&data);
        }
    }
}

/// Logits with NaN, ±∞, huge and ordinary values.
fn logit() -> impl Strategy<Value = f32> {
    prop_oneof![
        60 => -20.0f32..20.0,
        1 => Just(f32::NAN),
        1 => Just(f32::INFINITY),
        1 => Just(f32::NEG_INFINITY),
        1 => Just(f32::MAX),
        1 => Just(-f32::MAX),
    ]
}

fn temperature() -> impl Strategy<Value = f64> {
    prop_oneof![
        Just(0.0),
        1e-300f64..1e-3,
        0.01f64..10.0,
        1e3f64..1e300,
        Just(f64::MAX),
        Just(5e-324),
    ]
}

proptest! {
    #![proptest_config(config(512))]

    /// Whatever the logits and settings, a draw is an id of the vocabulary that is not banned
    /// and whose logit is not NaN or −∞; otherwise the sampler says why in an error.
    #[test]
    fn the_sampler_never_draws_a_banned_or_dead_token(
        logits in proptest::collection::vec(logit(), 1..40),
        temperature in temperature(),
        top_p in prop_oneof![Just(1.0), 0.0f64..=1.0],
        top_k in 0usize..50,
        alpha_frequency in 0.0f64..2.0,
        alpha_presence in 0.0f64..2.0,
        ban in proptest::collection::vec(0u32..40, 0..6),
        history in proptest::collection::vec(0u32..40, 0..6),
        seed in any::<u64>(),
    ) {
        let v = logits.len() as u32;
        let ban: Vec<u32> = ban.into_iter().filter(|&t| t < v).collect();
        let config = SamplerConfig {
            temperature,
            top_p,
            top_k,
            alpha_frequency,
            alpha_presence,
            token_ban: ban.clone(),
            ..SamplerConfig::default()
        };
        let mut sampler = Sampler::new(config, seed).unwrap();
        for t in history.into_iter().filter(|&t| t < v) {
            sampler.accept(t, b"x");
        }
        let logits = Array1::from(logits);
        for _ in 0..4 {
            match sampler.sample(logits.view()) {
                Ok(id) => {
                    prop_assert!(id < v, "id {} of a vocabulary of {}", id, v);
                    prop_assert!(!ban.contains(&id), "banned id {}", id);
                    let l = logits[id as usize];
                    prop_assert!(!l.is_nan() && l != f32::NEG_INFINITY, "id {} has logit {}", id, l);
                }
                Err(e) => prop_assert!(matches!(e, Error::Sample(_)), "{}", e),
            }
        }
    }
}

fn matrix(rows: usize, cols: usize, seed: u64) -> Array2<f32> {
    let mut s = seed | 1;
    Array2::from_shape_fn((rows, cols), |_| {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) / (cols.max(1) as f32).sqrt()
    })
}

/// `forward` over `t` tokens and `step` over the same tokens give finite `[T, C]` and `[C]`
/// outputs.
fn runs_finite<M: SequenceMixer>(m: &M, c: usize, t: usize, seed: u64) -> bool {
    let xs = matrix(t, c, seed);
    let mut state = m.init_state();
    let ys = m.forward(xs.view(), &mut state);
    let mut state = m.init_state();
    let steps_ok = xs.rows().into_iter().all(|x| {
        let y = m.step(x, &mut state);
        y.len() == c && y.iter().all(|v| v.is_finite())
    });
    ys.dim() == (t, c) && ys.iter().all(|v| v.is_finite()) && steps_ok
}

/// Which of a layer's matrices to give a wrong shape, and by how much (`None`: all correct).
fn corruption(count: usize) -> impl Strategy<Value = Option<(usize, usize, usize)>> {
    prop_oneof![Just(None), (0..count, 0usize..2, 1usize..3).prop_map(Some),]
}

/// `shapes` with one dimension grown when `bad` says so.
fn shapes_with(
    shapes: &[(usize, usize)],
    bad: Option<(usize, usize, usize)>,
) -> Vec<(usize, usize)> {
    let mut shapes = shapes.to_vec();
    if let Some((i, axis, by)) = bad {
        if axis == 0 {
            shapes[i].0 += by;
        } else {
            shapes[i].1 += by;
        }
    }
    shapes
}

fn matrices<const N: usize>(shapes: &[(usize, usize)], seed: u64) -> [Array2<f32>; N] {
    std::array::from_fn(|i| matrix(shapes[i].0, shapes[i].1, seed + i as u64))
}

proptest! {
    #![proptest_config(config(48))]

    #[test]
    fn retention_from_arrays(
        heads in 1usize..3, half_key in 2usize..4, value in 1usize..6, c in 1usize..12,
        xpos in any::<bool>(), bad in corruption(5), t in 1usize..9, seed in any::<u64>(),
    ) {
        let (key, hk) = (2 * half_key, 2 * half_key * heads);
        let hv = heads * value;
        let shapes = shapes_with(&[(hk, c), (hk, c), (hv, c), (hv, c), (c, hv)], bad);
        let ws = matrices::<5>(&shapes, seed);
        let gammas = Array1::from_elem(heads, -0.1f32);
        let norm = HeadNorm::plain(hv, heads, 1e-5, NormKind::Layer);
        match Retention::new(heads, key, value, ws, gammas, xpos, norm) {
            Ok(m) => {
                prop_assert!(bad.is_none(), "accepted {:?}", shapes);
                prop_assert!(runs_finite(&m, c, t, seed));
            }
            Err(e) => prop_assert!(bad.is_some() && matches!(e, Error::InputShape { .. }), "{}", e),
        }
    }

    #[test]
    fn gla_from_arrays(
        heads in 1usize..3, key in 1usize..5, value in 1usize..5, c in 1usize..10,
        rank in 1usize..4, bad in corruption(7), t in 1usize..9, seed in any::<u64>(),
    ) {
        let (hk, hv) = (heads * key, heads * value);
        let shapes = shapes_with(
            &[(hk, c), (hk, c), (hv, c), (hv, c), (c, hv), (rank, c), (hk, rank)],
            bad,
        );
        let ws = matrices::<7>(&shapes, seed);
        let norm = HeadNorm::plain(hv, heads, 1e-5, NormKind::Rms);
        match Gla::new(heads, key, value, ws, Array1::from_elem(hk, 2.0), norm) {
            Ok(m) => {
                // A gate's rank is read from W_α1, so only W_α2's second axis can tell a wrong
                // rank: a grown first axis of W_α1 is a consistent layer of a larger rank.
                prop_assert!(bad.is_none() || bad.unwrap().0 == 5, "accepted {:?}", shapes);
                prop_assert!(runs_finite(&m, c, t, seed));
            }
            Err(e) => prop_assert!(bad.is_some() && matches!(e, Error::InputShape { .. }), "{}", e),
        }
    }

    #[test]
    fn linear_attention_from_arrays(
        heads in 1usize..3, key in 1usize..5, value in 1usize..5, c in 1usize..10,
        favor in proptest::option::of(1usize..6), bad in corruption(4), t in 1usize..9,
        seed in any::<u64>(),
    ) {
        let (hk, hv) = (heads * key, heads * value);
        let shapes = shapes_with(&[(hk, c), (hk, c), (hv, c), (c, hv)], bad);
        let ws = matrices::<4>(&shapes, seed);
        let feature = match favor {
            Some(m) => FeatureMap::Favor(Favor::orthogonal(m, key, seed)),
            None => FeatureMap::EluPlusOne,
        };
        match LinearAttention::new(heads, key, value, ws, feature) {
            Ok(m) => {
                prop_assert!(bad.is_none(), "accepted {:?}", shapes);
                prop_assert!(runs_finite(&m, c, t, seed));
            }
            Err(e) => prop_assert!(bad.is_some() && matches!(e, Error::InputShape { .. }), "{}", e),
        }
        // A FAVOR+ projection of another key size is refused.
        let ws = matrices::<4>(&[(hk, c), (hk, c), (hv, c), (c, hv)], seed);
        let wrong = FeatureMap::Favor(Favor::orthogonal(3, key + 1, seed));
        prop_assert!(LinearAttention::new(heads, key, value, ws, wrong).is_err());
    }

    #[test]
    fn aft_from_arrays(
        c in 1usize..10, t_max in 1usize..12, window in 0usize..5, bad in corruption(4),
        bias_bad in any::<bool>(), seed in any::<u64>(),
    ) {
        let shapes = shapes_with(&[(c, c); 4], bad);
        let proj = AftProjections::new(matrices::<4>(&shapes, seed));
        let proj = match proj {
            Ok(p) => {
                prop_assert!(bad.is_none(), "accepted {:?}", shapes);
                p
            }
            Err(e) => {
                prop_assert!(bad.is_some() && matches!(e, Error::InputShape { .. }), "{}", e);
                return Ok(());
            }
        };
        prop_assert!(runs_finite(&AftSimple::new(proj.clone()), c, t_max, seed));
        let bias = matrix(t_max, t_max + usize::from(bias_bad), seed);
        match AftFull::new(proj.clone(), bias.clone()) {
            Ok(m) => prop_assert!(!bias_bad && runs_finite(&m, c, t_max, seed)),
            Err(e) => prop_assert!(bias_bad, "{}", e),
        }
        match AftLocal::new(proj, bias, window) {
            Ok(m) => prop_assert!(!bias_bad && window > 0 && runs_finite(&m, c, t_max, seed)),
            Err(e) => prop_assert!(bias_bad || window == 0, "{}", e),
        }
    }

    #[test]
    fn short_conv_from_arrays(
        c in 1usize..12, k in 0usize..5, bias in proptest::option::of(0usize..14),
        silu in any::<bool>(), t in 1usize..9, seed in any::<u64>(),
    ) {
        let bias_array = bias.map(|n| Array1::from_elem(n, 0.1f32));
        match ShortConv::new(matrix(c, k, seed), bias_array, silu) {
            Ok(m) => {
                prop_assert!(k > 0 && bias.is_none_or(|n| n == c));
                prop_assert!(runs_finite(&m, c, t, seed));
            }
            Err(e) => prop_assert!(k == 0 || bias.is_some_and(|n| n != c), "{}", e),
        }
    }
}
