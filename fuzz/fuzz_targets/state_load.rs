//! State loading from arbitrary bytes, for three fixed small models (the RWKV-4, -6 and -7
//! test fixtures, compiled in).
//!
//! The input is a would-be state file (`State::save`'s safetensors layout) or state-tuning file
//! (`blocks.{l}.att.time_state`). For each model it is read by `State::from_bytes`, by
//! `Model::load_state` from a file, and by `Model::state_from_tuning`. Checks:
//!
//! - nothing panics, and the two state loaders accept the same files and read the same values;
//! - every value of an accepted state is finite;
//! - an accepted state saves and loads back to the same values;
//! - `step` and `forward` run from it, with logits of the model's width.

#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use std::path::PathBuf;
use std::sync::OnceLock;
use tokenshift::{Logits, Model, State};

static FIXTURES: [&[u8]; 3] = [
    include_bytes!("../../tests/fixtures/v4-a/model.safetensors"),
    include_bytes!("../../tests/fixtures/v6-a/model.safetensors"),
    include_bytes!("../../tests/fixtures/v7-a/model.safetensors"),
];

fn models() -> &'static [Model] {
    static MODELS: OnceLock<Vec<Model>> = OnceLock::new();
    MODELS.get_or_init(|| {
        FIXTURES
            .iter()
            .map(|bytes| Model::from_bytes(bytes.to_vec()).expect("a test fixture loads"))
            .collect()
    })
}

fn scratch() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| common::scratch("state"))
}

fn check_finite(state: &State, what: &str) {
    for (name, values) in state.tensors() {
        assert!(
            values.iter().all(|v| v.is_finite()),
            "{what}: tensor `{name}` loaded with a non-finite value"
        );
    }
}

/// Runs the model from `state` (consumed): one step, and a two-token forward from a copy.
fn run(model: &Model, mut state: State, data: &[u8], k: u64) {
    let vocab = model.config().vocab;
    let mut fork = state.clone();
    let token = common::token(data, k, vocab);
    let logits = model
        .step(token, &mut state)
        .expect("step from a loaded state");
    assert_eq!(logits.len(), vocab);
    let tokens = [token, common::token(data, k + 7, vocab)];
    let logits = model
        .forward(&tokens, &mut fork, Logits::All)
        .expect("forward from a loaded state");
    assert_eq!(logits.shape(), [2, vocab]);
}

fuzz_target!(|data: &[u8]| {
    let path = scratch();
    std::fs::write(path, data).expect("write the scratch file");
    for (k, model) in models().iter().enumerate() {
        let config = model.config();
        let in_memory = State::from_bytes(data.to_vec(), config);
        let from_file = model.load_state(path);
        common::assert_loaders_agree(&in_memory, &from_file);
        if let (Ok(a), Ok(b)) = (&in_memory, &from_file) {
            assert!(
                common::state_bits(a) == common::state_bits(b),
                "the loaders read different values"
            );
        }
        if let Some(state) = in_memory.into_iter().chain(from_file).next() {
            assert_eq!(state.shape(), model.init_state().shape());
            check_finite(&state, "State::from_bytes");
            let values = common::state_bits(&state);
            let saved = state.to_bytes().expect("a loaded state serialises");
            let again = State::from_bytes(saved, config).expect("a saved state loads");
            assert!(
                common::state_bits(&again) == values,
                "a saved state loads back different"
            );
            run(model, state, data, k as u64);
        }

        // The same bytes as a state-tuning file (`blocks.{l}.att.time_state`).
        if let Ok(state) = model.state_from_tuning(path) {
            assert_eq!(state.shape(), model.init_state().shape());
            check_finite(&state, "Model::state_from_tuning");
            run(model, state, data, k as u64 + 13);
        }
    }
});
