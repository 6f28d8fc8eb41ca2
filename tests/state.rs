//! A saved and reloaded state continues exactly like the original.

mod common;

use common::*;
use tokenshift::{Logits, State};

#[test]
fn saved_state_continues_exactly() {
    for dir in fixtures() {
        let model = load_model(&dir);
        let tokens = Rng::new(9).tokens(40, model.config().vocab);
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

/// Ways to break block 1 of a state through `State::blocks_mut`, with the array the error
/// must name.
fn broken_states(model: &tokenshift::Model) -> Vec<(&'static str, State, &'static str)> {
    use ndarray::{Array1, Array3};
    use tokenshift::block::TimeMixState;
    use tokenshift::mixer::rwkv4::Rwkv4State;
    use tokenshift::mixer::rwkv5::WkvState;
    let config = model.config().clone();
    let c = config.n_embd;
    let edit = |f: &dyn Fn(&mut tokenshift::block::BlockState)| {
        let mut state = model.init_state();
        f(&mut state.blocks_mut()[1]);
        state
    };
    let mut cases = vec![
        (
            "att.x_prev one short",
            edit(&|b| match &mut b.att {
                TimeMixState::V4(s) => s.x_prev = Array1::zeros(c - 1),
                TimeMixState::Wkv(s) => s.x_prev = Array1::zeros(c - 1),
            }),
            "blocks.1.att.x_prev",
        ),
        (
            "ffn.x_prev one long",
            edit(&|b| b.ffn = Array1::zeros(c + 1)),
            "blocks.1.ffn.x_prev",
        ),
    ];
    if config.version.has_matrix_state() {
        let (h, n) = (config.n_head, config.head_size);
        cases.push((
            "wkv with one head too few",
            edit(&|b| {
                if let TimeMixState::Wkv(s) = &mut b.att {
                    s.s = Array3::zeros((h - 1, n, n));
                }
            }),
            "blocks.1.att.wkv",
        ));
        cases.push((
            "wkv [H, N, N + 1]",
            edit(&|b| {
                if let TimeMixState::Wkv(s) = &mut b.att {
                    s.s = Array3::zeros((h, n, n + 1));
                }
            }),
            "blocks.1.att.wkv",
        ));
        cases.push((
            "wkv transposed in place (not row-major)",
            edit(&|b| {
                if let TimeMixState::Wkv(s) = &mut b.att {
                    s.s = Array3::zeros((h, n, n)).permuted_axes([0, 2, 1]);
                }
            }),
            "blocks.1.att.wkv",
        ));
        cases.push((
            "an RWKV-4 state",
            edit(&|b| b.att = TimeMixState::V4(Rwkv4State::new(c))),
            "blocks.1.att",
        ));
    } else {
        cases.push((
            "aa one short",
            edit(&|b| {
                if let TimeMixState::V4(s) = &mut b.att {
                    s.aa = Array1::zeros(c - 1);
                }
            }),
            "blocks.1.att.aa",
        ));
        cases.push((
            "a matrix state",
            edit(&|b| b.att = TimeMixState::Wkv(WkvState::new(c / 16, 16))),
            "blocks.1.att",
        ));
    }
    cases
}

#[test]
fn edited_states_of_the_wrong_shape_are_errors_not_panics() {
    for dir in fixtures() {
        let model = load_model(&dir);
        for (what, state, names) in broken_states(&model) {
            let case = format!("{dir:?}, {what}");
            let check = |err: tokenshift::Error| {
                let msg = err.to_string();
                assert!(
                    matches!(err, tokenshift::Error::StateMismatch(_)),
                    "{case}: {msg}"
                );
                assert!(msg.contains(&format!("`{names}")), "{case}: {msg}");
            };
            check(state.check(model.config()).unwrap_err());
            let mut s = state.clone();
            check(model.step(1, &mut s).unwrap_err());
            assert_eq!(s, state, "{case}: step changed the state");
            let mut logits = ndarray::Array1::zeros(model.config().vocab);
            check(model.step_into(1, &mut s, logits.view_mut()).unwrap_err());
            check(model.forward(&[1, 2, 3], &mut s, Logits::All).unwrap_err());
            assert_eq!(s, state, "{case}: forward changed the state");
            let mut batch = vec![model.init_state(), state.clone()];
            check(model.step_batch(&[1, 2], &mut batch).unwrap_err());
            assert_eq!(batch[0], model.init_state(), "{case}: step_batch ran");
            assert_eq!(batch[1], state);
            let sampler =
                tokenshift::Sampler::new(tokenshift::SamplerConfig::default(), 1).unwrap();
            let session = tokenshift::Session::new(&model, tokenshift::ByteTokenizer, sampler);
            if let Ok(mut session) = session.with_initial_state(state.clone()) {
                check(session.prefill(&[1, 2]).unwrap_err());
            }
        }
    }
}

#[test]
fn a_state_of_a_model_with_fewer_blocks_is_refused() {
    let small = load_model(&fixture("v6-a"));
    let large = load_model(&fixture("v6-b"));
    let mut state = small.init_state();
    let err = large.step(1, &mut state).unwrap_err();
    assert!(matches!(err, tokenshift::Error::StateMismatch(_)), "{err}");
    assert!(state.check(small.config()).is_ok());
}

#[test]
fn non_finite_values_in_a_state_file_are_named_at_load() {
    use tokenshift::block::TimeMixState;
    /// Sets element 3 of the state's tensor `tensor` (`blocks.{l}.…`, one digit of block).
    fn set(state: &mut State, tensor: &str, value: f32) {
        let block: usize = tensor[7..8].parse().unwrap();
        let b = &mut state.blocks_mut()[block];
        let array = match (&mut b.att, &tensor[9..]) {
            (_, "ffn.x_prev") => b.ffn.as_slice_mut().unwrap(),
            (TimeMixState::Wkv(s), "att.wkv") => s.s.as_slice_mut().unwrap(),
            (TimeMixState::Wkv(s), "att.x_prev") => s.x_prev.as_slice_mut().unwrap(),
            (TimeMixState::V4(s), "att.pp") => s.pp.as_slice_mut().unwrap(),
            _ => unreachable!("{tensor}"),
        };
        array[3] = value;
    }
    for (name, tensor, value) in [
        ("v6-a", "blocks.1.att.wkv", f32::NAN),
        ("v7-a", "blocks.1.ffn.x_prev", f32::INFINITY),
        ("v4-a", "blocks.1.att.pp", f32::NEG_INFINITY),
        ("v5.2-a", "blocks.0.att.x_prev", f32::NAN),
    ] {
        let model = load_model(&fixture(name));
        let mut state = model.init_state();
        // Such a state is refused when saved, naming the tensor, and no file is written.
        set(&mut state, tensor, value);
        let err = state.to_bytes().unwrap_err();
        assert!(
            err.to_string().contains(&format!("`{tensor}`")),
            "{name}: {err}"
        );
        let refused = std::env::temp_dir().join(format!(
            "tokenshift-nonfinite-save-{}-{name}.safetensors",
            std::process::id()
        ));
        assert!(state.save(&refused).is_err() && !refused.exists(), "{name}");
        // Its file, made by patching a marker value in the bytes, is refused when loaded.
        let marker = 12345.678f32;
        set(&mut state, tensor, marker);
        let mut bytes = state.to_bytes().unwrap();
        let at = bytes
            .windows(4)
            .position(|w| w == marker.to_le_bytes())
            .unwrap();
        bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
        let err = State::from_bytes(bytes.clone(), model.config()).unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, tokenshift::Error::StateMismatch(_)),
            "{name}: {msg}"
        );
        assert!(msg.contains(&format!("`{tensor}`")), "{name}: {msg}");
        assert!(msg.contains(&format!("{value}")), "{name}: {msg}");
        let path = std::env::temp_dir().join(format!(
            "tokenshift-nonfinite-{}-{name}.safetensors",
            std::process::id()
        ));
        std::fs::write(&path, &bytes).unwrap();
        let err = model.load_state(&path).unwrap_err();
        std::fs::remove_file(&path).unwrap();
        assert!(err.to_string().contains(tensor), "{name}: {err}");
    }
}
