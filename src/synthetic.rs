//! Random-weight checkpoints of any shape, in BlinkDL naming, for benchmarks and tests.
//!
//! Values follow the ranges of trained checkpoints (mixing coefficients in `[0, 1]`, decays
//! spread from fast to slow, layer-norm weights near 1, projections scaled by `1/√in`), so the
//! numerics exercised are those of a real model.

use crate::channel_mix::ChannelMix;
use crate::config::{Config, Version};
use crate::error::{Error, Result};
use crate::mixer::random::Rng;
use crate::mixer::{
    rwkv4::Rwkv4TimeMix, rwkv5::Rwkv5TimeMix, rwkv6::Rwkv6TimeMix, rwkv7::Rwkv7TimeMix,
};
use crate::model::Model;
use crate::weights::{Tensor, TensorMap};
use half::{bf16, f16};

pub use crate::weights::DType;

/// Builds a random checkpoint tensor by tensor (each version's time mix and the channel mix
/// add their own tensors: `synthetic` of [`crate::mixer::rwkv6::Rwkv6TimeMix`] and the others).
pub(crate) struct Builder {
    map: TensorMap,
    rng: Rng,
    dtype: DType,
}

impl Builder {
    /// A small tensor (vector, mixing coefficients, decay base): always f32.
    pub(crate) fn small(&mut self, name: String, shape: &[usize], lo: f32, hi: f32) {
        let a = self.rng.array(shape, lo, hi);
        self.map.insert(name, Tensor::F32(a));
    }

    /// A low-rank factor `[.., inp, ..]` in the checkpoint's storage type: uniform with half the
    /// spread of a projection with `inp` inputs.
    pub(crate) fn low_rank(&mut self, name: String, shape: &[usize], inp: usize) {
        let bound = 0.5 * (3.0 / inp as f32).sqrt();
        self.stored(name, shape, -bound, bound);
    }

    /// A matrix in the checkpoint's storage type, uniform with the variance of N(0, 1/in).
    pub(crate) fn matrix(&mut self, name: String, out: usize, inp: usize) {
        let bound = (3.0 / inp as f32).sqrt();
        self.stored(name, &[out, inp], -bound, bound);
    }

    /// A tensor in the checkpoint's storage type (a matrix, a low-rank factor), uniform in
    /// `[lo, hi)`.
    pub(crate) fn stored(&mut self, name: String, shape: &[usize], lo: f32, hi: f32) {
        let a = self.rng.array(shape, lo, hi);
        let t = match self.dtype {
            DType::F32 => Tensor::F32(a),
            DType::F16 => Tensor::F16(a.mapv(f16::from_f32)),
            DType::Bf16 => Tensor::Bf16(a.mapv(bf16::from_f32)),
        };
        self.map.insert(name, t);
    }

    pub(crate) fn layer_norm(&mut self, prefix: &str, c: usize) {
        self.small(format!("{prefix}.weight"), &[c], 0.9, 1.1);
        self.small(format!("{prefix}.bias"), &[c], -0.05, 0.05);
    }
}

fn check(config: &Config) -> Result<()> {
    let bad = |what: &str| Err(Error::UnknownVersion(format!("synthetic model: {what}")));
    if config.n_layer == 0 || config.n_embd == 0 || config.vocab == 0 || config.dim_ffn == 0 {
        return bad("every size must be positive");
    }
    if config.version.has_matrix_state() && config.n_head * config.head_size != config.n_embd {
        return bad("n_head · head_size must equal n_embd");
    }
    if config.version == Version::V6 && (config.dim_mix_lora == 0 || config.dim_decay_lora == 0) {
        return bad("RWKV-6 needs positive LoRA sizes");
    }
    let v7_loras = [config.dim_decay_lora, config.dim_a_lora, config.dim_g_lora];
    if config.version == Version::V7
        && (v7_loras.contains(&0) || (config.n_layer > 1 && config.dim_v_lora == 0))
    {
        return bad("RWKV-7 needs positive LoRA sizes");
    }
    Ok(())
}

/// A random checkpoint with every tensor a model of `config` needs, matrices stored as `dtype`.
///
/// # Errors
/// If the sizes are inconsistent (zero sizes, `n_head · head_size ≠ n_embd`, RWKV-6 without
/// LoRA sizes).
pub fn random_checkpoint(config: &Config, dtype: DType, seed: u64) -> Result<TensorMap> {
    check(config)?;
    let (c, v) = (config.n_embd, config.vocab);
    let mut b = Builder {
        map: TensorMap::new(),
        rng: Rng::new(seed),
        dtype,
    };
    b.stored("emb.weight".into(), &[v, c], -0.5, 0.5);
    b.layer_norm("blocks.0.ln0", c);
    b.layer_norm("ln_out", c);
    b.matrix("head.weight".into(), v, c);
    for l in 0..config.n_layer {
        let p = |s: &str| format!("blocks.{l}.{s}");
        b.layer_norm(&p("ln1"), c);
        b.layer_norm(&p("ln2"), c);
        for m in ["key", "value", "receptance", "output"] {
            b.matrix(p(&format!("att.{m}.weight")), c, c);
        }
        ChannelMix::synthetic(&mut b, &p("ffn"), config);
        let att = p("att");
        match config.version {
            Version::V4 => Rwkv4TimeMix::synthetic(&mut b, &att, config),
            Version::V5_0 | Version::V5_1 | Version::V5_2 => {
                Rwkv5TimeMix::synthetic(&mut b, &att, config)
            }
            Version::V6 => Rwkv6TimeMix::synthetic(&mut b, &att, config),
            Version::V7 => Rwkv7TimeMix::synthetic(&mut b, &att, config),
        }
    }
    Ok(b.map)
}

/// A model of `config` with random weights (see [`random_checkpoint`]).
///
/// # Errors
/// As [`random_checkpoint`].
pub fn random_model(config: &Config, dtype: DType, seed: u64) -> Result<Model> {
    let model = Model::from_source(&random_checkpoint(config, dtype, seed)?)?;
    debug_assert_eq!(model.config(), config);
    Ok(model)
}

impl Config {
    /// The sizes of a released model family member: `n_layer` blocks of width `n_embd`, heads of
    /// `head_size` (ignored for RWKV-4), the release's ffn width (4C for v4/5.0/5.1/7,
    /// ⌊3.5C/32⌋·32 for 5.2/6), RWKV-6 LoRA sizes (32/64, or 64/128 from C = 4096) and RWKV-7
    /// LoRA sizes (`max(32, round(f·√C/32)·32)` with f = 2.5, 2.5, 1.7, 5 for w, a, v, g).
    pub fn standard(
        version: Version,
        n_layer: usize,
        n_embd: usize,
        head_size: usize,
        vocab: usize,
    ) -> Config {
        let matrix = version.has_matrix_state();
        let dim_ffn = match version {
            Version::V5_2 | Version::V6 => (n_embd * 7 / 2) / 32 * 32,
            _ => 4 * n_embd,
        };
        let big = n_embd >= 4096;
        // RWKV-7's LoRA ranks in the official training code: max(32, round(f·√C / 32)·32).
        let v7 = version == Version::V7;
        let v7_lora =
            |f: f64| (((f * (n_embd as f64).sqrt() / 32.0).round() as usize) * 32).max(32);
        Config {
            version,
            n_layer,
            n_embd,
            n_head: if matrix { n_embd / head_size.max(1) } else { 0 },
            head_size: if matrix { head_size } else { 0 },
            dim_ffn,
            vocab,
            dim_mix_lora: if version == Version::V6 {
                if big {
                    64
                } else {
                    32
                }
            } else {
                0
            },
            dim_decay_lora: if v7 {
                v7_lora(2.5)
            } else if version == Version::V6 {
                if big {
                    128
                } else {
                    64
                }
            } else {
                0
            },
            dim_a_lora: if v7 { v7_lora(2.5) } else { 0 },
            // Block 0 has no value residual: a single block needs no rank.
            dim_v_lora: if v7 && n_layer > 1 { v7_lora(1.7) } else { 0 },
            dim_g_lora: if v7 { v7_lora(5.0) } else { 0 },
        }
    }
}
