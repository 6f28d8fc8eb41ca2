//! HiPPO memories (Gu, Dao, Ermon, Rudra & Ré 2020; spec/mixers.md §12-13) as per-channel
//! state-space layers: each input channel `c` drives its own `N` Legendre coefficients, read out
//! by `y_t[c] = Σ_n W[c, n] s_t[c, n] + D[c] x_t[c]`.
//!
//! - [`Legt`] (translated Legendre, a sliding window of `θ` steps), in the orthonormal basis:
//!   `A_nk = −√(2n+1)√(2k+1)/θ · ((−1)^{n−k} if k ≤ n, 1 if k > n)`, `B_n = √(2n+1)(−1)^n/θ`,
//!   zero-order hold with step 1. It is the LMU's system ([`lmu`](crate::mixer::lmu)) after the
//!   change of basis `s = diag(√(2n+1))⁻¹ m`; time-invariant, so it has the memory's
//!   convolution paths ([`LtiMemory`]).
//! - [`Legs`] (scaled Legendre, the whole history):
//!   `A_nk = √(2n+1)√(2k+1) if n > k, n+1 if n = k, 0 if n < k`, `B_n = √(2n+1)`,
//!   `ds/dt = −A s / t + B f / t`, discretised with the bilinear step of the paper:
//!   `s_0 = (f_0, 0, …, 0)`, `s_k = (I + A/2k)⁻¹ [(I − A/2k) s_{k−1} + (B/k) f_k]`
//!   (a triangular solve, `O(N²)` per token). The system changes with every step, so there is
//!   no convolution (and no parallel or chunkwise form cheaper than composing the `N × N`
//!   affine maps, `O(N³)` each): the layer has its recurrent path only, and the state includes
//!   the step counter.

use crate::error::Result;
use crate::mixer::lti::{alternating, Conv, LtiMemory, RECURRENT_BLOCK};
use crate::mixer::random::Rng;
use crate::mixer::{by_chunks, check_arg, MultiPath, Path, SequenceMixer};
use ndarray::{Array1, Array2, Array3, ArrayView1, ArrayView2, Zip};

/// HiPPO-LegT's continuous-time `A: [N, N]` and `B: [N]` (orthonormal basis, window `θ`).
pub fn legt_matrices(n: usize, theta: f64) -> (Array2<f64>, Array1<f64>) {
    let r = |i: usize| ((2 * i + 1) as f64).sqrt();
    let a = Array2::from_shape_fn((n, n), |(i, k)| {
        let s = if k <= i { alternating(i - k) } else { 1.0 };
        -r(i) * r(k) / theta * s
    });
    (
        a,
        Array1::from_shape_fn(n, |i| r(i) * alternating(i) / theta),
    )
}

/// HiPPO-LegS's `A: [N, N]` (lower triangular) and `B: [N]`, for `ds/dt = −A s/t + B f/t`.
pub fn legs_matrices(n: usize) -> (Array2<f64>, Array1<f64>) {
    let r = |i: usize| ((2 * i + 1) as f64).sqrt();
    let a = Array2::from_shape_fn((n, n), |(i, k)| match i.cmp(&k) {
        std::cmp::Ordering::Greater => r(i) * r(k),
        std::cmp::Ordering::Equal => (i + 1) as f64,
        std::cmp::Ordering::Less => 0.0,
    });
    (a, Array1::from_shape_fn(n, r))
}

/// The per-channel read-out shared by both layers: `W: [C, N]` and `D: [C]`.
#[derive(Clone, Debug)]
pub struct HippoParams {
    /// `W`, `[C, N]`.
    pub w: Array2<f32>,
    /// `D`, `[C]`.
    pub d: Array1<f32>,
}

/// The read-out in f64.
#[derive(Clone, Debug)]
struct ReadOut {
    w: Array2<f64>,
    d: Array1<f64>,
}

impl ReadOut {
    fn new(layer: &str, p: HippoParams) -> Result<Self> {
        let (c, n) = p.w.dim();
        check_arg(
            c > 0 && n > 0,
            layer,
            "W",
            "[C, N], both positive",
            p.w.shape(),
        )?;
        check_arg(
            p.d.len() == c,
            layer,
            "D",
            format!("[C] = [{c}]"),
            p.d.shape(),
        )?;
        Ok(ReadOut {
            w: p.w.mapv(f64::from),
            d: p.d.mapv(f64::from),
        })
    }

    fn random(c: usize, n: usize, seed: u64) -> HippoParams {
        let mut rng = Rng::new(seed);
        HippoParams {
            w: rng.linear(c, n).to_f32(),
            d: rng.vector(c, -1.0, 1.0),
        }
    }

    /// `y[c] = Σ_n W[c, n] s[c, n] + D[c] x[c]` for one token.
    fn read(&self, s: ArrayView2<f64>, x: ArrayView1<f32>) -> Array1<f32> {
        Array1::from_shape_fn(self.d.len(), |c| {
            (self.w.row(c).dot(&s.row(c)) + self.d[c] * x[c] as f64) as f32
        })
    }

    /// [`ReadOut::read`] for every token of `s: [T, C, N]`.
    fn read_all(&self, s: &Array3<f64>, xs: ArrayView2<f32>) -> Array2<f32> {
        let mut y = Array2::zeros(xs.raw_dim());
        for (t, mut row) in y.rows_mut().into_iter().enumerate() {
            row.assign(&self.read(s.index_axis(ndarray::Axis(0), t), xs.row(t)));
        }
        y
    }
}

/// A HiPPO-LegT layer.
#[derive(Clone, Debug)]
pub struct Legt {
    /// The window `θ` in steps.
    pub theta: f64,
    /// The memory (`Ā`, `B̄`).
    pub memory: LtiMemory,
    read: ReadOut,
}

impl Legt {
    /// A layer of window `theta` from its read-out (`N` from `W`).
    ///
    /// # Errors
    /// [`Error::InputShape`](crate::Error::InputShape) naming `theta`, `W` or `D`.
    pub fn new(theta: f64, p: HippoParams) -> Result<Self> {
        check_arg(
            theta > 0.0 && theta.is_finite(),
            "Legt",
            "theta",
            "a positive window",
            &[],
        )?;
        let read = ReadOut::new("Legt", p)?;
        let (a, b) = legt_matrices(read.w.ncols(), theta);
        Ok(Legt {
            theta,
            memory: LtiMemory::zoh(&a, &b),
            read,
        })
    }

    /// A random layer of `c` channels with `n` coefficients each and window `theta`.
    pub fn random(c: usize, n: usize, theta: f64, seed: u64) -> Self {
        Legt::new(theta, ReadOut::random(c, n, seed)).expect("random layers have consistent shapes")
    }

    /// The same layer convolving as `conv` on its parallel and chunkwise paths.
    pub fn with_conv(mut self, conv: Conv) -> Self {
        self.memory.conv = conv;
        self
    }

    fn call(
        &self,
        xs: ArrayView2<f32>,
        state: &mut Array2<f64>,
        memory: impl Fn(&LtiMemory, ArrayView2<f64>, &mut Array2<f64>) -> Array3<f64>,
    ) -> Array2<f32> {
        assert_eq!(xs.ncols(), self.read.d.len(), "Legt: width");
        let s = memory(&self.memory, xs.mapv(f64::from).view(), state);
        self.read.read_all(&s, xs)
    }
}

impl SequenceMixer for Legt {
    /// The coefficients, `[C, N]`.
    type State = Array2<f64>;

    fn init_state(&self) -> Array2<f64> {
        Array2::zeros(self.read.w.raw_dim())
    }

    fn forward(&self, xs: ArrayView2<f32>, state: &mut Array2<f64>) -> Array2<f32> {
        self.forward_path(xs, state, Path::Recurrent)
    }
}

impl MultiPath for Legt {
    fn forward_path(
        &self,
        xs: ArrayView2<f32>,
        state: &mut Array2<f64>,
        path: Path,
    ) -> Array2<f32> {
        match path {
            Path::Recurrent => by_chunks(xs, state, RECURRENT_BLOCK, self.read.d.len(), |x, s| {
                self.call(x, s, LtiMemory::recurrent)
            }),
            Path::Parallel => self.call(xs, state, LtiMemory::convolve),
            Path::Chunkwise(l) => by_chunks(xs, state, l, self.read.d.len(), |x, s| {
                self.call(x, s, LtiMemory::convolve)
            }),
        }
    }
}

/// A HiPPO-LegS layer (recurrent only; see the module documentation).
#[derive(Clone, Debug)]
pub struct Legs {
    /// `A`, `[N, N]`, lower triangular.
    pub a: Array2<f64>,
    /// `B`, `[N]`.
    pub b: Array1<f64>,
    read: ReadOut,
}

/// State of a [`Legs`] layer.
#[derive(Clone, Debug, PartialEq)]
pub struct LegsState {
    /// The coefficients, `[C, N]`.
    pub s: Array2<f64>,
    /// Tokens seen: the index `k` of the next one.
    pub step: u64,
}

impl Legs {
    /// A layer from its read-out (`N` from `W`).
    ///
    /// # Errors
    /// [`Error::InputShape`](crate::Error::InputShape) naming `W` or `D`.
    pub fn new(p: HippoParams) -> Result<Self> {
        let read = ReadOut::new("Legs", p)?;
        let (a, b) = legs_matrices(read.w.ncols());
        Ok(Legs { a, b, read })
    }

    /// A random layer of `c` channels with `n` coefficients each.
    pub fn random(c: usize, n: usize, seed: u64) -> Self {
        Legs::new(ReadOut::random(c, n, seed)).expect("random layers have consistent shapes")
    }

    /// One bilinear step of one channel's coefficients `s` with input `f` at index `k`.
    fn advance(&self, s: &mut [f64], f: f64, k: u64) {
        if k == 0 {
            s.fill(0.0);
            s[0] = f;
            return;
        }
        let n = s.len();
        let h = 0.5 / k as f64;
        // rhs = (I − A/2k) s + (B/k) f, then forward substitution with I + A/2k (A lower
        // triangular, so both products only read s[..=i]; rhs is built in place from the top).
        let mut rhs = vec![0.0; n];
        for i in 0..n {
            let dot: f64 = (0..=i).map(|j| self.a[[i, j]] * s[j]).sum();
            rhs[i] = s[i] - h * dot + self.b[i] * f / k as f64;
        }
        for i in 0..n {
            let dot: f64 = (0..i).map(|j| self.a[[i, j]] * s[j]).sum();
            s[i] = (rhs[i] - h * dot) / (1.0 + h * self.a[[i, i]]);
        }
    }
}

impl SequenceMixer for Legs {
    type State = LegsState;

    fn init_state(&self) -> LegsState {
        LegsState {
            s: Array2::zeros(self.read.w.raw_dim()),
            step: 0,
        }
    }

    fn forward(&self, xs: ArrayView2<f32>, state: &mut LegsState) -> Array2<f32> {
        assert_eq!(xs.ncols(), self.read.d.len(), "Legs: width");
        let mut y = Array2::zeros(xs.raw_dim());
        for (x, mut out) in xs.rows().into_iter().zip(y.rows_mut()) {
            let k = state.step;
            Zip::from(state.s.rows_mut()).and(&x).for_each(|mut s, &f| {
                self.advance(s.as_slice_mut().expect("rows of a new array"), f as f64, k)
            });
            state.step += 1;
            out.assign(&self.read.read(state.s.view(), x));
        }
        y
    }
}
