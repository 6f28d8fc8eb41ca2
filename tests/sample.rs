//! The sampler's parts, each against a plain reference: penalties follow the official
//! arithmetic bit for bit, the truncated/tempered distribution matches an f64 reference, draws
//! follow it statistically, top-k / top-p never leak, temperature 0 is argmax, seeds reproduce.

use ndarray::{Array1, ArrayView1};
use tokenshift::sample::{
    argmax, ban_tokens, ends_with_stop_string, find_stop_string, occurrence_weight,
    partial_stop_len, probabilities, sample_logits, softmax, top_p_cutoff, RepetitionPenalty, Rng,
    Sampler, SamplerConfig,
};
use tokenshift::Error;

fn view(x: &[f32]) -> ArrayView1<'_, f32> {
    ArrayView1::from(x)
}

/// Logits from a fixed generator: `scale * N(0, 1)`-ish (sum of uniforms).
fn random_logits(rng: &mut Rng, v: usize, scale: f32) -> Vec<f32> {
    (0..v)
        .map(|_| {
            let s: f64 = (0..4).map(|_| rng.next_f64()).sum();
            ((s - 2.0) * 1.7) as f32 * scale
        })
        .collect()
}

/// The official `sample_logits` distribution written out plainly: f32 softmax (reference in
/// f64), a full descending sort, the f32 running sum, top-k, `p^(1/T)`, renormalise (f64).
fn reference_distribution(logits: &[f32], t: f64, top_p: f64, top_k: usize) -> Vec<f64> {
    let v = logits.len();
    if t == 0.0 {
        let best = argmax(view(logits)).unwrap() as usize;
        return (0..v).map(|i| if i == best { 1.0 } else { 0.0 }).collect();
    }
    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let e: Vec<f64> = logits.iter().map(|&l| (l as f64 - max).exp()).collect();
    let sum: f64 = e.iter().sum();
    let mut p: Vec<f64> = e.iter().map(|x| x / sum).collect();
    let mut order: Vec<usize> = (0..v).collect();
    order.sort_by(|&a, &b| p[b].total_cmp(&p[a]).then(a.cmp(&b)));
    if top_p < 1.0 {
        let mut cum = 0.0f32;
        let mut cutoff = 0.0;
        for &i in &order {
            cum += p[i] as f32;
            if cum >= top_p as f32 {
                cutoff = p[i];
                break;
            }
        }
        for x in p.iter_mut() {
            if *x < cutoff {
                *x = 0.0;
            }
        }
    }
    if top_k > 0 && top_k < v {
        for &i in &order[top_k..] {
            p[i] = 0.0;
        }
    }
    let p: Vec<f64> = p.iter().map(|&x| x.powf(1.0 / t)).collect();
    let sum: f64 = p.iter().sum();
    p.iter().map(|x| x / sum).collect()
}

#[test]
fn defaults_are_the_official_pipeline_args() {
    let c = SamplerConfig::default();
    assert_eq!(c.temperature, 1.0);
    assert_eq!(c.top_p, 0.85);
    assert_eq!(c.top_k, 0);
    assert_eq!(c.alpha_frequency, 0.2);
    assert_eq!(c.alpha_presence, 0.2);
    assert_eq!(c.alpha_decay, 0.996);
    assert!(c.token_ban.is_empty() && c.token_stop.is_empty() && c.stop_strings.is_empty());
    c.validate().unwrap();
    SamplerConfig::greedy().validate().unwrap();
}

#[test]
fn invalid_settings_are_errors() {
    let bad = [
        SamplerConfig {
            temperature: -0.1,
            ..Default::default()
        },
        SamplerConfig {
            temperature: f64::NAN,
            ..Default::default()
        },
        SamplerConfig {
            temperature: f64::INFINITY,
            ..Default::default()
        },
        SamplerConfig {
            top_p: 1.5,
            ..Default::default()
        },
        SamplerConfig {
            top_p: -0.5,
            ..Default::default()
        },
        SamplerConfig {
            top_p: f64::NAN,
            ..Default::default()
        },
        SamplerConfig {
            alpha_decay: f64::NAN,
            ..Default::default()
        },
        SamplerConfig {
            alpha_presence: f64::INFINITY,
            ..Default::default()
        },
    ];
    for config in bad {
        let err = Sampler::new(config.clone(), 0).unwrap_err();
        assert!(matches!(err, Error::Sample(_)), "{config:?}: {err:?}");
    }
    let mut rng = Rng::new(0);
    assert!(sample_logits(view(&[0.0, 1.0]), -1.0, 0.5, 0, &mut rng).is_err());
    assert!(probabilities(view(&[0.0, 1.0]), 1.0, 2.0, 0).is_err());
}

#[test]
fn rng_is_reproducible_and_uniform() {
    let (mut a, mut b, mut c) = (Rng::new(1), Rng::new(1), Rng::new(2));
    let xs: Vec<u64> = (0..100).map(|_| a.next_u64()).collect();
    let ys: Vec<u64> = (0..100).map(|_| b.next_u64()).collect();
    let zs: Vec<u64> = (0..100).map(|_| c.next_u64()).collect();
    assert_eq!(xs, ys);
    assert_ne!(xs, zs);
    // 16 equal bins, 160 000 draws: chi-square with 15 degrees of freedom stays far below 50.
    let mut rng = Rng::new(3);
    let n = 160_000;
    let mut bins = [0u32; 16];
    for _ in 0..n {
        let x = rng.next_f64();
        assert!((0.0..1.0).contains(&x));
        bins[(x * 16.0) as usize] += 1;
    }
    let expected = n as f64 / 16.0;
    let chi2: f64 = bins
        .iter()
        .map(|&k| (k as f64 - expected).powi(2) / expected)
        .sum();
    assert!(chi2 < 50.0, "chi2 = {chi2}, bins {bins:?}");
}

#[test]
fn ban_sets_minus_infinity_and_checks_ids() {
    let mut logits = Array1::from(vec![1.0f32, 2.0, 3.0]);
    ban_tokens(logits.view_mut(), &[2, 0]).unwrap();
    assert_eq!(logits.to_vec(), [f32::NEG_INFINITY, 2.0, f32::NEG_INFINITY]);
    let mut logits = Array1::from(vec![1.0f32, 2.0, 3.0]);
    let err = ban_tokens(logits.view_mut(), &[1, 3]).unwrap_err();
    assert!(
        matches!(err, Error::TokenOutOfRange { token: 3, vocab: 3 }),
        "{err:?}"
    );
    assert_eq!(logits.to_vec(), [1.0, 2.0, 3.0], "nothing changes on error");
}

#[test]
fn occurrence_weight_is_the_official_substring_rule() {
    let table: &[(&[u8], f64)] = &[
        (b" ", 0.0),
        (b"\t", 0.0),
        (b"0", 0.0),
        (b"7", 0.0),
        (b"12", 0.0), // a substring of " \t0123456789"
        (b" \t0", 0.0),
        (b"0123456789", 0.0),
        (b"13", 1.0),
        (b"  ", 1.0),
        (b"\n", 1.0),
        (b"a", 1.0),
        (b" the", 1.0),
        (b"\xff", 1.0), // decodes to U+FFFD
        ("７".as_bytes(), 1.0),
    ];
    for &(bytes, weight) in table {
        assert_eq!(occurrence_weight(bytes), weight, "{bytes:?}");
    }
}

/// Expected values come from the official bookkeeping in `rwkv/utils.py` (PIPELINE.generate),
/// run with torch on the same sequence; see the comment in the test for the hand computation.
#[test]
fn penalties_follow_the_official_arithmetic_exactly() {
    // Tokens 5 'a', 7 ' ', 5 'a', 9 '12', 3 '\n', 5 'a' with the defaults (0.2, 0.2, 0.996):
    //   c_5 = ((1·d + 0)·d + 1)·d·d·d + 1 = 2.968207297278976 (d = 0.996), c_3 = 0.996,
    //   c_7 = c_9 = 0 (weight 0, entry kept). Penalty = 0.2 + 0.2·c.
    let mut penalty = RepetitionPenalty::from_config(&SamplerConfig::default());
    for (token, text) in [(5, "a"), (7, " "), (5, "a"), (9, "12"), (3, "\n"), (5, "a")] {
        penalty.record(token, text.as_bytes());
    }
    let d = 0.996f64;
    assert_eq!(
        penalty.count(5),
        Some(((d + 0.0) * d + 1.0) * d * d * d + 1.0)
    );
    assert_eq!(penalty.count(5), Some(2.968207297278976));
    assert_eq!(penalty.count(3), Some(0.996));
    assert_eq!(penalty.count(7), Some(0.0));
    assert_eq!(penalty.count(9), Some(0.0));
    assert_eq!(penalty.count(1), None);
    assert_eq!(penalty.len(), 4);
    assert_eq!(penalty.penalty(7), 0.2, "presence still applies at count 0");
    assert_eq!(penalty.penalty(1), 0.0);

    let mut logits = Array1::from(vec![
        1.0f32, -2.5, 0.75, 3.0, 0.0, 1.0, 0.5, 2.0, -1.0, 0.25,
    ]);
    penalty.apply(logits.view_mut()).unwrap();
    // f32 bit patterns printed by the official code (torch float32 logits).
    let official: [u32; 10] = [
        1065353216, 3223322624, 1061158912, 1076261762, 0, 1045647272, 1056964608, 1072064102,
        3212836864, 1028443340,
    ];
    let got: Vec<u32> = logits.iter().map(|x| x.to_bits()).collect();
    assert_eq!(got, official);

    let mut short = Array1::from(vec![0.0f32; 6]);
    let err = penalty.apply(short.view_mut()).unwrap_err();
    assert!(
        matches!(err, Error::TokenOutOfRange { vocab: 6, .. }),
        "{err:?}"
    );
    assert_eq!(short.to_vec(), [0.0; 6], "nothing changes on error");

    penalty.clear();
    assert!(penalty.is_empty());
}

#[test]
fn softmax_matches_an_f64_reference_and_rejects_bad_logits() {
    let mut rng = Rng::new(5);
    for v in [1, 2, 7, 1000, 65536] {
        let logits = random_logits(&mut rng, v, 3.0);
        let p = softmax(view(&logits)).unwrap();
        let reference = reference_distribution(&logits, 1.0, 1.0, 0);
        let total: f64 = p.iter().map(|&x| x as f64).sum();
        assert!((total - 1.0).abs() < 1e-5, "v = {v}: sum {total}");
        for (a, b) in p.iter().zip(&reference) {
            assert!((*a as f64 - b).abs() <= 1e-6 * b.max(1e-3), "{a} vs {b}");
        }
    }
    assert_eq!(
        softmax(view(&[f32::NEG_INFINITY, 0.0])).unwrap(),
        [0.0, 1.0]
    );
    for bad in [
        vec![],
        vec![0.0, f32::NAN],
        vec![0.0, f32::INFINITY],
        vec![f32::NEG_INFINITY; 3],
    ] {
        let err = softmax(view(&bad)).unwrap_err();
        assert!(matches!(err, Error::Sample(_)), "{bad:?}: {err:?}");
    }
}

#[test]
fn top_p_cutoff_on_hand_cases() {
    let p = [0.05f32, 0.5, 0.15, 0.3];
    assert_eq!(top_p_cutoff(&p, 0.85).unwrap(), 0.15);
    assert_eq!(top_p_cutoff(&p, 0.9).unwrap(), 0.15);
    assert_eq!(top_p_cutoff(&p, 0.96).unwrap(), 0.05);
    assert_eq!(top_p_cutoff(&p, 0.4).unwrap(), 0.5);
    assert_eq!(
        top_p_cutoff(&p, 0.0).unwrap(),
        0.5,
        "top_p 0 keeps the top token"
    );
    assert_eq!(
        top_p_cutoff(&p, 1.0).unwrap(),
        0.0,
        "top_p 1 keeps everything"
    );
    assert!(top_p_cutoff(&p, 1.01).is_err());
    // Ties with the cutoff are kept.
    let ties = [0.4f32, 0.2, 0.2, 0.2];
    assert_eq!(top_p_cutoff(&ties, 0.5).unwrap(), 0.2);
}

#[test]
fn top_p_cutoff_equals_a_full_sort_on_random_vectors() {
    let mut rng = Rng::new(11);
    for round in 0..300 {
        let v = [3, 64, 65, 300, 5000][round % 5];
        let scale = [0.1, 1.0, 4.0][round % 3];
        let probs = softmax(view(&random_logits(&mut rng, v, scale))).unwrap();
        let top_p = rng.next_f64();
        let mut sorted = probs.clone();
        sorted.sort_by(|a, b| b.total_cmp(a));
        let mut cum = 0.0f32;
        let mut expected = 0.0;
        for &x in &sorted {
            cum += x;
            if cum >= top_p as f32 {
                expected = x;
                break;
            }
        }
        assert_eq!(
            top_p_cutoff(&probs, top_p).unwrap(),
            expected,
            "v {v} top_p {top_p}"
        );
    }
}

#[test]
fn probabilities_match_the_reference_distribution() {
    let mut rng = Rng::new(13);
    let settings = [
        (1.0, 0.85, 0),
        (1.0, 1.0, 0),
        (0.7, 0.9, 5),
        (2.0, 0.5, 0),
        (1.3, 1.0, 40),
        (0.2, 0.99, 3),
        (1.0, 0.0, 0),
        (0.0, 0.85, 0),
        (0.05, 1.0, 0),
    ];
    for v in [1, 2, 10, 100, 2000, 65536] {
        for &(t, top_p, top_k) in &settings {
            let logits = random_logits(&mut rng, v, 2.0);
            let p = probabilities(view(&logits), t, top_p, top_k).unwrap();
            let reference = reference_distribution(&logits, t, top_p, top_k);
            for (i, (a, b)) in p.iter().zip(&reference).enumerate() {
                assert!(
                    (*a as f64 - b).abs() <= 2e-6 + 1e-5 * b,
                    "v {v} T {t} top_p {top_p} top_k {top_k} token {i}: {a} vs {b}"
                );
                // Same support, except that f32 may underflow what f64 keeps as ~1e-40.
                if *b == 0.0 {
                    assert_eq!(*a, 0.0, "token {i} should have been cut");
                }
                if *a == 0.0 {
                    assert!(*b < 1e-12, "token {i} was cut but has probability {b}");
                }
            }
        }
    }
}

/// The distributions the official `PIPELINE.sample_logits` (rwkv 0.8.32, numpy CPU path) hands
/// to `np.random.choice`, captured by this script (`/work/venv/bin/python`):
///
/// ```python
/// import numpy as np, torch
/// from rwkv.utils import PIPELINE
/// captured = []
/// np.random.choice = lambda a, p: (captured.append(p.copy()), 0)[1]
/// pipe = PIPELINE.__new__(PIPELINE)  # sample_logits needs no model or tokenizer
/// logits = [[2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -3.0],
///           [0.3, -1.2, 2.2, 2.2, 0.0, -4.0, 1.1, 0.7]]
/// for l in logits:
///     for (t, top_p, top_k) in [(1.0, 0.85, 0), (0.7, 0.9, 5), (1.8, 0.95, 0), (0.5, 1.0, 3), (3.0, 0.6, 0), (1.0, 0.0, 0)]:
///         pipe.sample_logits(torch.tensor(l), temperature=t, top_p=top_p, top_k=top_k)
///         p = captured.pop()
///         print(f"    ({l}, {t}, {top_p}, {top_k}, [{', '.join(repr(float(x)) for x in p)}]),")
/// ```
type Official = (&'static [f32], f64, f64, usize, &'static [f64]);

/// `(logits, temperature, top_p, top_k, distribution)`.
#[rustfmt::skip]
const OFFICIAL_DISTRIBUTIONS: &[Official] = &[
    (&[2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -3.0], 1.0, 0.85, 0, &[0.45505422353744507, 0.2760043442249298, 0.16740509867668152, 0.101536326110363, 0.0, 0.0, 0.0, 0.0]),
    (&[2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -3.0], 0.7, 0.9, 5, &[0.5252254009246826, 0.25711971521377563, 0.12587079405784607, 0.06161900609731674, 0.030165068805217743, 0.0, 0.0, 0.0]),
    (&[2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -3.0], 1.8, 0.95, 0, &[0.2990107238292694, 0.22649019956588745, 0.1715584248304367, 0.12994952499866486, 0.09843222796916962, 0.07455897331237793, 0.0, 0.0]),
    (&[2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -3.0], 0.5, 1.0, 3, &[0.6652409434318542, 0.2447284758090973, 0.09003056585788727, 0.0, 0.0, 0.0, 0.0, 0.0]),
    (&[2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -3.0], 3.0, 0.6, 0, &[0.5415704846382141, 0.4584295153617859, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]),
    (&[2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -3.0], 1.0, 0.0, 0, &[1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]),
    (&[0.3, -1.2, 2.2, 2.2, 0.0, -4.0, 1.1, 0.7], 1.0, 0.85, 0, &[0.0, 0.0, 0.3912361264228821, 0.3912361264228821, 0.0, 0.0, 0.13023118674755096, 0.08729658275842667]),
    (&[0.3, -1.2, 2.2, 2.2, 0.0, -4.0, 1.1, 0.7], 0.7, 0.9, 5, &[0.02770530804991722, 0.0, 0.41817915439605713, 0.41817915439605713, 0.0, 0.0, 0.08687596023082733, 0.049060430377721786]),
    (&[0.3, -1.2, 2.2, 2.2, 0.0, -4.0, 1.1, 0.7], 1.8, 0.95, 0, &[0.09613446891307831, 0.0, 0.2762492597103119, 0.2762492597103119, 0.0813760757446289, 0.0, 0.1499335914850235, 0.12005742639303207]),
    (&[0.3, -1.2, 2.2, 2.2, 0.0, -4.0, 1.1, 0.7], 0.5, 1.0, 3, &[0.0, 0.0, 0.47375333309173584, 0.47375333309173584, 0.0, 0.0, 0.05249336361885071, 0.0]),
    (&[0.3, -1.2, 2.2, 2.2, 0.0, -4.0, 1.1, 0.7], 3.0, 0.6, 0, &[0.0, 0.0, 0.5, 0.5, 0.0, 0.0, 0.0, 0.0]),
    (&[0.3, -1.2, 2.2, 2.2, 0.0, -4.0, 1.1, 0.7], 1.0, 0.0, 0, &[0.0, 0.0, 0.5, 0.5, 0.0, 0.0, 0.0, 0.0]),
];

#[test]
fn probabilities_match_the_official_sample_logits() {
    for &(logits, t, top_p, top_k, official) in OFFICIAL_DISTRIBUTIONS {
        let p = probabilities(view(logits), t, top_p, top_k).unwrap();
        for (i, (&a, &b)) in p.iter().zip(official).enumerate() {
            assert!(
                (a as f64 - b).abs() < 1e-6,
                "{logits:?} T {t} top_p {top_p} top_k {top_k} token {i}: {a} vs official {b}"
            );
        }
    }
}

/// Counts `n` draws and checks each token's frequency against `expected` within 5 standard
/// errors, and that tokens with probability 0 never appear.
fn check_frequencies(draw: &mut dyn FnMut() -> u32, expected: &[f64], n: usize) {
    let mut counts = vec![0usize; expected.len()];
    for _ in 0..n {
        counts[draw() as usize] += 1;
    }
    for (i, (&k, &p)) in counts.iter().zip(expected).enumerate() {
        if p == 0.0 {
            assert_eq!(k, 0, "token {i} has probability 0 but was drawn {k} times");
            continue;
        }
        let mean = n as f64 * p;
        let sd = (n as f64 * p * (1.0 - p)).sqrt();
        assert!(
            (k as f64 - mean).abs() <= 5.0 * sd + 1.0,
            "token {i}: drawn {k} times, expected {mean:.1} ± {sd:.1}"
        );
    }
}

#[test]
fn draws_follow_the_truncated_tempered_distribution() {
    let logits = [2.0f32, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -3.0];
    let mut rng = Rng::new(17);
    for &(t, top_p, top_k) in &[
        (1.0, 1.0, 0),
        (1.0, 0.85, 0),
        (0.7, 0.9, 5),
        (1.8, 0.95, 0),
        (0.5, 1.0, 3),
        (3.0, 0.6, 0),
    ] {
        let expected = reference_distribution(&logits, t, top_p, top_k);
        let mut draw = || sample_logits(view(&logits), t, top_p, top_k, &mut rng).unwrap();
        check_frequencies(&mut draw, &expected, 20_000);
    }
}

#[test]
fn top_k_and_top_p_never_leak() {
    let mut rng = Rng::new(19);
    let logits = random_logits(&mut rng, 1000, 1.0);
    let mut order: Vec<usize> = (0..1000).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    let top10: Vec<u32> = order[..10].iter().map(|&i| i as u32).collect();
    let probs = softmax(view(&logits)).unwrap();
    let cutoff = top_p_cutoff(&probs, 0.3).unwrap();
    for _ in 0..5000 {
        // A high temperature flattens what is kept, so leaks would show.
        let k = sample_logits(view(&logits), 5.0, 1.0, 10, &mut rng).unwrap();
        assert!(top10.contains(&k), "top-k leaked token {k}");
        let p = sample_logits(view(&logits), 5.0, 0.3, 0, &mut rng).unwrap();
        assert!(probs[p as usize] >= cutoff, "top-p leaked token {p}");
    }
}

#[test]
fn temperature_zero_is_argmax_and_uses_no_randomness() {
    let mut rng = Rng::new(23);
    for v in [1, 2, 50, 65536] {
        let logits = random_logits(&mut rng, v, 2.0);
        let best = logits
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, _)| i as u32)
            .unwrap();
        let before = rng.clone();
        for &(top_p, top_k) in &[(0.85, 0), (1.0, 0), (0.1, 3)] {
            assert_eq!(
                sample_logits(view(&logits), 0.0, top_p, top_k, &mut rng).unwrap(),
                best
            );
        }
        assert_eq!(rng, before, "greedy draws consume no random numbers");
        assert_eq!(argmax(view(&logits)).unwrap(), best);
    }
    // Ties: the lowest id; -inf is skipped; NaN is an error.
    assert_eq!(argmax(view(&[1.0, 3.0, 3.0])).unwrap(), 1);
    assert_eq!(argmax(view(&[f32::NEG_INFINITY, -5.0])).unwrap(), 1);
    assert!(argmax(view(&[0.0, f32::NAN])).is_err());
    assert!(argmax(view(&[f32::NEG_INFINITY])).is_err());
    assert!(argmax(view(&[])).is_err());
}

#[test]
fn tiny_and_huge_temperatures_stay_finite() {
    let logits = [0.0f32, 1.0, 2.0, 3.0];
    let p = probabilities(view(&logits), 1e-6, 1.0, 0).unwrap();
    assert_eq!(p, [0.0, 0.0, 0.0, 1.0]);
    let p = probabilities(view(&logits), 1e6, 1.0, 0).unwrap();
    for x in p {
        assert!((x - 0.25).abs() < 1e-5, "{x}");
    }
}

/// Banned and −∞ tokens have probability exactly 0 at every temperature: at a huge `T` the
/// surviving tokens tend to uniform, at a tiny one to the argmax, and the dead ones stay dead.
#[test]
fn banned_tokens_stay_impossible_at_any_temperature() {
    let mut logits = Array1::from(vec![0.5f32, 2.0, -1.0, 1.0, f32::NEG_INFINITY, 0.0]);
    ban_tokens(logits.view_mut(), &[1]).unwrap();
    let dead = [1usize, 4];
    for t in [1e30, 1e45, 1e300, f64::MAX, 1e-300, 5e-324, 1e-30] {
        let p = probabilities(logits.view(), t, 1.0, 0).unwrap();
        for &d in &dead {
            assert_eq!(p[d], 0.0, "T = {t:e}: token {d} has probability {}", p[d]);
        }
        assert!(p.iter().all(|x| x.is_finite()), "T = {t:e}: {p:?}");
        let sum: f32 = p.iter().sum();
        assert!(
            (sum - 1.0).abs() < 1e-5,
            "T = {t:e}: probabilities sum to {sum}"
        );
        if t >= 1e30 {
            for (i, &x) in p.iter().enumerate().filter(|(i, _)| !dead.contains(i)) {
                assert!((x - 0.25).abs() < 1e-5, "T = {t:e}: token {i} has {x}");
            }
        } else {
            assert_eq!(p[3], 1.0, "T = {t:e}: {p:?}");
        }
        let mut rng = Rng::new(7);
        for _ in 0..2000 {
            let id = sample_logits(logits.view(), t, 1.0, 0, &mut rng).unwrap() as usize;
            assert!(!dead.contains(&id), "T = {t:e}: drew dead token {id}");
        }
        let config = SamplerConfig {
            temperature: t,
            top_p: 1.0,
            ..Default::default()
        };
        let mut sampler = Sampler::new(config, 8).unwrap();
        for _ in 0..200 {
            let id = sampler.sample(logits.view()).unwrap() as usize;
            assert!(
                !dead.contains(&id),
                "T = {t:e}: the sampler drew dead token {id}"
            );
        }
    }
}

#[test]
fn non_contiguous_logit_views_work() {
    let m = ndarray::Array2::from_shape_fn((4, 3), |(i, j)| (i * 3 + j) as f32);
    let col = m.column(1); // stride 3
    let mut rng = Rng::new(0);
    assert_eq!(sample_logits(col, 0.0, 1.0, 0, &mut rng).unwrap(), 3);
    assert_eq!(softmax(col).unwrap().len(), 4);
}

#[test]
fn same_seed_same_tokens_different_seed_different_tokens() {
    let mut rng = Rng::new(29);
    let logits = random_logits(&mut rng, 500, 1.0);
    let run = |seed| {
        let mut s = Sampler::new(
            SamplerConfig {
                top_p: 1.0,
                ..Default::default()
            },
            seed,
        )
        .unwrap();
        (0..100)
            .map(|_| {
                let t = s.sample(view(&logits)).unwrap();
                s.accept(t, b"x");
                t
            })
            .collect::<Vec<u32>>()
    };
    assert_eq!(run(1), run(1));
    assert_ne!(run(1), run(2));
    // A clone is a fork: it continues with the same tokens.
    let mut a = Sampler::new(SamplerConfig::default(), 3).unwrap();
    a.sample(view(&logits)).unwrap();
    let mut b = a.clone();
    for _ in 0..20 {
        assert_eq!(
            a.sample(view(&logits)).unwrap(),
            b.sample(view(&logits)).unwrap()
        );
    }
}

#[test]
fn the_sampler_is_ban_then_penalty_then_sample_logits() {
    let mut rng = Rng::new(31);
    let logits = random_logits(&mut rng, 64, 1.5);
    let config = SamplerConfig {
        temperature: 0.8,
        top_p: 0.9,
        top_k: 20,
        token_ban: vec![3, 10],
        token_stop: vec![0],
        ..Default::default()
    };
    let mut sampler = Sampler::new(config.clone(), 99).unwrap();
    let mut reference_rng = Rng::new(99);
    let mut penalty = RepetitionPenalty::from_config(&config);
    for step in 0..300 {
        let mut adjusted = Array1::from(logits.clone());
        ban_tokens(adjusted.view_mut(), &config.token_ban).unwrap();
        penalty.apply(adjusted.view_mut()).unwrap();
        let expected = sample_logits(adjusted.view(), 0.8, 0.9, 20, &mut reference_rng).unwrap();
        let token = sampler.sample(view(&logits)).unwrap();
        assert_eq!(token, expected, "step {step}");
        assert!(token != 3 && token != 10, "banned token drawn");
        if sampler.is_stop_token(token) {
            break;
        }
        let text = if token.is_multiple_of(2) {
            &b" "[..]
        } else {
            &b"w"[..]
        };
        sampler.accept(token, text);
        penalty.record(token, text);
    }
    assert_eq!(sampler.penalty(), &penalty);
    sampler.reset();
    assert!(sampler.penalty().is_empty());
}

#[test]
fn penalties_push_probability_away_from_repeated_tokens() {
    let logits = [0.0f32; 4];
    let config = SamplerConfig {
        top_p: 1.0,
        alpha_presence: 0.5,
        alpha_frequency: 0.5,
        alpha_decay: 1.0,
        ..Default::default()
    };
    let mut sampler = Sampler::new(config, 37).unwrap();
    for _ in 0..3 {
        sampler.accept(0, b"a");
    }
    // Token 0's logit is now 0 − (0.5 + 3·0.5) = −2.
    let e = (-2.0f64).exp();
    let p0 = e / (e + 3.0);
    let p = (1.0 - p0) / 3.0;
    let mut draw = || sampler.sample(view(&logits)).unwrap();
    check_frequencies(&mut draw, &[p0, p, p, p], 20_000);
}

#[test]
fn sampling_errors_are_reported_not_panics() {
    let config = SamplerConfig {
        token_ban: vec![0, 1],
        ..Default::default()
    };
    let mut sampler = Sampler::new(config, 0).unwrap();
    let err = sampler.sample(view(&[1.0, 2.0])).unwrap_err();
    assert!(err.to_string().contains("banned"), "{err}");
    let err = sampler.sample(view(&[1.0])).unwrap_err();
    assert!(
        matches!(err, Error::TokenOutOfRange { token: 1, vocab: 1 }),
        "{err:?}"
    );
    let mut sampler = Sampler::new(SamplerConfig::default(), 0).unwrap();
    assert!(sampler.sample(view(&[1.0, f32::NAN])).is_err());
    assert!(sampler.sample(view(&[])).is_err());
    sampler.accept(5, b"x");
    let err = sampler.sample(view(&[1.0, 2.0])).unwrap_err();
    assert!(
        matches!(err, Error::TokenOutOfRange { token: 5, vocab: 2 }),
        "{err:?}"
    );
}

#[test]
fn stop_tokens_and_stop_strings() {
    let config = SamplerConfig {
        token_stop: vec![0, 261],
        stop_strings: vec!["\n\nUser:".into(), "".into(), "END".into()],
        ..Default::default()
    };
    assert!(config.is_stop_token(261) && config.is_stop_token(0) && !config.is_stop_token(1));
    assert_eq!(config.find_stop_string("Hi.\n\nUser: more"), Some((3, 0)));
    assert_eq!(config.find_stop_string("THE END\n\nUser:"), Some((4, 2)));
    assert_eq!(
        config.find_stop_string("nothing here"),
        None,
        "empty stop strings are ignored"
    );

    let stops = ["\n\n", "Ende"];
    assert_eq!(find_stop_string("a\n\nb", &stops), Some((1, 0)));
    assert_eq!(find_stop_string("", &stops), None);
    assert_eq!(ends_with_stop_string("Das ist das Ende", &stops), Some(1));
    assert_eq!(ends_with_stop_string("Ende.", &stops), None);
    assert_eq!(ends_with_stop_string("x", &[""]), None);

    // Text to hold back while streaming: a suffix that may still grow into a stop string.
    assert_eq!(partial_stop_len("Hello\n", &["\n\nUser:"]), 1);
    assert_eq!(partial_stop_len("Hello\n\nUs", &["\n\nUser:"]), 4);
    assert_eq!(partial_stop_len("Hello", &["\n\nUser:"]), 0);
    assert_eq!(
        partial_stop_len("x\n\nUser:", &["\n\nUser:"]),
        0,
        "a full match is not partial"
    );
    assert_eq!(partial_stop_len("日本", &["本当", "日本語"]), 6);
    assert_eq!(partial_stop_len("日", &["本当"]), 0);
    assert_eq!(partial_stop_len("ab", &["b", "bc"]), 1);
    assert_eq!(partial_stop_len("", &["abc"]), 0);
    assert_eq!(partial_stop_len("abc", &[""]), 0);
}
