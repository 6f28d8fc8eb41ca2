//! State loading from arbitrary bytes, for three fixed small models (the RWKV-4, -6 and -7
//! test fixtures, compiled in).
//!
//! The input is a would-be state file (`State::save`'s safetensors layout). For each model it
//! is handed to `State::from_bytes`; when that accepts it:
//!
//! - every value of the state is finite (unless `TOKENSHIFT_FUZZ_SKIP_KNOWN` is set);
//! - the state saves and loads back to the same values;
//! - `step` and `forward` run from it without panicking, with logits of the model's width.

#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
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

fuzz_target!(|data: &[u8]| {
    for (k, model) in models().iter().enumerate() {
        let config = model.config();
        let Ok(mut state) = State::from_bytes(data.to_vec(), config) else {
            continue;
        };
        assert_eq!(state.shape(), model.init_state().shape());
        if common::check_known() {
            for (name, values) in state.tensors() {
                assert!(
                    values.iter().all(|v| v.is_finite()),
                    "state tensor `{name}` loaded with a non-finite value"
                );
            }
        }
        let values = common::state_bits(&state);
        let saved = state.to_bytes().expect("a loaded state serialises");
        let again = State::from_bytes(saved, config).expect("a saved state loads");
        assert!(
            common::state_bits(&again) == values,
            "a saved state loads back different"
        );

        let vocab = config.vocab;
        let mut fork = state.clone();
        let token = common::token(data, k as u64, vocab);
        let logits = model
            .step(token, &mut state)
            .expect("step from a loaded state");
        assert_eq!(logits.len(), vocab);
        let tokens = [token, common::token(data, k as u64 + 7, vocab)];
        let logits = model
            .forward(&tokens, &mut fork, Logits::All)
            .expect("forward from a loaded state");
        assert_eq!(logits.shape(), [2, vocab]);
    }
});
