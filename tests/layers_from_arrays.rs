//! RWKV layers built from arrays: each constructor gives the layer a checkpoint gives (same
//! outputs), its sequence path equals its recurrent path, and a wrong shape, a wrong count or
//! a parameter the version does not read is an error naming that parameter; arrays in any
//! memory layout are accepted.

mod common;

use common::golden::input_error_names;
use ndarray::{Array1, Array2, Array3, ArrayD, Ix2, Ix3, ShapeBuilder};
use tokenshift::channel_mix::{ChannelMix, ChannelMixParams};
use tokenshift::mixer::rwkv4::{Rwkv4Params, Rwkv4TimeMix};
use tokenshift::mixer::rwkv5::{Rwkv5Params, Rwkv5TimeMix};
use tokenshift::mixer::rwkv6::{Rwkv6Params, Rwkv6TimeMix};
use tokenshift::mixer::rwkv7::{Rwkv7Params, Rwkv7TimeMix};
use tokenshift::ops::shift::Ddlerp;
use tokenshift::synthetic::random_checkpoint;
use tokenshift::weights::{Tensor, TensorMap, TensorSource};
use tokenshift::{Config, DType, Error, SequenceMixer, Version};

const C: usize = 32;
const HEADS: usize = 4;

/// A random two-block checkpoint of `version` (blocks 0 and 1), all f32.
fn checkpoint(version: Version) -> TensorMap {
    let config = Config::standard(version, 2, C, C / HEADS, 16);
    random_checkpoint(&config, DType::F32, 5).unwrap()
}

/// Reads the tensors of one layer scope as arrays.
struct Reader<'a>(&'a TensorMap, &'a str);

impl Reader<'_> {
    fn any(&self, name: &str) -> ArrayD<f32> {
        match self.0.tensor(&format!("{}.{name}", self.1)).unwrap() {
            Tensor::F32(a) => a,
            other => panic!("{name}: {other:?}"),
        }
    }
    /// A `[C]` vector, squeezing a stored `[1, 1, C]`.
    fn v(&self, name: &str) -> Array1<f32> {
        let a = self.any(name);
        let n = a.len();
        a.into_shape_with_order(n).unwrap()
    }
    fn m(&self, name: &str) -> Array2<f32> {
        self.any(name).into_dimensionality::<Ix2>().unwrap()
    }
    fn m3(&self, name: &str) -> Array3<f32> {
        self.any(name).into_dimensionality::<Ix3>().unwrap()
    }
}

/// The same matrix in column-major memory order.
fn fortran(a: &Array2<f32>) -> Array2<f32> {
    let mut f = Array2::zeros(a.dim().f());
    f.assign(a);
    assert!(!f.is_standard_layout());
    f
}

fn input(t: usize) -> Array2<f32> {
    Array2::from_shape_fn((t, C), |(i, j)| ((i * 7 + j * 3) % 11) as f32 / 11.0 - 0.5)
}

/// `forward` equals `T` calls of `step`, and `reference` gives the same outputs.
fn check_paths<M: SequenceMixer>(built: &M, reference: &M, name: &str) {
    let xs = input(6);
    let (mut s1, mut s2, mut s3) = (
        built.init_state(),
        built.init_state(),
        reference.init_state(),
    );
    let seq = built.forward(xs.view(), &mut s1);
    let refs = reference.forward(xs.view(), &mut s3);
    let max = |a: &Array2<f32>, b: &Array2<f32>| {
        a.iter()
            .zip(b)
            .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()))
    };
    assert_eq!(seq, refs, "{name}: built from arrays vs loaded");
    let steps = Array2::from_shape_fn(xs.dim(), |_| 0.0);
    let mut steps = steps;
    for (t, x) in xs.rows().into_iter().enumerate() {
        steps.row_mut(t).assign(&built.step(x, &mut s2));
    }
    assert!(
        max(&seq, &steps) < 1e-4,
        "{name}: forward vs step {}",
        max(&seq, &steps)
    );
}

fn shape_error_names(err: Error, want: &str) {
    match &err {
        Error::Shape { name, .. } => assert_eq!(name, want, "{err}"),
        other => panic!("expected a shape error naming `{want}`, got {other}"),
    }
    assert!(err.to_string().contains(want), "{err}");
}

fn rwkv6_params(r: &Reader) -> Rwkv6Params {
    Rwkv6Params {
        time_maa_x: r.v("time_maa_x"),
        time_maa_w: r.v("time_maa_w"),
        time_maa_k: r.v("time_maa_k"),
        time_maa_v: r.v("time_maa_v"),
        time_maa_r: r.v("time_maa_r"),
        time_maa_g: r.v("time_maa_g"),
        time_maa_w1: r.m("time_maa_w1"),
        time_maa_w2: r.m3("time_maa_w2"),
        time_decay: r.v("time_decay"),
        time_decay_w1: r.m("time_decay_w1"),
        time_decay_w2: r.m("time_decay_w2"),
        time_faaaa: r.m("time_faaaa"),
        receptance: r.m("receptance.weight"),
        key: r.m("key.weight"),
        value: r.m("value.weight"),
        gate: r.m("gate.weight"),
        output: r.m("output.weight"),
        ln_x_weight: r.v("ln_x.weight"),
        ln_x_bias: r.v("ln_x.bias"),
    }
}

#[test]
fn rwkv6_time_mix_from_arrays() {
    let map = checkpoint(Version::V6);
    let r = Reader(&map, "blocks.0.att");
    let reference = tokenshift::Model::from_source(&map).unwrap();
    let tokenshift::block::TimeMix::V6(loaded) = &reference.blocks()[0].att else {
        panic!("an RWKV-6 block");
    };
    let built = Rwkv6TimeMix::new(HEADS, rwkv6_params(&r)).unwrap();
    check_paths(&built, loaded, "rwkv6");

    // Any memory layout: the same layer.
    let mut p = rwkv6_params(&r);
    p.receptance = fortran(&p.receptance);
    p.time_faaaa = fortran(&p.time_faaaa);
    check_paths(
        &Rwkv6TimeMix::new(HEADS, p).unwrap(),
        loaded,
        "rwkv6 column-major",
    );

    // The bonus given as [N, H] instead of [H, N].
    let mut p = rwkv6_params(&r);
    p.time_faaaa = p.time_faaaa.t().to_owned();
    shape_error_names(Rwkv6TimeMix::new(HEADS, p).unwrap_err(), "time_faaaa");
    // Four shift matrices instead of five.
    let mut p = rwkv6_params(&r);
    p.time_maa_w2 = p.time_maa_w2.slice_move(ndarray::s![..4, .., ..]);
    shape_error_names(Rwkv6TimeMix::new(HEADS, p).unwrap_err(), "time_maa_w2");
    // A projection of the wrong width.
    let mut p = rwkv6_params(&r);
    p.key = Array2::zeros((C, C + 1));
    shape_error_names(Rwkv6TimeMix::new(HEADS, p).unwrap_err(), "key.weight");
    // A head count that does not divide the width.
    input_error_names(Rwkv6TimeMix::new(5, rwkv6_params(&r)).unwrap_err(), "heads");
    input_error_names(Rwkv6TimeMix::random(C, 0, 1).unwrap_err(), "heads");

    let random = Rwkv6TimeMix::random(C, HEADS, 3).unwrap();
    check_paths(&random, &random.clone(), "rwkv6 random");
}

#[test]
fn ddlerp_from_arrays() {
    let map = checkpoint(Version::V6);
    let r = Reader(&map, "blocks.0.att");
    let maa = ["w", "k", "v", "r", "g"].map(|s| r.v(&format!("time_maa_{s}")));
    let stacked = ndarray::stack(ndarray::Axis(0), &maa.each_ref().map(|m| m.view())).unwrap();
    let shift = Ddlerp::new(
        r.v("time_maa_x"),
        stacked.clone(),
        r.m("time_maa_w1"),
        r.m3("time_maa_w2"),
    )
    .unwrap();
    let xs = input(3);
    let delta = tokenshift::ops::shift::delta(xs.view(), Array1::zeros(C).view());
    let built = shift.forward(xs.view(), delta.view());
    let params = rwkv6_params(&r);
    let layer = Rwkv6TimeMix::new(HEADS, params).unwrap();
    let loaded = layer.shift().forward(xs.view(), delta.view());
    assert_eq!((shift.width(), shift.rank()), (C, layer.shift().rank()));
    assert_eq!(built, loaded);
    let err = Ddlerp::new(
        r.v("time_maa_x"),
        stacked.t().to_owned(),
        r.m("time_maa_w1"),
        r.m3("time_maa_w2"),
    )
    .unwrap_err();
    shape_error_names(err, "time_maa");
    assert!(Ddlerp::random(C, 0, 1).is_err());
    assert!(Ddlerp::random(C, 8, 1).is_ok());
}

fn rwkv5_params(r: &Reader, gated: bool) -> Rwkv5Params {
    Rwkv5Params {
        time_mix_k: r.v("time_mix_k"),
        time_mix_v: r.v("time_mix_v"),
        time_mix_r: r.v("time_mix_r"),
        time_mix_g: gated.then(|| r.v("time_mix_g")),
        time_decay: r.any("time_decay"),
        time_faaaa: r
            .0
            .shape(&format!("{}.time_faaaa", r.1))
            .is_some()
            .then(|| r.any("time_faaaa")),
        time_first: r
            .0
            .shape(&format!("{}.time_first", r.1))
            .is_some()
            .then(|| r.any("time_first")),
        receptance: r.m("receptance.weight"),
        key: r.m("key.weight"),
        value: r.m("value.weight"),
        gate: gated.then(|| r.m("gate.weight")),
        output: r.m("output.weight"),
        ln_x_weight: r.v("ln_x.weight"),
        ln_x_bias: r.v("ln_x.bias"),
    }
}

#[test]
fn rwkv5_time_mixes_from_arrays() {
    for version in [Version::V5_0, Version::V5_1, Version::V5_2] {
        let map = checkpoint(version);
        let r = Reader(&map, "blocks.1.att");
        let reference = tokenshift::Model::from_source(&map).unwrap();
        let tokenshift::block::TimeMix::V5(loaded) = &reference.blocks()[1].att else {
            panic!("an RWKV-5 block");
        };
        let gated = version != Version::V5_0;
        let built = Rwkv5TimeMix::new(version, HEADS, rwkv5_params(&r, gated)).unwrap();
        check_paths(&built, loaded, &format!("{version}"));
        let mut p = rwkv5_params(&r, gated);
        p.time_decay = ArrayD::zeros(vec![HEADS + 1]);
        shape_error_names(
            Rwkv5TimeMix::new(version, HEADS, p).unwrap_err(),
            "time_decay",
        );
        let random = Rwkv5TimeMix::random(version, C, HEADS, 2).unwrap();
        check_paths(&random, &random.clone(), &format!("{version} random"));
    }
    // 5.0 has no gate: one given is an error naming it, not ignored.
    let map = checkpoint(Version::V5_1);
    let r = Reader(&map, "blocks.0.att");
    input_error_names(
        Rwkv5TimeMix::new(Version::V5_0, HEADS, rwkv5_params(&r, true)).unwrap_err(),
        "gate.weight",
    );
    // 5.1 needs one.
    let err = Rwkv5TimeMix::new(Version::V5_1, HEADS, rwkv5_params(&r, false)).unwrap_err();
    assert!(
        matches!(&err, Error::MissingTensor(n) if n.contains("time_mix_g") || n.contains("gate")),
        "{err}"
    );
    input_error_names(
        Rwkv5TimeMix::new(Version::V6, HEADS, rwkv5_params(&r, true)).unwrap_err(),
        "version",
    );
}

#[test]
fn rwkv4_time_mix_from_arrays() {
    let map = checkpoint(Version::V4);
    let r = Reader(&map, "blocks.0.att");
    let params = || Rwkv4Params {
        time_mix_k: r.v("time_mix_k"),
        time_mix_v: r.v("time_mix_v"),
        time_mix_r: r.v("time_mix_r"),
        time_decay: r.v("time_decay"),
        time_first: r.v("time_first"),
        key: r.m("key.weight"),
        value: r.m("value.weight"),
        receptance: r.m("receptance.weight"),
        output: r.m("output.weight"),
    };
    let reference = tokenshift::Model::from_source(&map).unwrap();
    let tokenshift::block::TimeMix::V4(loaded) = &reference.blocks()[0].att else {
        panic!("an RWKV-4 block");
    };
    check_paths(&Rwkv4TimeMix::new(params()).unwrap(), loaded, "rwkv4");
    let mut p = params();
    p.time_first = Array1::zeros(C - 1);
    shape_error_names(Rwkv4TimeMix::new(p).unwrap_err(), "time_first");
    let random = Rwkv4TimeMix::random(C, 4).unwrap();
    check_paths(&random, &random.clone(), "rwkv4 random");
}

fn rwkv7_params(r: &Reader, residual: bool) -> Rwkv7Params {
    Rwkv7Params {
        x_r: r.v("x_r"),
        x_w: r.v("x_w"),
        x_k: r.v("x_k"),
        x_v: r.v("x_v"),
        x_a: r.v("x_a"),
        x_g: r.v("x_g"),
        w0: r.v("w0"),
        w1: r.m("w1"),
        w2: r.m("w2"),
        a0: r.v("a0"),
        a1: r.m("a1"),
        a2: r.m("a2"),
        v0: residual.then(|| r.v("v0")),
        v1: residual.then(|| r.m("v1")),
        v2: residual.then(|| r.m("v2")),
        g1: r.m("g1"),
        g2: r.m("g2"),
        k_k: r.v("k_k"),
        k_a: r.v("k_a"),
        r_k: r.m("r_k"),
        receptance: r.m("receptance.weight"),
        key: r.m("key.weight"),
        value: r.m("value.weight"),
        output: r.m("output.weight"),
        ln_x_weight: r.v("ln_x.weight"),
        ln_x_bias: r.v("ln_x.bias"),
    }
}

#[test]
fn rwkv7_time_mix_from_arrays() {
    let map = checkpoint(Version::V7);
    let reference = tokenshift::Model::from_source(&map).unwrap();
    for layer in [0, 1] {
        let r = Reader(
            &map,
            if layer == 0 {
                "blocks.0.att"
            } else {
                "blocks.1.att"
            },
        );
        let tokenshift::block::TimeMix::V7(loaded) = &reference.blocks()[layer].att else {
            panic!("an RWKV-7 block");
        };
        let built = Rwkv7TimeMix::new(HEADS, rwkv7_params(&r, layer > 0)).unwrap();
        assert_eq!(built.has_value_residual(), layer > 0);
        assert_eq!(
            (built.width(), built.heads(), built.head_size()),
            (C, HEADS, C / HEADS)
        );
        check_paths(&built, loaded, &format!("rwkv7 block {layer}"));
    }
    let r = Reader(&map, "blocks.1.att");
    let mut p = rwkv7_params(&r, true);
    p.v2 = None;
    let err = Rwkv7TimeMix::new(HEADS, p).unwrap_err();
    assert!(
        matches!(&err, Error::MissingTensor(n) if n == "v2"),
        "{err}"
    );
    let mut p = rwkv7_params(&r, true);
    p.r_k = p.r_k.t().to_owned();
    shape_error_names(Rwkv7TimeMix::new(HEADS, p).unwrap_err(), "r_k");
    let random = Rwkv7TimeMix::random(C, HEADS, true, 6).unwrap();
    assert!(random.has_value_residual());
}

#[test]
fn channel_mixes_from_arrays() {
    for version in [Version::V4, Version::V5_2, Version::V6, Version::V7] {
        let map = checkpoint(version);
        let r = Reader(&map, "blocks.0.ffn");
        let (k, rr) = match version {
            Version::V6 => ("time_maa_k", "time_maa_r"),
            Version::V7 => ("x_k", ""),
            _ => ("time_mix_k", "time_mix_r"),
        };
        let v7 = version == Version::V7;
        let params = || ChannelMixParams {
            mix_k: r.v(k),
            mix_r: (!v7).then(|| r.v(rr)),
            key: r.m("key.weight"),
            value: r.m("value.weight"),
            receptance: (!v7).then(|| r.m("receptance.weight")),
        };
        let reference = tokenshift::Model::from_source(&map).unwrap();
        let loaded = &reference.blocks()[0].ffn;
        let built = ChannelMix::new(version, params()).unwrap();
        assert_eq!(
            (built.width(), built.hidden(), built.has_receptance()),
            (C, loaded.hidden(), !v7)
        );
        check_paths(&built, loaded, &format!("ffn {version}"));
        let mut p = params();
        p.value = fortran(&p.value);
        check_paths(
            &ChannelMix::new(version, p).unwrap(),
            loaded,
            "ffn column-major",
        );
        let mut p = params();
        p.value = p.value.t().to_owned();
        shape_error_names(ChannelMix::new(version, p).unwrap_err(), "value.weight");
        let random = ChannelMix::random(version, C, 3 * C, 9).unwrap();
        check_paths(&random, &random.clone(), "ffn random");
    }
    let map = checkpoint(Version::V6);
    let r = Reader(&map, "blocks.0.ffn");
    let params = ChannelMixParams {
        mix_k: r.v("time_maa_k"),
        mix_r: Some(r.v("time_maa_r")),
        key: r.m("key.weight"),
        value: r.m("value.weight"),
        receptance: Some(r.m("receptance.weight")),
    };
    input_error_names(
        ChannelMix::new(Version::V7, params).unwrap_err(),
        "receptance.weight",
    );
}
