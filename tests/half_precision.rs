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
        if d_seq.max(d_step) > LOGITS_TOL {
            failures.push(format!("{name}: seq {d_seq:.3e}, step {d_step:.3e}"));
        }
    }
    assert!(
        failures.is_empty(),
        "logits differ by more than {LOGITS_TOL}: {failures:?}"
    );
}
