//! Long recurrent runs stay finite with a state of constant size, and one model shared by many
//! threads gives each of them the bits it gives alone.

mod common;

use common::*;
use ndarray::Array2;
use tokenshift::synthetic::{random_model, DType};
use tokenshift::{Config, Logits, Model, State, Version};

/// Elements of every array of a state.
fn state_len(state: &State) -> usize {
    state.to_official_list().iter().map(|a| a.len()).sum()
}

fn state_is_finite(state: &State) -> bool {
    state
        .to_official_list()
        .iter()
        .all(|a| a.iter().all(|v| v.is_finite()))
}

/// 100,000 tokens through `Model::step` for every RWKV version: every logit and the state stay
/// finite, and the state keeps its size.
#[test]
fn hundred_thousand_steps_stay_finite_for_every_version() {
    const STEPS: usize = 100_000;
    for name in ["v4-a", "v5.0-a", "v5.1-a", "v5.2-a", "v6-a", "v7-a"] {
        let model = load_model(&fixture(name));
        let vocab = model.config().vocab;
        let tokens = Rng::new(17).tokens(STEPS, vocab);
        let mut state = model.init_state();
        let size = state_len(&state);
        let mut logits = ndarray::Array1::zeros(vocab);
        for (i, &t) in tokens.iter().enumerate() {
            model.step_into(t, &mut state, logits.view_mut()).unwrap();
            assert!(
                logits.iter().all(|v| v.is_finite()),
                "{name}: non-finite logits at token {i}"
            );
            if i % 10_000 == 0 {
                assert!(
                    state_is_finite(&state),
                    "{name}: non-finite state at token {i}"
                );
            }
        }
        assert!(
            state_is_finite(&state),
            "{name}: non-finite state at the end"
        );
        assert_eq!(state_len(&state), size, "{name}: the state changed size");
    }
}

/// What one sequence gives: the logits of every token through `step`, then those of a
/// `forward` over the same tokens from the state the steps left, and the final state.
fn run(model: &Model, tokens: &[u32]) -> (Vec<ndarray::Array1<f32>>, Array2<f32>, State) {
    let mut state = model.init_state();
    let steps = tokens
        .iter()
        .map(|&t| model.step(t, &mut state).unwrap())
        .collect();
    let all = model.forward(tokens, &mut state, Logits::All).unwrap();
    (steps, all, state)
}

/// Eight threads on one model, each with its own tokens, at once: the same bits as the same
/// runs one after another. The wide model shares its products between rayon's threads, so
/// the threads' tokens also meet on the pool.
#[test]
fn eight_threads_on_one_model_equal_sequential_runs() {
    let wide = random_model(
        &Config::standard(Version::V6, 2, 512, 64, 1000),
        DType::F16,
        3,
    );
    let models = [
        load_model(&fixture("v5.2-b")),
        load_model(&fixture("v7-a")),
        wide.unwrap(),
    ];
    for model in &models {
        let vocab = model.config().vocab;
        let inputs: Vec<Vec<u32>> = (0..8)
            .map(|i| Rng::new(100 + i).tokens(40, vocab))
            .collect();
        let sequential: Vec<_> = inputs.iter().map(|tokens| run(model, tokens)).collect();
        let concurrent: Vec<_> = std::thread::scope(|scope| {
            let handles: Vec<_> = inputs
                .iter()
                .map(|tokens| scope.spawn(move || run(model, tokens)))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (i, (alone, together)) in sequential.iter().zip(&concurrent).enumerate() {
            let version = model.config().version;
            assert_eq!(alone.0, together.0, "{version} thread {i}: step logits");
            assert_eq!(alone.1, together.1, "{version} thread {i}: forward logits");
            assert_eq!(alone.2, together.2, "{version} thread {i}: state");
        }
    }
}
