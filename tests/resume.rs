//! The examples' state files: `generate --state-out` then `--state-in` with an empty prompt
//! continues where the first run stopped, and no output may overwrite an input. These test
//! the examples' own helpers (`examples/args/mod.rs`) on the library.

mod common;

#[path = "../examples/args/mod.rs"]
mod args;

use common::*;
use std::path::PathBuf;
use tokenshift::{ByteTokenizer, Model, Sampler, SamplerConfig, Session};

fn scratch_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tokenshift-resume-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Greedy, with no penalties: the next token depends on the logits alone.
fn greedy(model: &Model) -> Session<&Model, ByteTokenizer> {
    let config = SamplerConfig {
        top_k: 1,
        alpha_frequency: 0.0,
        alpha_presence: 0.0,
        token_stop: vec![],
        ..SamplerConfig::default()
    };
    Session::new(model, ByteTokenizer, Sampler::new(config, 0).unwrap())
}

#[test]
fn a_saved_run_continues_with_an_empty_prompt() {
    let dir = scratch_dir("continue");
    for name in ["v4-a", "v5.2-a", "v6-a", "v7-a"] {
        let model = load_model(&fixture(name));
        let path = dir.join(format!("{name}.safetensors"));
        let path = path.to_str().unwrap();

        // The first run, as `generate --state-out` does it: the state before each token kept.
        let mut first = greedy(&model);
        first.prefill(&[5, 9, 2, 7]).unwrap();
        let mut before = first.state().clone();
        let mut last = None;
        for _ in 0..6 {
            before.blocks_mut().clone_from_slice(first.state().blocks());
            last = Some(first.generate(1).unwrap()[0]);
        }
        args::save_state(path, &before, last).unwrap();
        let logits = first.logits().unwrap().to_owned();
        let more = first.generate(10).unwrap();

        // The second run: `--state-in` with `--prompt ''` reads the recorded token first.
        let (state, next) = args::load_state(&model, path).unwrap();
        assert_eq!(next, last, "{name}: the recorded token");
        let mut second = greedy(&model).with_initial_state(state).unwrap();
        second.prefill(&[next.unwrap()]).unwrap();
        let diff = max_abs_diff(second.logits().unwrap(), logits.view());
        assert!(diff < 1e-4, "{name}: logits differ by {diff}");
        assert_eq!(second.generate(10).unwrap(), more, "{name}: continuation");
        assert_eq!(second.state().blocks().len(), first.state().blocks().len());
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_state_file_without_a_next_token_has_none() {
    let dir = scratch_dir("none");
    let model = load_model(&fixture("v6-a"));
    let path = dir.join("plain.safetensors");
    model.init_state().save(&path).unwrap();
    let (state, next) = args::load_state(&model, path.to_str().unwrap()).unwrap();
    assert_eq!(next, None);
    assert_eq!(state, model.init_state());

    // A malformed record is named.
    let mut extra = std::collections::BTreeMap::new();
    extra.insert(args::NEXT_TOKEN.to_string(), "twelve".to_string());
    let bytes = model.init_state().to_bytes_with_metadata(&extra).unwrap();
    std::fs::write(&path, bytes).unwrap();
    let err = args::load_state(&model, path.to_str().unwrap()).unwrap_err();
    assert!(
        err.contains("next_token") && err.contains("twelve"),
        "{err}"
    );

    // The state's own keys cannot be overridden.
    extra.clear();
    extra.insert("version".to_string(), "7".to_string());
    assert!(model.init_state().to_bytes_with_metadata(&extra).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_output_that_is_an_input_is_refused_by_identity() {
    let dir = scratch_dir("identity");
    let model = dir.join("model.safetensors");
    std::fs::write(&model, b"weights").unwrap();
    let model_str = model.to_str().unwrap();
    let other_spelling = format!("{}/./model.safetensors", dir.to_str().unwrap());
    let hard = dir.join("hard.safetensors");
    std::fs::hard_link(&model, &hard).unwrap();
    let mut same = vec![other_spelling, hard.to_str().unwrap().to_string()];
    #[cfg(unix)]
    {
        let link = dir.join("link.safetensors");
        std::os::unix::fs::symlink(&model, &link).unwrap();
        same.push(link.to_str().unwrap().to_string());
    }
    for out in &same {
        let err = args::refuse_overwrite(("out", out), &[("model", model_str)]).unwrap_err();
        assert!(
            err.contains(out.as_str()) && err.contains(model_str),
            "{err}"
        );
        assert!(err.contains("--out") && err.contains("--model"), "{err}");
    }
    let elsewhere = dir.join("logits.safetensors");
    std::fs::write(&elsewhere, b"old logits").unwrap();
    for out in [elsewhere.to_str().unwrap(), "/no/such/dir/out"] {
        args::refuse_overwrite(("out", out), &[("model", model_str)]).unwrap();
    }
    assert_eq!(std::fs::read(&model).unwrap(), b"weights");
    std::fs::remove_dir_all(&dir).unwrap();
}
