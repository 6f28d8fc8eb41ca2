//! Mamba-2's mixer: state space duality (SSD, Dao & Gu 2024) in its block, with the tensor names
//! and shapes of transformers' `Mamba2Mixer` (spec/mixers.md §10.3).
//!
//! With width `D`, inner width `E = H·P` (`H` heads of `P` channels), `G` groups of state size
//! `N` (head `h` reads group `h / (H/G)`) and kernel `K`:
//!
//! ```text
//! [z_t; ξ_t; dt_t] = W_in u_t                            (in_proj, [E + E + 2GN + H, D])
//! [x_t; B_t; C_t] = SiLU(conv_K(ξ)_t + b_conv)           (depthwise over E + 2GN channels)
//! Δ_t[h] = clamp(softplus(dt_t[h] + dt_bias[h]), time_step_limit)
//! A_h = −exp(A_log[h])
//! S_t[h] = e^{Δ_t[h] A_h} S_{t−1}[h] + B_t (Δ_t[h] x_t[h])ᵀ      ([N, P] per head)
//! y_t[h] = S_t[h]ᵀ C_t + D[h] x_t[h]
//! out_t = W_out (RMSNorm_G(y_t ⊙ SiLU(z_t)) ⊙ w_norm)     (norm over E/G channels per group)
//! ```
//!
//! The scan is scalar-decay gated linear attention: the
//! [`outer_product`](crate::mixer::outer_product) kernel with `q = C`, `k = B`, `v = Δ ⊙ x` and the
//! per-token gate `λ_t = Δ_t[h] A_h` on every key channel of head `h`; its three paths
//! (recurrent, the masked quadratic "segsum" form, chunkwise = the SSD algorithm) are the
//! kernel's. The short convolution is [`ShortConv`]. State: the convolution's last `K − 1`
//! inputs and `S: [H, N, P]`.

use crate::error::Result;
use crate::mixer::linear_attention::run;
use crate::mixer::mamba::{affine, check_matrix, check_vector, conv_taps, softplus, uniform};
use crate::mixer::outer_product::{Gate, Inputs, OuterState};
use crate::mixer::random::Rng;
use crate::mixer::short_conv::ShortConv;
use crate::mixer::{check_arg, MultiPath, Path, SequenceMixer};
use crate::ops::{silu, HeadNorm, Linear, NormKind};
use ndarray::{s, Array1, Array2, Array3, ArrayView2, Axis, Zip};

/// A `Mamba2Mixer`'s tensors under their transformers names, in their transformers shapes.
#[derive(Clone, Debug)]
pub struct Mamba2Params {
    /// `in_proj.weight`, `[E + (E + 2GN) + H, D]` (rows: `z`, then `x, B, C`, then `dt`).
    pub in_proj_weight: Array2<f32>,
    /// `in_proj.bias` (`use_bias`).
    pub in_proj_bias: Option<Array1<f32>>,
    /// `conv1d.weight`, `[E + 2GN, 1, K]`.
    pub conv1d_weight: Array3<f32>,
    /// `conv1d.bias`, `[E + 2GN]` (`use_conv_bias`).
    pub conv1d_bias: Option<Array1<f32>>,
    /// `dt_bias`, `[H]`.
    pub dt_bias: Array1<f32>,
    /// `A_log`, `[H]`.
    pub a_log: Array1<f32>,
    /// `D`, `[H]`.
    pub d: Array1<f32>,
    /// `norm.weight`, `[E]`.
    pub norm_weight: Array1<f32>,
    /// `out_proj.weight`, `[D, E]`.
    pub out_proj_weight: Array2<f32>,
    /// `out_proj.bias` (`use_bias`).
    pub out_proj_bias: Option<Array1<f32>>,
}

/// The configuration a `Mamba2Mixer`'s tensors do not determine.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Mamba2Options {
    /// `n_groups` `G`: heads sharing one `B` and `C`, and the gated norm's groups.
    pub n_groups: usize,
    /// The gated norm's `layer_norm_epsilon`.
    pub eps: f32,
    /// `time_step_limit`: the range `Δ` is clamped to.
    pub time_step_limit: (f32, f32),
}

impl Default for Mamba2Options {
    /// transformers' defaults but one group: `G = 1`, eps 1e-5, no limit.
    fn default() -> Self {
        Mamba2Options {
            n_groups: 1,
            eps: 1e-5,
            time_step_limit: (0.0, f32::INFINITY),
        }
    }
}

/// A Mamba-2 mixer.
#[derive(Clone, Debug)]
pub struct Mamba2 {
    /// Heads `H`.
    pub heads: usize,
    /// Channels per head `P`.
    pub head_dim: usize,
    /// State size per group `N`.
    pub state: usize,
    /// Groups `G`.
    pub groups: usize,
    /// `W_in`, `[2E + 2GN + H, D]`.
    pub in_proj: Linear,
    /// Its bias.
    pub in_bias: Option<Array1<f32>>,
    /// The depthwise convolution with SiLU over `x, B, C`, `[E + 2GN, K]`.
    pub conv: ShortConv,
    /// `dt_bias`, `[H]`.
    pub dt_bias: Array1<f32>,
    /// `A = −exp(A_log)`, `[H]`.
    pub a: Array1<f32>,
    /// The skip `D`, `[H]`.
    pub d: Array1<f32>,
    /// The gated RMSNorm (`G` groups, weight `[E]`).
    pub norm: HeadNorm,
    /// `W_out`, `[D, E]`.
    pub out_proj: Linear,
    /// Its bias.
    pub out_bias: Option<Array1<f32>>,
    /// The clamp range of `Δ`.
    pub time_step_limit: (f32, f32),
}

/// State of a [`Mamba2`] mixer.
#[derive(Clone, Debug, PartialEq)]
pub struct Mamba2State {
    /// The convolution's last `K − 1` inputs, oldest first, `[K − 1, E + 2GN]`.
    pub conv: Array2<f32>,
    /// `S` per head, `[H, N, P]`.
    pub ssm: OuterState,
}

impl Mamba2 {
    /// A mixer from a `Mamba2Mixer`'s tensors and the options they do not determine; the sizes
    /// are read from the tensors (`H` from `A_log`, `E` from `norm.weight`, `N` from the
    /// convolution's width).
    ///
    /// # Errors
    /// [`Error::InputShape`](crate::Error::InputShape) naming (by its transformers name) the
    /// first tensor whose shape disagrees with the others, or `n_groups`.
    pub fn new(p: Mamba2Params, options: Mamba2Options) -> Result<Self> {
        const L: &str = "Mamba2";
        let h = p.a_log.len();
        let e = p.norm_weight.len();
        let g = options.n_groups;
        check_arg(h > 0, L, "A_log", "[H], H positive", p.a_log.shape())?;
        check_arg(
            e > 0 && e.is_multiple_of(h),
            L,
            "norm.weight",
            format!("[E] with E a multiple of H = {h}"),
            p.norm_weight.shape(),
        )?;
        check_arg(
            g > 0 && h.is_multiple_of(g),
            L,
            "n_groups",
            format!("a divisor of the heads {h}"),
            &[g],
        )?;
        let conv_dim = p.conv1d_weight.dim().0;
        check_arg(
            conv_dim > e && (conv_dim - e).is_multiple_of(2 * g),
            L,
            "conv1d.weight",
            format!("[E + 2GN, 1, K] with E = {e}, G = {g}"),
            p.conv1d_weight.shape(),
        )?;
        let n = (conv_dim - e) / (2 * g);
        let taps = conv_taps(L, "conv1d.weight", p.conv1d_weight, conv_dim)?;
        check_vector(L, "conv1d.bias", p.conv1d_bias.as_ref(), conv_dim)?;
        let d_model = p.in_proj_weight.ncols();
        let proj = e + conv_dim + h;
        check_arg(
            p.in_proj_weight.nrows() == proj && d_model > 0,
            L,
            "in_proj.weight",
            format!("[E + (E + 2GN) + H, D] = [{proj}, D]"),
            p.in_proj_weight.shape(),
        )?;
        check_vector(L, "in_proj.bias", p.in_proj_bias.as_ref(), proj)?;
        check_vector(L, "dt_bias", Some(&p.dt_bias), h)?;
        check_vector(L, "D", Some(&p.d), h)?;
        check_matrix(L, "out_proj.weight", &p.out_proj_weight, d_model, e)?;
        check_vector(L, "out_proj.bias", p.out_proj_bias.as_ref(), d_model)?;
        let norm = HeadNorm {
            weight: p.norm_weight,
            bias: None,
            heads: g,
            eps: options.eps,
            kind: NormKind::Rms,
        };
        Ok(Mamba2 {
            heads: h,
            head_dim: e / h,
            state: n,
            groups: g,
            in_proj: Linear::from(p.in_proj_weight),
            in_bias: p.in_proj_bias,
            conv: ShortConv::new(taps, p.conv1d_bias, true)?,
            dt_bias: p.dt_bias,
            a: p.a_log.mapv(|a| -a.exp()),
            d: p.d,
            norm,
            out_proj: Linear::from(p.out_proj_weight),
            out_bias: p.out_proj_bias,
            time_step_limit: options.time_step_limit,
        })
    }

    /// A random mixer of width `d_model` with `heads` heads of `head_dim` channels, `groups`
    /// groups of state size `state`, `K = 4`, from `seed`, initialised as transformers:
    /// `A_log[h] = ln(h + 1)`, `D = 1`, `softplus(dt_bias)` log-uniform in `[1e−3, 1e−1]`, norm
    /// weight 1, projections uniform with variance `1/in`.
    ///
    /// # Panics
    /// If `groups` does not divide `heads`.
    pub fn random(
        d_model: usize,
        heads: usize,
        head_dim: usize,
        state: usize,
        groups: usize,
        seed: u64,
    ) -> Self {
        let mut rng = Rng::new(seed);
        let e = heads * head_dim;
        let conv_dim = e + 2 * groups * state;
        let k = 4;
        let bk = (1.0 / k as f32).sqrt();
        let dt_bias = Array1::from_shape_simple_fn(heads, || {
            let dt = (rng.uniform((1e-3f32).ln(), (1e-1f32).ln()))
                .exp()
                .max(1e-4);
            dt + (-(-dt).exp_m1()).ln()
        });
        let p = Mamba2Params {
            in_proj_weight: uniform(&mut rng, e + conv_dim + heads, d_model),
            in_proj_bias: None,
            conv1d_weight: rng.matrix(conv_dim, k, -bk, bk).insert_axis(Axis(1)),
            conv1d_bias: Some(rng.vector(conv_dim, -bk, bk)),
            dt_bias,
            a_log: Array1::from_shape_fn(heads, |h| ((h + 1) as f32).ln()),
            d: Array1::ones(heads),
            norm_weight: Array1::ones(e),
            out_proj_weight: uniform(&mut rng, d_model, e),
            out_proj_bias: None,
        };
        let options = Mamba2Options {
            n_groups: groups,
            ..Mamba2Options::default()
        };
        Mamba2::new(p, options).expect("random layers have consistent shapes")
    }

    /// Width `D`.
    pub fn width(&self) -> usize {
        self.in_proj.dim().1
    }

    /// Inner width `E = H·P`.
    pub fn inner(&self) -> usize {
        self.heads * self.head_dim
    }

    /// `Δ = clamp(softplus(dt + dt_bias))` for the `dt` rows `[T, H]`, in place.
    fn delta(&self, dt: &mut Array2<f32>) {
        let (lo, hi) = self.time_step_limit;
        for mut row in dt.rows_mut() {
            row.zip_mut_with(&self.dt_bias, |d, &b| *d = softplus(*d + b).clamp(lo, hi));
        }
    }
}

impl SequenceMixer for Mamba2 {
    type State = Mamba2State;

    fn init_state(&self) -> Mamba2State {
        Mamba2State {
            conv: self.conv.init_state(),
            ssm: OuterState::new(self.heads, self.state, self.head_dim, false),
        }
    }

    fn forward(&self, xs: ArrayView2<f32>, state: &mut Mamba2State) -> Array2<f32> {
        let path = if xs.nrows() <= 1 {
            Path::Recurrent
        } else {
            Path::Chunkwise(64)
        };
        self.forward_path(xs, state, path)
    }
}

impl MultiPath for Mamba2 {
    fn forward_path(
        &self,
        xs: ArrayView2<f32>,
        state: &mut Mamba2State,
        path: Path,
    ) -> Array2<f32> {
        assert_eq!(xs.ncols(), self.width(), "Mamba2: width");
        let (h, p, n, e) = (self.heads, self.head_dim, self.state, self.inner());
        let per_group = h / self.groups;
        let t = xs.nrows();
        let proj = affine(&self.in_proj, self.in_bias.as_ref(), xs);
        let mut z = proj.slice(s![.., ..e]).to_owned();
        let xbc = self
            .conv
            .forward(proj.slice(s![.., e..proj.ncols() - h]), &mut state.conv);
        let mut delta = proj.slice(s![.., proj.ncols() - h..]).to_owned();
        self.delta(&mut delta);
        let x = xbc.slice(s![.., ..e]);
        let gn = self.groups * n;
        // Each head's key and query: its group's B and C.
        let by_head = |from: usize| {
            Array2::from_shape_fn((t, h * n), |(r, c)| {
                xbc[[r, from + (c / n / per_group) * n + c % n]]
            })
        };
        let (k, q) = (by_head(e), by_head(e + gn));
        let v = Array2::from_shape_fn((t, e), |(r, c)| delta[[r, c / p]] * x[[r, c]]);
        let lam = Array2::from_shape_fn((t, h * n), |(r, c)| delta[[r, c / n]] * self.a[c / n]);
        let inputs = Inputs {
            gate: Gate::KeyToken(lam.view()),
            ..Inputs::new(q.view(), k.view(), v.view())
        };
        let mut y = run(&inputs, &mut state.ssm, path);
        // The skip D x, one D per head.
        Zip::indexed(&mut y).for_each(|(r, c), y| *y += self.d[c / p] * x[[r, c]]);
        silu(&mut z);
        y *= &z;
        self.norm.forward_inplace(&mut y);
        affine(&self.out_proj, self.out_bias.as_ref(), y.view())
    }
}
