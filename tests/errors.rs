//! Bad input gets an error that names what is wrong, never a panic.

mod common;

use common::*;
use safetensors::tensor::Dtype;
use tokenshift::{Error, Logits, Model};

fn load_edited(edit: impl FnOnce(&mut Vec<RawTensor>)) -> Result<Model, Error> {
    let mut raw = raw_model(&fixture("v6-b"));
    edit(&mut raw);
    Model::from_bytes(write_tensors(&raw))
}

fn find<'a>(raw: &'a mut [RawTensor], name: &str) -> &'a mut RawTensor {
    raw.iter_mut().find(|t| t.0 == name).unwrap()
}

#[test]
fn missing_tensor_is_named() {
    let err = load_edited(|raw| raw.retain(|t| t.0 != "blocks.1.att.key.weight")).unwrap_err();
    assert!(
        matches!(&err, Error::MissingTensor(n) if n == "blocks.1.att.key.weight"),
        "{err}"
    );
    assert!(err.to_string().contains("blocks.1.att.key.weight"));
    // Missing pieces every version needs.
    for name in [
        "emb.weight",
        "head.weight",
        "ln_out.bias",
        "blocks.0.ln0.weight",
    ] {
        let err = load_edited(|raw| raw.retain(|t| t.0 != name)).unwrap_err();
        assert!(err.to_string().contains(name), "{name}: {err}");
    }
}

#[test]
fn wrong_shape_names_expected_and_found() {
    let err = load_edited(|raw| {
        let t = find(raw, "blocks.2.ffn.value.weight");
        t.2 = vec![t.2[1], t.2[0]];
    })
    .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::Shape { .. }), "{msg}");
    assert!(msg.contains("blocks.2.ffn.value.weight"), "{msg}");
    assert!(
        msg.contains("[160, 48]") && msg.contains("[48, 160]"),
        "{msg}"
    );
    // A low-rank factor stored transposed: named with its own shape.
    let err = load_edited(|raw| {
        let t = find(raw, "blocks.0.att.time_decay_w1");
        t.2 = vec![t.2[1], t.2[0]];
    })
    .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("blocks.0.att.time_decay_w1"), "{msg}");
    assert!(!msg.contains("[1, "), "{msg}");
    // A vector of the wrong length.
    let err = load_edited(|raw| {
        let t = find(raw, "blocks.1.att.time_faaaa");
        t.2 = vec![48];
    })
    .unwrap_err();
    assert!(err.to_string().contains("blocks.1.att.time_faaaa"), "{err}");
}

#[test]
fn unsupported_dtype_is_named() {
    let err = load_edited(|raw| {
        let t = find(raw, "blocks.0.ffn.key.weight");
        t.1 = Dtype::I32; // same byte count, wrong type
    })
    .unwrap_err();
    assert!(
        matches!(&err, Error::Dtype { name, .. } if name == "blocks.0.ffn.key.weight"),
        "{err}"
    );
    assert!(err.to_string().contains("I32"), "{err}");
}

#[test]
fn not_safetensors_or_truncated_is_an_error() {
    for bytes in [
        Vec::new(),
        b"hello".to_vec(),
        b"{\"a\": 1}".to_vec(),
        vec![0xff; 64],
        u64::MAX.to_le_bytes().to_vec(),
    ] {
        let err = Model::from_bytes(bytes).unwrap_err();
        assert!(matches!(err, Error::Format(_)), "{err}");
    }
    let good = std::fs::read(fixture("v5.2-b").join("model.safetensors")).unwrap();
    for cut in (0..good.len())
        .step_by(997)
        .chain([good.len() - 1, 7, 8, 9, 100])
    {
        let err = Model::from_bytes(good[..cut].to_vec()).unwrap_err();
        assert!(matches!(err, Error::Format(_)), "cut at {cut}: {err}");
    }
    // Corrupted header bytes: an error or a model, never a panic.
    let header_len = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    for i in (8..8 + header_len).step_by(7) {
        let mut bad = good.clone();
        bad[i] ^= 0x55;
        let _ = Model::from_bytes(bad);
    }
}

#[test]
fn missing_file_names_the_path() {
    let err = Model::load("no/such/model.safetensors").unwrap_err();
    assert!(matches!(err, Error::Io { .. }));
    assert!(
        err.to_string().contains("no/such/model.safetensors"),
        "{err}"
    );
}

#[test]
fn unknown_version_says_what_it_found() {
    let err = load_edited(|raw| raw.retain(|t| !t.0.contains(".att."))).unwrap_err();
    assert!(matches!(err, Error::UnknownVersion(_)), "{err}");
    let err = load_edited(|raw| {
        for t in raw.iter_mut() {
            t.0 =
                t.0.replace("time_maa_x", "time_zzz_x")
                    .replace("ln_x", "ln_q");
        }
    })
    .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::UnknownVersion(_)), "{msg}");
    assert!(
        msg.contains("time_zzz_x"),
        "the message lists what was found: {msg}"
    );
    let err = Model::from_bytes(write_tensors(&[])).unwrap_err();
    assert!(matches!(err, Error::UnknownVersion(_)), "{err}");
}

#[test]
fn token_out_of_range_names_id_and_vocab() {
    let model = load_model(&fixture("v6-b"));
    let mut state = model.init_state();
    let before = state.clone();
    let err = model.step(101, &mut state).unwrap_err();
    assert!(matches!(
        err,
        Error::TokenOutOfRange {
            token: 101,
            vocab: 101
        }
    ));
    let msg = err.to_string();
    assert!(msg.contains("101"), "{msg}");
    let err = model
        .forward(&[1, 2, u32::MAX], &mut state, Logits::All)
        .unwrap_err();
    assert!(err.to_string().contains(&u32::MAX.to_string()));
    assert_eq!(state, before, "a rejected call leaves the state alone");
}

#[test]
fn empty_prompt_is_an_error() {
    let model = load_model(&fixture("v4-a"));
    let mut state = model.init_state();
    let err = model.forward(&[], &mut state, Logits::Last).unwrap_err();
    assert!(matches!(err, Error::EmptyPrompt));
}

#[test]
fn state_of_another_model_is_rejected() {
    let a = load_model(&fixture("v6-a"));
    let b = load_model(&fixture("v6-b"));
    let v4 = load_model(&fixture("v4-a"));
    let mut state = b.init_state();
    let err = a.step(1, &mut state).unwrap_err();
    assert!(matches!(err, Error::StateMismatch(_)), "{err}");

    let bytes = b.init_state().to_bytes().unwrap();
    let err = tokenshift::State::from_bytes(bytes, a.config()).unwrap_err();
    assert!(matches!(err, Error::StateMismatch(_)), "{err}");
    assert!(err.to_string().contains("n_layer") || err.to_string().contains("n_embd"));

    let bytes = v4.init_state().to_bytes().unwrap();
    let err = tokenshift::State::from_bytes(bytes, a.config()).unwrap_err();
    assert!(err.to_string().contains("version"), "{err}");

    // A model file is not a state file.
    let bytes = std::fs::read(fixture("v6-a").join("model.safetensors")).unwrap();
    let err = tokenshift::State::from_bytes(bytes, a.config()).unwrap_err();
    assert!(matches!(err, Error::StateMismatch(_)), "{err}");

    // Right metadata, a tensor of the wrong shape.
    let good = a.init_state().to_bytes().unwrap();
    let file = tokenshift::weights::SafeTensorsFile::from_bytes(good).unwrap();
    let mut raw: Vec<RawTensor> = read_tensors(a.init_state().to_bytes().unwrap())
        .into_iter()
        .map(|(n, arr)| {
            let b = encode(&arr, Dtype::F32);
            (n, Dtype::F32, arr.shape().to_vec(), b)
        })
        .collect();
    let t = raw.iter_mut().find(|t| t.0 == "blocks.1.att.wkv").unwrap();
    t.2 = vec![4, 16 * 16];
    let views = raw.iter().map(|(n, d, s, b)| {
        (
            n.as_str(),
            safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
        )
    });
    let bytes = safetensors::serialize(views, Some(file.metadata())).unwrap();
    let err = tokenshift::State::from_bytes(bytes, a.config()).unwrap_err();
    assert!(err.to_string().contains("blocks.1.att.wkv"), "{err}");
}

#[test]
fn truncated_file_on_disk_is_a_format_error() {
    let good = std::fs::read(fixture("v5.1-a").join("model.safetensors")).unwrap();
    let path = std::env::temp_dir().join(format!(
        "tokenshift-truncated-{}.safetensors",
        std::process::id()
    ));
    for cut in [0, 5, 8, 200, good.len() / 2, good.len() - 1] {
        std::fs::write(&path, &good[..cut]).unwrap();
        let err = Model::load(&path).unwrap_err();
        assert!(matches!(err, Error::Format(_)), "cut at {cut}: {err}");
    }
    std::fs::remove_file(&path).unwrap();
}
