//! Random-weight checkpoints of any shape load with the requested sizes and run.

mod common;

use common::max_abs_diff;
use tokenshift::synthetic::{random_model, DType};
use tokenshift::{Config, Logits, Version};

#[test]
fn synthetic_models_have_the_requested_config() {
    for version in Version::ALL {
        for dtype in [DType::F32, DType::F16, DType::Bf16] {
            let config = Config::standard(version, 2, 64, 16, 97);
            let model = random_model(&config, dtype, 1).unwrap();
            assert_eq!(model.config(), &config);
            let mut state = model.init_state();
            let logits = model.forward(&[1, 2, 3], &mut state, Logits::All).unwrap();
            assert!(logits.iter().all(|v| v.is_finite()));
            let mut state = model.init_state();
            for (t, token) in [1, 2, 3].into_iter().enumerate() {
                let row = model.step(token, &mut state).unwrap();
                let d = max_abs_diff(row.view(), logits.row(t));
                assert!(d < 1e-4, "{version} {dtype:?}: {d}");
            }
        }
    }
}

#[test]
fn inconsistent_sizes_are_an_error() {
    let mut config = Config::standard(Version::V6, 2, 64, 16, 97);
    config.head_size = 15;
    assert!(random_model(&config, DType::F32, 1).is_err());
    config = Config::standard(Version::V4, 0, 64, 16, 97);
    assert!(random_model(&config, DType::F32, 1).is_err());
}
