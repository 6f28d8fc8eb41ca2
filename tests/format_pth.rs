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
