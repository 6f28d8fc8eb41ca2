//! Models stored as f16 or bf16.
//!
//! Two statements, each tested on every fixture:
//!
//! 1. Storing a model as f16/bf16 in the file and converting an f32 file holding the same
//!    values at load ([`Model::from_source_as`]) give the same model: logits within 1e-4. (The kernels themselves are
//!    checked against f64 references in `ops::kernels` and `ops::linear`.) The embedding, with
//!    `ln0` folded in f32, is stored back in the table's type, as the official loader does for
//!    half-precision checkpoints.
//! 2. Rounding an f32 model to f16/bf16 storage moves its logits by at most
//!    `rms(Δlogits) / rms(logits)` ≤ 1e-2 (f16) and ≤ 0.12 (bf16). f16 keeps 11 significant bits
//!    (relative rounding 2^-11 ≈ 4.9e-4), bf16 8 bits (≈ 3.9e-3); a few layers add up to several
//!    times that, typically 1e-3 (f16) and 1e-2 (bf16). The bound is set by the worst fixture,
//!    an ungated RWKV-5.0 model: without a gate, a head whose output is near zero goes through
//!    the group norm's division by its own spread, and one token's logits move by up to 1.6 in
//!    bf16. The bound is on the RMS because single logits can move that much.

mod common;

use common::*;
use safetensors::tensor::Dtype;
use tokenshift::synthetic::DType as Storage;
use tokenshift::weights::SafeTensorsFile;
use tokenshift::{Logits, Model};

/// rms(Δlogits) / rms(logits) for f16 storage.
const F16_RMS_TOL: f32 = 1e-2;
/// rms(Δlogits) / rms(logits) for bf16 storage.
const BF16_RMS_TOL: f32 = 0.12;
/// A half-precision file against the f32 file converted at load.
const KERNEL_TOL: f32 = 1e-4;

fn logits(model: &Model, tokens: &[u32]) -> ndarray::Array2<f32> {
    let mut state = model.init_state();
    model.forward(tokens, &mut state, Logits::All).unwrap()
}

#[test]
fn half_precision_models_match_f32() {
    for dir in fixtures() {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let f32_model = load_model(&dir);
        let tokens = Rng::new(5).tokens(32, f32_model.config().vocab);
        let reference = logits(&f32_model, &tokens);
        for (dtype, storage, tol) in [
            (Dtype::F16, Storage::F16, F16_RMS_TOL),
            (Dtype::BF16, Storage::Bf16, BF16_RMS_TOL),
        ] {
            let model = Model::from_bytes(model_bytes_as(&dir, dtype)).unwrap();
            assert_eq!(model.config(), f32_model.config());
            let half = logits(&model, &tokens);

            // The same (rounded) values in an f32 file, matrices converted at load.
            let rounded = SafeTensorsFile::from_bytes(model_bytes_rounded(&dir, dtype)).unwrap();
            let converted = Model::from_source_as(&rounded, Some(storage)).unwrap();
            let d = max_abs_diff(half.view(), logits(&converted, &tokens).view());
            assert!(
                d <= KERNEL_TOL,
                "{name} {dtype:?}: converted at load differs by {d}"
            );

            let rms = rms_rel_diff(half.view(), reference.view());
            let max = max_abs_diff(half.view(), reference.view());
            println!("{name:8} {dtype:?}: rms(Δ)/rms = {rms:.2e}, max |Δ| = {max:.2e}");
            assert!(
                rms <= tol,
                "{name} {dtype:?}: rms relative difference {rms}"
            );

            let mut state = model.init_state();
            for (t, &token) in tokens.iter().enumerate() {
                let row = model.step(token, &mut state).unwrap();
                let d = max_abs_diff(row.view(), half.row(t));
                assert!(
                    d <= KERNEL_TOL,
                    "{name} {dtype:?}: step and forward differ by {d}"
                );
            }
        }
    }
}

#[test]
fn f32_checkpoint_converted_at_load_runs_in_half_precision() {
    let path = fixture("v6-b").join("model.safetensors");
    let reference = logits(&load_model(&fixture("v6-b")), &[1, 2, 3, 4, 5]);
    for (storage, tol) in [(Storage::F16, F16_RMS_TOL), (Storage::Bf16, BF16_RMS_TOL)] {
        let model = Model::load_as(&path, storage).unwrap();
        let rms = rms_rel_diff(logits(&model, &[1, 2, 3, 4, 5]).view(), reference.view());
        assert!(rms > 0.0 && rms <= tol, "{storage:?}: {rms}");
    }
}
