//! RWKV layers built from arrays rather than from a checkpoint.
//!
//! Each RWKV layer has a parameter struct whose fields are the tensors a BlinkDL checkpoint
//! stores for it, under the same names (`Rwkv6Params::time_faaaa` is `blocks.N.att.time_faaaa`)
//! and in the same layout, and a checked constructor (`Rwkv6TimeMix::new`). The constructor
//! puts the arrays under their checkpoint names and loads the layer from them, so a layer
//! built from arrays goes through the same shape checks, conversions and code as one loaded
//! from a file, and an error names the tensor (the argument) that is wrong. Arrays of any
//! memory layout are accepted (a transposed view is copied into standard order), and a
//! parameter the layer's version does not read is an error rather than ignored.

use crate::config::{Config, Version};
use crate::error::{Error, Result};
use crate::synthetic::random_checkpoint;
use crate::weights::{DType, Scope, Tensor, TensorMap, TensorSource, TensorSpec};
use ndarray::{Array, Dimension};
use std::collections::HashSet;

/// A layer parameter that goes into a [`TensorMap`] under its checkpoint name.
pub(crate) trait Param {
    /// Inserts the parameter into `map` as `name` (an absent optional one inserts nothing).
    fn insert_into(self, name: &str, map: &mut TensorMap);
}

impl<D: Dimension> Param for Array<f32, D> {
    fn insert_into(self, name: &str, map: &mut TensorMap) {
        map.insert(name, Tensor::F32(self.into_dyn()));
    }
}

impl<P: Param> Param for Option<P> {
    fn insert_into(self, name: &str, map: &mut TensorMap) {
        if let Some(p) = self {
            p.insert_into(name, map);
        }
    }
}

/// Defines a layer's parameter struct: one public field per checkpoint tensor, with its
/// checkpoint name, and `into_tensors`, which puts the fields under those names.
macro_rules! layer_params {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $( $(#[$field_meta:meta])* $field:ident: $ty:ty => $tensor:literal, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Debug)]
        pub struct $name {
            $( $(#[$field_meta])* pub $field: $ty, )*
        }

        impl $name {
            /// The parameters under their checkpoint names.
            fn into_tensors(self) -> $crate::weights::TensorMap {
                let mut map = $crate::weights::TensorMap::new();
                $( $crate::mixer::from_arrays::Param::insert_into(self.$field, $tensor, &mut map); )*
                map
            }
        }
    };
}
pub(crate) use layer_params;

/// The sizes of one layer of `version` with width `c` and `heads` heads (ignored for RWKV-4),
/// every low-rank and hidden size 0 for the caller to fill in.
///
/// # Errors
/// [`Error::InputShape`] naming `heads` when it is 0 or does not divide `c`, or `c` when it is
/// 0.
pub(crate) fn layer_config(
    layer: &str,
    version: Version,
    c: usize,
    heads: usize,
) -> Result<Config> {
    crate::mixer::check_arg(c > 0, layer, "width C", "positive", &[c])?;
    let head_size = if version.has_matrix_state() {
        crate::mixer::check_arg(
            heads > 0 && c.is_multiple_of(heads),
            layer,
            "heads",
            format!("a divisor of the width {c}"),
            &[heads],
        )?;
        c / heads
    } else {
        0
    };
    let mut config = Config::standard(version, 1, c, head_size, 1);
    config.dim_ffn = 0;
    config.dim_mix_lora = 0;
    config.dim_decay_lora = 0;
    config.dim_a_lora = 0;
    config.dim_v_lora = 0;
    config.dim_g_lora = 0;
    Ok(config)
}

/// An [`Error::Shape`] for the tensor `name` under `att`.
pub(crate) fn shape_error(att: &Scope, name: &str, expected: String, found: Vec<usize>) -> Error {
    Error::Shape {
        name: att.path(name),
        expected,
        found,
    }
}

/// `(H, N)` from the `[H, N]` tensor `name` under `att`, whose product must be the width `c`.
///
/// # Errors
/// [`Error::MissingTensor`] or [`Error::Shape`] naming the tensor.
pub(crate) fn read_heads(att: &Scope, name: &str, c: usize) -> Result<(usize, usize)> {
    let shape = att.shape(name)?;
    match shape[..] {
        [h, n] if h * n == c => Ok((h, n)),
        _ => Err(shape_error(
            att,
            name,
            format!("[H, N] with H·N = {c}"),
            shape,
        )),
    }
}

/// The rank `D` of the low-rank factor `name` under `att`, `[c, D]` with `D > 0`.
///
/// # Errors
/// [`Error::MissingTensor`] or [`Error::Shape`] naming the tensor.
pub(crate) fn read_rank(att: &Scope, name: &str, c: usize) -> Result<usize> {
    let shape = att.shape(name)?;
    match shape[..] {
        [rows, d] if rows == c && d > 0 => Ok(d),
        _ => Err(shape_error(att, name, format!("[{c}, D]"), shape)),
    }
}

/// Loads a layer from `tensors` (named as under a checkpoint's layer scope) with `load`,
/// after checking that every tensor is one of `specs` (what the layer of `config` reads) and
/// that every spec is present with its shape.
///
/// # Errors
/// [`Error::InputShape`] naming a tensor the layer does not read; [`Error::MissingTensor`] or
/// [`Error::Shape`] naming the first tensor missing or of the wrong shape.
pub(crate) fn build<L>(
    layer: &str,
    tensors: &TensorMap,
    config: &Config,
    specs: impl FnOnce(&Scope, &Config) -> Vec<TensorSpec>,
    load: impl FnOnce(&Scope, &Config) -> Result<L>,
) -> Result<L> {
    let scope = Scope::new(tensors);
    let specs = specs(&scope, config);
    let read: HashSet<&str> = specs.iter().map(|s| s.name.as_str()).collect();
    let mut names = tensors.names();
    names.sort_unstable();
    if let Some(extra) = names.into_iter().find(|n| !read.contains(n)) {
        return Err(Error::InputShape {
            what: format!("{layer}: {extra}"),
            expected: format!("absent (not a parameter of the {} layer)", config.version),
            found: tensors.shape(extra).unwrap_or_default(),
        });
    }
    scope.check(&specs)?;
    load(&scope, config)
}

/// A random layer of `version` of width `c` with `heads` heads (ignored for RWKV-4) and the
/// release's other sizes ([`Config::standard`]; values in the ranges of trained checkpoints,
/// see [`crate::synthetic`]): block `layer` of a random checkpoint with `layer + 1` blocks,
/// read by `load` from that block's scope with its sizes (after `sizes` changed them).
///
/// # Errors
/// As [`layer_config`].
pub(crate) fn random_layer<L>(
    name: &str,
    version: Version,
    (c, heads): (usize, usize),
    layer: usize,
    seed: u64,
    sizes: impl FnOnce(&mut Config),
    load: impl FnOnce(&Scope, &Config) -> Result<L>,
) -> Result<L> {
    let head_size = layer_config(name, version, c, heads)?.head_size;
    let mut config = Config::standard(version, layer + 1, c, head_size, 1);
    sizes(&mut config);
    let map = random_checkpoint(&config, DType::F32, seed)?;
    load(&Scope::new(&map).pp(&format!("blocks.{layer}")), &config)
}
