//! A saved and reloaded state continues exactly like the original.

mod common;

use common::*;
use tokenshift::{Logits, State};

#[test]
fn saved_state_continues_exactly() {
    for dir in fixtures() {
        let model = load_model(&dir);
        let tokens = Rng(9).tokens(40, model.config().vocab);
        let mut state = model.init_state();
        model
            .forward(&tokens[..25], &mut state, Logits::Last)
            .unwrap();

        let path = std::env::temp_dir().join(format!(
            "tokenshift-state-{}-{}.safetensors",
            std::process::id(),
            dir.file_name().unwrap().to_string_lossy()
        ));
        state.save(&path).unwrap();
        let mut loaded = model.load_state(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(
            loaded, state,
            "{dir:?}: reloaded state equals the saved one"
        );

        let original = model
            .forward(&tokens[25..], &mut state, Logits::All)
            .unwrap();
        let resumed = model
            .forward(&tokens[25..], &mut loaded, Logits::All)
            .unwrap();
        assert_eq!(original, resumed, "{dir:?}: continuation is bit-identical");
        assert_eq!(state, loaded);
    }
}

#[test]
fn state_file_records_model_shape() {
    let model = load_model(&fixture("v5.2-b"));
    let bytes = model.init_state().to_bytes().unwrap();
    let file = tokenshift::weights::SafeTensorsFile::from_bytes(bytes.clone()).unwrap();
    let meta = file.metadata();
    assert_eq!(meta["format"], "tokenshift-state");
    assert_eq!(meta["version"], "5.2");
    assert_eq!(meta["n_layer"], "3");
    assert_eq!(meta["n_embd"], "48");
    assert_eq!(meta["n_head"], "3");
    assert_eq!(meta["head_size"], "16");
    let state = State::from_bytes(bytes, model.config()).unwrap();
    assert_eq!(state, model.init_state());
}

#[test]
fn rwkv4_initial_state_matches_official_layout() {
    let model = load_model(&fixture("v4-b"));
    let list = model.init_state().to_official_list();
    assert_eq!(list.len(), 5 * 3);
    for (i, a) in list.iter().enumerate() {
        let fill = if i % 5 == 3 { -1e30 } else { 0.0 };
        assert!(a.iter().all(|&v| v == fill), "entry {i}");
    }
}
