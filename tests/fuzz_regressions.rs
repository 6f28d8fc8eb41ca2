//! Inputs found by fuzzing (`fuzz/README.md`), each of which once made a fuzz target fail:
//! kept here so that `cargo test` guards them without the fuzzer.

use tokenshift::tokenizer::MAX_TOKEN_BYTES;
use tokenshift::{Error, Model, State, WorldTokenizer};

const DIR: &str = "tests/fixtures/fuzz";

fn model(name: &str) -> Model {
    Model::load(format!("tests/fixtures/{name}/model.safetensors")).unwrap()
}

fn read(path: &str) -> Vec<u8> {
    std::fs::read(format!("{DIR}/{path}")).unwrap()
}

/// 63 bytes after the last tensor: refused from a path as from memory.
#[test]
fn checkpoint_with_trailing_bytes_is_refused_from_a_path_too() {
    let path = format!("{DIR}/model_load/trailing-bytes.safetensors");
    assert!(Model::from_bytes(read("model_load/trailing-bytes.safetensors")).is_err());
    let err = Model::load(&path).expect_err("63 bytes after the last tensor");
    assert!(matches!(err, Error::Format(_)), "{err}");
}

/// One byte after the last tensor of a state file.
#[test]
fn state_with_a_trailing_byte_is_refused_from_a_path_too() {
    let m = model("v4-a");
    let bytes = read("state_load/trailing-byte.safetensors");
    assert!(State::from_bytes(bytes, m.config()).is_err());
    let path = format!("{DIR}/state_load/trailing-byte.safetensors");
    assert!(
        m.load_state(&path).is_err(),
        "one byte after the last tensor"
    );
}

/// A NaN in `blocks.1.att.x_prev`.
#[test]
fn state_with_nan_is_refused_naming_the_tensor() {
    let m = model("v4-a");
    let path = format!("{DIR}/state_load/nan-x-prev.safetensors");
    let err = m.load_state(&path).expect_err("NaN in blocks.1.att.x_prev");
    assert!(err.to_string().contains("blocks.1.att.x_prev"), "{err}");
    let bytes = read("state_load/nan-x-prev.safetensors");
    assert!(State::from_bytes(bytes, m.config()).is_err());
}

/// An infinity in a state-tuning file's `blocks.0.att.time_state`.
#[test]
fn state_tuning_with_infinity_is_refused_naming_the_tensor() {
    let m = model("v6-a");
    let path = format!("{DIR}/state_load/inf-time-state.safetensors");
    let err = m
        .state_from_tuning(&path)
        .expect_err("infinity in blocks.0.att.time_state");
    assert!(err.to_string().contains("blocks.0.att.time_state"), "{err}");
}

/// A vocabulary with a 30,001-byte token `a…ab`, then 0xFF, then 30,000 `a`: encoding walked
/// the whole token from every position. Tokens that long are now refused.
#[test]
fn vocabulary_with_a_very_long_token_is_refused() {
    let data = read("vocab/long-token-quadratic");
    let at = data.iter().position(|&b| b == 0xff).unwrap();
    let err = WorldTokenizer::from_vocab_bytes(&data[..at]).unwrap_err();
    assert!(
        err.to_string().contains(&MAX_TOKEN_BYTES.to_string()),
        "{err}"
    );
}
