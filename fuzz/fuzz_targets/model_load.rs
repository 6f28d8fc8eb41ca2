//! Model loading from arbitrary bytes.
//!
//! The input is a would-be safetensors checkpoint. It is loaded twice: from memory
//! (`Model::from_bytes`) and from a file (`Model::load`, which reads tensors on demand). Checks:
//!
//! - neither loader panics, and they accept and reject the same files (a file whose tensors
//!   do not cover its data section exactly must be rejected by both);
//! - a model that loads runs `step`, `step_into` and `forward` without panicking, with logits
//!   of the configured width, the same bits from both loaders, and the same state after
//!   `forward` over `T` tokens as after `T` steps (shapes and serialisation, not values: random
//!   weights may legitimately overflow to inf or NaN);
//! - out-of-range tokens and empty prompts are errors that leave the state unchanged;
//! - the state of a loaded model saves and loads back to the same values.

#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use std::path::PathBuf;
use std::sync::OnceLock;
use tokenshift::{Logits, Model, State};

fn exercise(model: &Model, data: &[u8]) -> Vec<Vec<u32>> {
    let config = model.config();
    let vocab = config.vocab;
    let tokens: Vec<u32> = (0..3).map(|k| common::token(data, k, vocab)).collect();
    let mut seen = Vec::new();

    // Token by token.
    let mut stepped = model.init_state();
    for &t in &tokens {
        let logits = model
            .step(t, &mut stepped)
            .expect("step on an in-range token");
        assert_eq!(logits.len(), vocab);
        seen.push(common::bits(&logits));
    }

    // The whole prompt at once: logits of every token, and the same state layout.
    let mut all = model.init_state();
    let logits = model
        .forward(&tokens, &mut all, Logits::All)
        .expect("forward on in-range tokens");
    assert_eq!(logits.shape(), [tokens.len(), vocab]);
    assert_eq!(all.shape(), stepped.shape());
    let mut last = model.init_state();
    let logits = model
        .forward(&tokens, &mut last, Logits::Last)
        .expect("forward on in-range tokens");
    assert_eq!(logits.shape(), [1, vocab]);

    // Errors leave the state alone.
    let before = common::state_bits(&stepped);
    assert!(model.step(vocab as u32, &mut stepped).is_err());
    assert!(model.forward(&[], &mut stepped, Logits::Last).is_err());
    assert!(model
        .forward(&[tokens[0], u32::MAX], &mut stepped, Logits::All)
        .is_err());
    assert!(
        common::state_bits(&stepped) == before,
        "a failed call changed the state"
    );

    // A saved state loads back for the same model, to the same values; a state that random
    // weights drove to NaN or infinity is refused when saved, as it would be when loaded.
    let finite = stepped
        .to_official_list()
        .iter()
        .all(|a| a.iter().all(|v| v.is_finite()));
    let saved = match stepped.to_bytes() {
        Ok(bytes) => bytes,
        Err(e) => {
            assert!(!finite, "a finite state does not serialise: {e}");
            return seen;
        }
    };
    assert!(finite, "a state with a NaN or an infinity serialises");
    let again = State::from_bytes(saved, config).expect("a saved state loads");
    assert!(
        common::state_bits(&again) == before,
        "a saved state loads back different"
    );
    seen
}

fn scratch() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| common::scratch("model"))
}

fuzz_target!(|data: &[u8]| {
    let in_memory = Model::from_bytes(data.to_vec());
    let path = scratch();
    std::fs::write(path, data).expect("write the scratch file");
    let from_file = Model::load(path);

    common::assert_loaders_agree(&in_memory, &from_file);
    match (&in_memory, &from_file) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a.config(), b.config());
            assert!(
                exercise(a, data) == exercise(b, data),
                "the loaders' logits differ"
            );
        }
        (Ok(m), Err(_)) | (Err(_), Ok(m)) => {
            exercise(m, data);
        }
        (Err(_), Err(_)) => {}
    }
});
