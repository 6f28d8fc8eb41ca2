//! The Legendre Memory Unit (Voelker, Kajić & Eliasmith 2019; spec/mixers.md §12) in its
//! feedforward form (keras-lmu's `LMUFeedforward`: no hidden-to-memory or memory-to-memory
//! feedback, so the memory is linear time-invariant and has a convolution form).
//!
//! With width `C`, `d_m` memory copies of order `q` and window `θ` (in steps):
//!
//! ```text
//! A_ij = (2i+1)/θ · (−1 if i < j, (−1)^{i−j+1} if i ≥ j),   B_i = (2i+1)(−1)^i / θ
//! Ā = e^{A}, B̄ = A^{−1}(e^{A} − I) B                  (zero-order hold, step 1, one expm)
//! u_t = E x_t                                         (encoder, [d_m, C])
//! m_t = Ā m_{t−1} + B̄ u_t                             (each of the d_m copies, [q])
//! y_t = tanh(W_m vec(m_t) + W_x x_t + b)              ([C, d_m·q], [C, C], [C])
//! ```
//!
//! `m_t` holds the Legendre coefficients of the last `θ` inputs: `u(t − θ') ≈ Σ_i P̃_i(θ'/θ)
//! m_{t,i}` with the shifted Legendre polynomials `P̃_i`. Paths (the memory's, [`LtiMemory`]):
//! recurrent (`O(q²)` per token and copy); parallel, the causal convolution with the impulse
//! response `Ā^ℓ B̄` (direct below [`lti::FFT_MIN_LEN`](crate::mixer::lti::FFT_MIN_LEN) tokens, FFT
//! from there) plus the carried memory's free response; chunkwise, the parallel form in
//! chunks. The memory and its arithmetic are f64. State: `m: [d_m, q]`.

use crate::error::Result;
use crate::mixer::lti::{alternating, Conv, LtiMemory, RECURRENT_BLOCK};
use crate::mixer::random::Rng;
use crate::mixer::{by_chunks, check_arg, MultiPath, Path, SequenceMixer};
use crate::ops::Linear;
use ndarray::{Array1, Array2, Array3, ArrayView2};

/// The LMU's continuous-time `A: [q, q]` and `B: [q]` for window `θ`.
pub fn lmu_matrices(order: usize, theta: f64) -> (Array2<f64>, Array1<f64>) {
    let a = Array2::from_shape_fn((order, order), |(i, j)| {
        let sign = if i < j { -1.0 } else { -alternating(i - j) };
        (2 * i + 1) as f64 / theta * sign
    });
    let b = Array1::from_shape_fn(order, |i| (2 * i + 1) as f64 * alternating(i) / theta);
    (a, b)
}

/// The LMU's weights (keras-lmu's roles).
#[derive(Clone, Debug)]
pub struct LmuParams {
    /// The input encoder `E`, `[d_m, C]`.
    pub encoder: Array2<f32>,
    /// `W_m`, `[C, d_m·q]` (column `copy·q + i` reads coefficient `i` of copy `copy`).
    pub memory_kernel: Array2<f32>,
    /// `W_x`, `[C, C]`.
    pub input_kernel: Array2<f32>,
    /// `b`, `[C]`.
    pub bias: Array1<f32>,
}

/// A feedforward LMU layer.
#[derive(Clone, Debug)]
pub struct Lmu {
    /// The window `θ` in steps.
    pub theta: f64,
    /// The memory (`Ā`, `B̄`).
    pub memory: LtiMemory,
    /// `E`, `[d_m, C]`.
    pub encoder: Linear,
    /// `W_m`, `[C, d_m·q]`.
    pub memory_kernel: Linear,
    /// `W_x`, `[C, C]`.
    pub input_kernel: Linear,
    /// `b`, `[C]`.
    pub bias: Array1<f32>,
}

/// State of an [`Lmu`]: the memories, `[d_m, q]`.
#[derive(Clone, Debug, PartialEq)]
pub struct LmuState {
    /// `m`.
    pub m: Array2<f64>,
}

impl Lmu {
    /// A layer of memory order `order` and window `theta` from its weights.
    ///
    /// # Errors
    /// [`Error::InputShape`](crate::Error::InputShape) naming `order`, `theta` or the first
    /// weight whose shape disagrees.
    pub fn new(order: usize, theta: f64, p: LmuParams) -> Result<Self> {
        const L: &str = "Lmu";
        check_arg(order > 0, L, "order", "positive", &[order])?;
        check_arg(
            theta > 0.0 && theta.is_finite(),
            L,
            "theta",
            "a positive window",
            &[],
        )?;
        let (dm, c) = p.encoder.dim();
        check_arg(
            dm > 0 && c > 0,
            L,
            "encoder",
            "[d_m, C], both positive",
            p.encoder.shape(),
        )?;
        check_arg(
            p.memory_kernel.dim() == (c, dm * order),
            L,
            "memory_kernel",
            format!("[C, d_m·q] = [{c}, {}]", dm * order),
            p.memory_kernel.shape(),
        )?;
        check_arg(
            p.input_kernel.dim() == (c, c),
            L,
            "input_kernel",
            format!("[C, C] = [{c}, {c}]"),
            p.input_kernel.shape(),
        )?;
        check_arg(
            p.bias.len() == c,
            L,
            "bias",
            format!("[C] = [{c}]"),
            p.bias.shape(),
        )?;
        let (a, b) = lmu_matrices(order, theta);
        Ok(Lmu {
            theta,
            memory: LtiMemory::zoh(&a, &b),
            encoder: Linear::from(p.encoder),
            memory_kernel: Linear::from(p.memory_kernel),
            input_kernel: Linear::from(p.input_kernel),
            bias: p.bias,
        })
    }

    /// A random layer of width `c`, `copies` memories of order `order` and window `theta` from
    /// `seed` (weights uniform with variance `1/in`).
    pub fn random(c: usize, copies: usize, order: usize, theta: f64, seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let p = LmuParams {
            encoder: rng.linear(copies, c).to_f32(),
            memory_kernel: rng.linear(c, copies * order).to_f32(),
            input_kernel: rng.linear(c, c).to_f32(),
            bias: rng.vector(c, -0.1, 0.1),
        };
        Lmu::new(order, theta, p).expect("random layers have consistent shapes")
    }

    /// The same layer convolving as `conv` on its parallel and chunkwise paths.
    pub fn with_conv(mut self, conv: Conv) -> Self {
        self.memory.conv = conv;
        self
    }

    /// Width `C`.
    pub fn width(&self) -> usize {
        self.encoder.dim().1
    }

    /// Runs the memory over `xs` with `memory` (one of [`LtiMemory`]'s paths) and the read-out.
    fn call(
        &self,
        xs: ArrayView2<f32>,
        state: &mut LmuState,
        memory: impl Fn(&LtiMemory, ArrayView2<f64>, &mut Array2<f64>) -> Array3<f64>,
    ) -> Array2<f32> {
        assert_eq!(xs.ncols(), self.width(), "Lmu: width");
        let u = self.encoder.forward(xs).mapv(f64::from);
        let m = memory(&self.memory, u.view(), &mut state.m);
        let t = xs.nrows();
        let flat = m
            .into_shape_with_order((t, state.m.len()))
            .expect("a new array is contiguous")
            .mapv(|v| v as f32);
        let mut y = self.memory_kernel.forward(flat.view());
        y += &self.input_kernel.forward(xs);
        y += &self.bias;
        y.mapv_inplace(f32::tanh);
        y
    }
}

impl SequenceMixer for Lmu {
    type State = LmuState;

    fn init_state(&self) -> LmuState {
        LmuState {
            m: Array2::zeros((self.encoder.dim().0, self.memory.order())),
        }
    }

    fn forward(&self, xs: ArrayView2<f32>, state: &mut LmuState) -> Array2<f32> {
        self.forward_path(xs, state, Path::Recurrent)
    }
}

impl MultiPath for Lmu {
    fn forward_path(&self, xs: ArrayView2<f32>, state: &mut LmuState, path: Path) -> Array2<f32> {
        match path {
            Path::Recurrent => by_chunks(xs, state, RECURRENT_BLOCK, self.width(), |x, s| {
                self.call(x, s, LtiMemory::recurrent)
            }),
            Path::Parallel => self.call(xs, state, LtiMemory::convolve),
            Path::Chunkwise(l) => by_chunks(xs, state, l, self.width(), |x, s| {
                self.call(x, s, LtiMemory::convolve)
            }),
        }
    }
}
