//! bf16 and f16 `.pth` checkpoints against the official package run on the very same files
//! (tests/fixtures/half/, made by tools/formats/make_half.py): every value is exactly
//! representable in both types, so the two files of a version differ only in what the official
//! loader does in the checkpoint's own type (RWKV-4 to 6 fold `blocks.0.ln0` into the
//! embedding in that type, rounding it; RWKV-7 widens to f32 first).

mod common;

use common::*;
use std::path::PathBuf;
use tokenshift::weights::Checkpoint;
use tokenshift::{DType, Logits, Model};

/// Logits tolerance against the official outputs (as tests/official.rs).
const LOGITS_TOL: f32 = 1e-4;

/// A measured exception, kept visible rather than hidden by a looser tolerance: in `v5.1-f16`
/// one element of the embedding after the ln0 fold (token 60, channel 21) lies on the midpoint
/// -1.36083984375 between two f16 values. The crate's f32 LayerNorm gives -1.3608400 there
/// (one f32 ulp past the midpoint) and rounds it to -1.3613281; torch's gives -1.3608397 (one
/// ulp before it) and rounds it to -1.3603516. The two rows are one f16 ulp (2^-10) apart,
/// which moves the logits by 4.85e-4 from the first position that reads token 60. Before that
/// position the logits agree within [`LOGITS_TOL`], which the test checks; after it they must
/// stay within the bound below.
struct Known {
    case: &'static str,
    token: u32,
    bound: f32,
}

const KNOWN: [Known; 1] = [Known {
    case: "v5.1-f16",
    token: 60,
    bound: 5e-4,
}];

/// Fixture directory, stored type.
const CASES: [(&str, DType); 12] = [
    ("v4-bf16", DType::Bf16),
    ("v4-f16", DType::F16),
    ("v5.0-bf16", DType::Bf16),
    ("v5.0-f16", DType::F16),
    ("v5.1-bf16", DType::Bf16),
    ("v5.1-f16", DType::F16),
    ("v5.2-bf16", DType::Bf16),
    ("v5.2-f16", DType::F16),
    ("v6-bf16", DType::Bf16),
    ("v6-f16", DType::F16),
    ("v7-bf16", DType::Bf16),
    ("v7-f16", DType::F16),
];

fn dir(name: &str) -> PathBuf {
    fixtures_dir().join("half").join(name)
}

#[test]
fn half_precision_pth_files_are_stored_in_their_type() {
    for (name, dtype) in CASES {
        let checkpoint = Checkpoint::open(dir(name).join("model.pth")).unwrap();
        let source = checkpoint.source();
        for t in source.names() {
            assert_eq!(source.dtype(t), Some(Ok(dtype)), "{name} {t}");
        }
    }
}

#[test]
fn half_precision_pth_logits_match_official() {
    let mut failures = Vec::new();
    for (name, _) in CASES {
        let dir = dir(name);
        let expected = Expected::load(&dir);
        let model = Model::load(dir.join("model.pth")).unwrap();
        let mut state = model.init_state();
        let seq = model
            .forward(&expected.tokens, &mut state, Logits::All)
            .unwrap();
        let d_seq = max_abs_diff(seq.view(), expected.matrix("logits_seq").view());
        let mut state = model.init_state();
        let rows: Vec<_> = expected
            .tokens
            .iter()
            .map(|&t| model.step(t, &mut state).unwrap())
            .collect();
        let views: Vec<_> = rows.iter().map(|r| r.view()).collect();
        let step = ndarray::stack(ndarray::Axis(0), &views).unwrap();
        let d_step = max_abs_diff(step.view(), expected.matrix("logits_step").view());
        println!("{name:9}: max |Δlogits| seq = {d_seq:.3e}, step = {d_step:.3e}");
        let worst = d_seq.max(d_step);
        if let Some(known) = KNOWN.iter().find(|k| k.case == name) {
            // Exact up to the first read of the token whose embedding row differs.
            let first = expected.tokens.iter().position(|&t| t == known.token);
            let first = first.expect("the known case reads its token");
            let rows = ndarray::s![..first, ..];
            let before = max_abs_diff(seq.slice(rows), expected.matrix("logits_seq").slice(rows));
            println!("{name:9}: before position {first}: max |Δlogits| = {before:.3e}");
            if before > LOGITS_TOL || worst > known.bound {
                failures.push(format!(
                    "{name}: before {first} {before:.3e}, all {worst:.3e}"
                ));
            }
            assert!(
                worst > LOGITS_TOL,
                "{name} now matches: remove it from KNOWN"
            );
        } else if worst > LOGITS_TOL {
            failures.push(format!("{name}: seq {d_seq:.3e}, step {d_step:.3e}"));
        }
    }
    assert!(
        failures.is_empty(),
        "logits differ by more than {LOGITS_TOL}: {failures:?}"
    );
}
