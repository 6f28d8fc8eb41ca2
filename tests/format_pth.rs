//! PyTorch `.pth` checkpoints: the six "-a" fixture models as `torch.save` wrote them for the
//! official package (tests/fixtures/formats/pth/, made by tools/formats/make_pth.py) load to
//! the same tensors and the same logits as their safetensors files, and to the official logits.

mod common;

use common::*;
use std::path::PathBuf;
use tokenshift::weights::{Checkpoint, Format};
use tokenshift::{Logits, Model};

/// The fixtures with a `.pth` twin.
const NAMES: [&str; 6] = ["v4-a", "v5.0-a", "v5.1-a", "v5.2-a", "v6-a", "v7-a"];
/// The `.pth` and the safetensors file hold the same f32 values: the logits may differ only by
/// the order of floating-point operations, which is the same for both.
const SAME_FILE_TOL: f32 = 1e-6;
/// Logits tolerance against the official f32 outputs (as tests/official.rs).
const OFFICIAL_TOL: f32 = 1e-4;

fn pth(name: &str) -> PathBuf {
    fixtures_dir()
        .join("formats/pth")
        .join(format!("{name}.pth"))
}

#[test]
fn pth_files_hold_the_safetensors_tensors_in_place() {
    for name in NAMES {
        let pth = Checkpoint::open(pth(name)).unwrap();
        let st = Checkpoint::open(fixture(name).join("model.safetensors")).unwrap();
        assert_eq!(pth.format(), Format::Pth, "{name}");
        let (a, b) = (pth.source(), st.source());
        let mut names = a.names();
        let mut st_names = b.names();
        names.sort_unstable();
        st_names.sort_unstable();
        assert_eq!(names, st_names, "{name}");
        for t in names {
            assert_eq!(a.shape(t), b.shape(t), "{name} {t}");
            let raw = a
                .raw(t)
                .unwrap_or_else(|| panic!("{name} {t}: not in place"));
            assert!(raw.bytes.is_mapped(), "{name} {t}");
            let values = raw.bytes.values::<f32>();
            assert!(values.is_some(), "{name} {t}: not aligned in the file");
            let want = b.raw(t).unwrap();
            assert_eq!(raw.bytes.as_slice(), want.bytes.as_slice(), "{name} {t}");
        }
    }
}

#[test]
fn pth_logits_match_safetensors_and_official() {
    for name in NAMES {
        let dir = fixture(name);
        let expected = Expected::load(&dir);
        let from_pth = Model::load(pth(name)).unwrap();
        let from_st = load_model(&dir);
        let run = |m: &Model| {
            let mut state = m.init_state();
            m.forward(&expected.tokens, &mut state, Logits::All)
                .unwrap()
        };
        let logits = run(&from_pth);
        let d_same = max_abs_diff(logits.view(), run(&from_st).view());
        let d_official = max_abs_diff(logits.view(), expected.matrix("logits_seq").view());
        println!(
            "{name:7} .pth: max |Δlogits| vs safetensors = {d_same:.3e}, vs official = \
             {d_official:.3e}"
        );
        assert!(d_same <= SAME_FILE_TOL, "{name}: {d_same}");
        assert!(d_official <= OFFICIAL_TOL, "{name}: {d_official}");
    }
}

#[test]
fn checkpoint_from_bytes_reads_a_pth() {
    let bytes = std::fs::read(pth("v5.2-a")).unwrap();
    let checkpoint = Checkpoint::from_bytes(bytes).unwrap();
    assert_eq!(checkpoint.format(), Format::Pth);
    let emb = checkpoint.source().tensor("emb.weight").unwrap();
    assert_eq!(emb.shape(), [128, 64]);
}

/// The other shapes `torch.save` gives a state dict (tests/fixtures/formats/pth/variants/):
/// each tensor's stored type, shape and values.
#[test]
fn state_dict_variants_read_as_saved() {
    use tokenshift::DType::{Bf16, F16, F32};
    type Want = (
        &'static str,
        Result<tokenshift::DType, &'static str>,
        &'static [usize],
        &'static [f32],
    );
    const BASE: [f32; 12] = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0];
    let cases: [(&str, Vec<Want>); 3] = [
        (
            "state_dict_bf16",
            vec![
                (
                    "weight",
                    Ok(Bf16),
                    &[2, 3],
                    &[0.0, 0.25, 0.5, 0.75, 1.0, 1.25],
                ),
                ("bias", Ok(Bf16), &[2], &[0.5, -1.5]),
            ],
        ),
        (
            "parameters_protocol4",
            vec![
                ("p", Ok(F16), &[4], &[0.0, 1.0, 2.0, 3.0]),
                (
                    "q",
                    Ok(F16),
                    &[1, 2, 3],
                    &[0.0, -1.0, -2.0, -3.0, -4.0, -5.0],
                ),
            ],
        ),
        (
            "views",
            vec![
                ("base", Ok(F32), &[3, 4], &BASE),
                ("row", Ok(F32), &[4], &[4.0, 5.0, 6.0, 7.0]),
                ("same", Ok(F32), &[3, 4], &BASE),
                ("scalar", Ok(F32), &[], &[2.5]),
                ("ids", Err("Long"), &[3], &[]),
            ],
        ),
    ];
    for (file, tensors) in cases {
        let path = fixtures_dir().join(format!("formats/pth/variants/{file}.pth"));
        let checkpoint = Checkpoint::open(&path).unwrap();
        let source = checkpoint.source();
        let names: Vec<&str> = tensors.iter().map(|t| t.0).collect();
        assert_eq!(source.names(), names, "{file}");
        for (name, dtype, shape, values) in tensors {
            let found = source.dtype(name).unwrap();
            assert_eq!(found, dtype.map_err(String::from), "{file} {name}");
            assert_eq!(source.shape(name).unwrap(), shape, "{file} {name}");
            if found.is_ok() {
                let t = source.tensor(name).unwrap().to_f32();
                assert_eq!(
                    t.iter().copied().collect::<Vec<_>>(),
                    values,
                    "{file} {name}"
                );
            }
        }
    }
}

#[test]
fn a_transposed_view_is_refused_by_name() {
    let path = fixtures_dir().join("formats/pth/variants/transposed.pth");
    let err = Checkpoint::open(&path).unwrap_err().to_string();
    assert!(err.contains("transposed.pth"), "{err}");
    assert!(
        err.contains("tensor `t`: shape [4, 3] with strides [1, 4] is not row-major"),
        "{err}"
    );
}
