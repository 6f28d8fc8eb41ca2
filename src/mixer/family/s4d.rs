//! S4D: a diagonal state space per channel (Gu et al. 2022, "On the Parameterization and
//! Initialization of Diagonal State Space Models"; spec/mixers.md §11), the SSM core of the S4D
//! layer (its pointwise activation and output projection are ordinary layers around it).
//!
//! Each of the `H` channels is an independent single-input single-output system with `M`
//! diagonal modes, `A_m = −exp(log_A_real_m) + i·A_imag_m` (complex, the conjugate pair implied
//! by the factor 2) or `A_m = −exp(log_A_real_m)` (real), `B = 1`, output weights `C_m`, skip
//! `D` and step `Δ = exp(log_dt)`. Zero-order hold:
//!
//! ```text
//! Ā_m = e^{Δ A_m},   B̄_m = (e^{Δ A_m} − 1) / A_m
//! x_t = Ā x_{t−1} + B̄ u_t,   y_t = f·Re(Σ_m C_m x_{t,m}) + D u_t      (f = 2 complex, 1 real)
//! ```
//!
//! It is time-invariant, so the sequence path is a convolution with the kernel
//! `K_ℓ = f·Re(Σ_m C_m B̄_m Ā_m^ℓ)` (a Vandermonde product; the powers `Ā^ℓ` by repeated
//! multiplication in f64, shared by the kernel, the carried state's read-out and its update):
//!
//! - recurrent: the definition (`O(M)` per token and channel);
//! - parallel: `y = K ∗ u + D u + f·Re(Σ_m C_m Ā_m^{t+1} x_{0,m})` with the carried state
//!   `x_0`, and `x_T = Ā^T x_0 + Σ_s Ā^{T−1−s} B̄ u_s`; the convolution direct below
//!   [`lti::FFT_MIN_LEN`] tokens and by FFT from there;
//! - chunkwise: the parallel form inside chunks, the state carried between them.
//!
//! The modes, the state and the arithmetic are f64 (the kernel's powers and the FFT need it);
//! inputs and outputs are f32. State: `x: [H, M]` complex.

use crate::error::Result;
use crate::mixer::lti::{self, Conv, C64};
use crate::mixer::random::Rng;
use crate::mixer::{by_chunks, check_arg, MultiPath, Path, SequenceMixer};
use ndarray::{Array1, Array2, Array3, ArrayView2, Axis, Zip};

/// The S4D tensors (the names of the reference `S4DKernel`).
#[derive(Clone, Debug)]
pub struct S4dParams {
    /// `log_dt`, `[H]`.
    pub log_dt: Array1<f32>,
    /// `log_A_real`, `[H, M]`: `Re A = −exp(log_A_real)`.
    pub log_a_real: Array2<f32>,
    /// `A_imag`, `[H, M]`; `None` for a real diagonal.
    pub a_imag: Option<Array2<f32>>,
    /// `C`, `[H, M, 2]` (real and imaginary parts) for a complex diagonal, `[H, M, 1]` for a
    /// real one.
    pub c: Array3<f32>,
    /// `D`, `[H]`.
    pub d: Array1<f32>,
}

/// One mode of one channel, discretised.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Mode {
    /// `Δ A`.
    dt_a: C64,
    /// `B̄ = (e^{ΔA} − 1) / A`.
    b_bar: C64,
    /// `f·C` (the factor 2 of a conjugate pair folded in).
    c: C64,
}

impl Mode {
    /// `Ā = e^{Δ A}`.
    fn a_bar(&self) -> C64 {
        self.dt_a.exp()
    }

    /// `Re(f C x)`: the mode's contribution to the output.
    fn read(&self, x: C64) -> f64 {
        (self.c * x).re
    }
}

/// An S4D layer.
#[derive(Clone, Debug)]
pub struct S4d {
    /// Channels `H`.
    pub channels: usize,
    /// Modes per channel `M`.
    pub modes: usize,
    /// Complex (conjugate pairs) or real diagonal.
    pub complex: bool,
    /// The skip `D`, `[H]`.
    pub d: Array1<f64>,
    /// `[H, M]`.
    table: Array2<Mode>,
    /// `Ā`, `[H, M]`.
    a_bar: Array2<C64>,
    /// How the parallel path convolves.
    pub conv: Conv,
}

/// State of an [`S4d`] layer: `x`, `[H, M]`.
#[derive(Clone, Debug, PartialEq)]
pub struct S4dState {
    /// The modes' states.
    pub x: Array2<C64>,
}

impl S4d {
    /// A layer from its tensors.
    ///
    /// # Errors
    /// [`Error::InputShape`](crate::Error::InputShape) naming the first tensor whose shape
    /// disagrees.
    pub fn new(p: S4dParams) -> Result<Self> {
        const L: &str = "S4d";
        let (h, m) = p.log_a_real.dim();
        check_arg(
            h > 0 && m > 0,
            L,
            "log_A_real",
            "[H, M], both positive",
            p.log_a_real.shape(),
        )?;
        check_arg(
            p.log_dt.len() == h,
            L,
            "log_dt",
            format!("[H] = [{h}]"),
            p.log_dt.shape(),
        )?;
        check_arg(p.d.len() == h, L, "D", format!("[H] = [{h}]"), p.d.shape())?;
        if let Some(im) = &p.a_imag {
            check_arg(
                im.dim() == (h, m),
                L,
                "A_imag",
                format!("[H, M] = [{h}, {m}]"),
                im.shape(),
            )?;
        }
        let complex = p.a_imag.is_some();
        let parts = if complex { 2 } else { 1 };
        check_arg(
            p.c.dim() == (h, m, parts),
            L,
            "C",
            format!("[H, M, {parts}] = [{h}, {m}, {parts}]"),
            p.c.shape(),
        )?;
        let f = if complex { 2.0 } else { 1.0 };
        let table = Array2::from_shape_fn((h, m), |(i, j)| {
            let dt = (p.log_dt[i] as f64).exp();
            let a = C64::new(
                -(p.log_a_real[[i, j]] as f64).exp(),
                p.a_imag.as_ref().map_or(0.0, |im| im[[i, j]] as f64),
            );
            let dt_a = a.scale(dt);
            let c = C64::new(
                p.c[[i, j, 0]] as f64,
                if complex { p.c[[i, j, 1]] as f64 } else { 0.0 },
            );
            Mode {
                dt_a,
                b_bar: dt_a.exp_m1() / a,
                c: c.scale(f),
            }
        });
        Ok(S4d {
            channels: h,
            modes: m,
            complex,
            d: p.d.mapv(f64::from),
            a_bar: table.mapv(|mode| mode.a_bar()),
            table,
            conv: Conv::Auto,
        })
    }

    /// A random layer of `channels` channels and `modes` modes from `seed`, initialised as the
    /// paper: S4D-Lin `A_m = −1/2 + iπm` (complex) or S4D-Real `A_m = −(m + 1)` (real),
    /// `log Δ` uniform in `[ln 1e−3, ln 1e−1]`, `C` normal with variance 1/2 per part, `D`
    /// normal.
    pub fn random(channels: usize, modes: usize, complex: bool, seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let (h, m) = (channels, modes);
        let parts = if complex { 2 } else { 1 };
        let p = S4dParams {
            log_dt: rng.vector(h, (1e-3f32).ln(), (1e-1f32).ln()),
            log_a_real: Array2::from_shape_fn((h, m), |(_, j)| {
                if complex {
                    0.5f32.ln()
                } else {
                    ((j + 1) as f32).ln()
                }
            }),
            a_imag: complex
                .then(|| Array2::from_shape_fn((h, m), |(_, j)| std::f32::consts::PI * j as f32)),
            c: Array3::from_shape_simple_fn((h, m, parts), || {
                (rng.normal() * std::f64::consts::FRAC_1_SQRT_2) as f32
            }),
            d: Array1::from_shape_simple_fn(h, || rng.normal() as f32),
        };
        S4d::new(p).expect("random layers have consistent shapes")
    }

    /// The same layer convolving as `conv` on its parallel and chunkwise paths.
    pub fn with_conv(self, conv: Conv) -> Self {
        S4d { conv, ..self }
    }

    /// The kernel `K_ℓ`, `ℓ < len`, `[len, H]`.
    pub fn kernel(&self, len: usize) -> Array2<f64> {
        let mut k = Array2::zeros((len, self.channels));
        for (h, mut col) in k.columns_mut().into_iter().enumerate() {
            col.assign(&self.channel_kernel(h, &self.powers(h, len), len));
        }
        k
    }

    /// `Ā_m^ℓ` for every mode of channel `h` and `ℓ ≤ len`, `[M, len + 1]`, by repeated
    /// multiplication (relative error about `ℓ` units of f64 roundoff).
    fn powers(&self, h: usize, len: usize) -> Array2<C64> {
        let mut pw = Array2::from_elem((self.modes, len + 1), C64::new(1.0, 0.0));
        for (mut row, &a) in pw.rows_mut().into_iter().zip(self.a_bar.row(h)) {
            for l in 1..=len {
                row[l] = row[l - 1] * a;
            }
        }
        pw
    }

    /// One channel's `K_ℓ = f·Re(Σ_m C_m B̄_m Ā_m^ℓ)`, `ℓ < len`, from its powers.
    fn channel_kernel(&self, h: usize, pw: &Array2<C64>, len: usize) -> Array1<f64> {
        Array1::from_shape_fn(len, |l| {
            Zip::from(self.table.row(h))
                .and(pw.column(l))
                .fold(0.0, |acc, mode, &p| acc + mode.read(mode.b_bar * p))
        })
    }

    /// The parallel form of one call from the carried state.
    fn convolve(&self, xs: ArrayView2<f32>, state: &mut S4dState) -> Array2<f32> {
        assert_eq!(xs.ncols(), self.channels, "S4d: width");
        let t = xs.nrows();
        let u = xs.mapv(f64::from);
        let mut y = Array2::<f32>::zeros(xs.raw_dim());
        for h in 0..self.channels {
            let modes = self.table.row(h);
            let pw = self.powers(h, t);
            let kernel = self.channel_kernel(h, &pw, t);
            let mut col = lti::causal_conv(kernel.view(), u.column(h), self.conv);
            // The carried state's free response: f·Re(Σ_m C_m Ā_m^{t+1} x_{0,m}).
            let x0 = state.x.row(h);
            for (i, y) in col.iter_mut().enumerate() {
                let carried: f64 = Zip::from(&modes)
                    .and(&x0)
                    .and(pw.column(i + 1))
                    .fold(0.0, |acc, mode, &x, &p| acc + mode.read(p * x));
                *y += carried + self.d[h] * u[[i, h]];
            }
            y.column_mut(h).assign(&col.mapv(|v| v as f32));
            // x_T = Ā^T x_0 + Σ_s Ā^{T−1−s} B̄ u_s.
            Zip::from(state.x.row_mut(h))
                .and(&modes)
                .and(pw.rows())
                .for_each(|x, mode, p| {
                    let mut acc = p[t] * *x;
                    for s in 0..t {
                        acc += mode.b_bar * p[t - 1 - s].scale(u[[s, h]]);
                    }
                    *x = acc;
                });
        }
        y
    }

    /// The recurrence over one call.
    fn recurrent(&self, xs: ArrayView2<f32>, state: &mut S4dState) -> Array2<f32> {
        assert_eq!(xs.ncols(), self.channels, "S4d: width");
        let mut y = Array2::zeros(xs.raw_dim());
        for (xr, mut yr) in xs.rows().into_iter().zip(y.rows_mut()) {
            for h in 0..self.channels {
                let u = xr[h] as f64;
                let mut acc = self.d[h] * u;
                Zip::from(state.x.row_mut(h))
                    .and(self.table.row(h))
                    .and(self.a_bar.row(h))
                    .for_each(|x, mode, &a| {
                        *x = a * *x + mode.b_bar.scale(u);
                        acc += mode.read(*x);
                    });
                yr[h] = acc as f32;
            }
        }
        y
    }
}

impl SequenceMixer for S4d {
    type State = S4dState;

    fn init_state(&self) -> S4dState {
        S4dState {
            x: Array2::from_elem((self.channels, self.modes), C64::default()),
        }
    }

    /// The recurrence: on a CPU it is the fastest path at every length (`O(M)` per token and
    /// channel against the convolution's kernel, FFT and carried-state terms).
    fn forward(&self, xs: ArrayView2<f32>, state: &mut S4dState) -> Array2<f32> {
        self.recurrent(xs, state)
    }
}

impl MultiPath for S4d {
    fn forward_path(&self, xs: ArrayView2<f32>, state: &mut S4dState, path: Path) -> Array2<f32> {
        match path {
            Path::Recurrent => self.recurrent(xs, state),
            Path::Parallel => self.convolve(xs, state),
            Path::Chunkwise(l) => {
                by_chunks(xs, state, l, self.channels, |x, s| self.convolve(x, s))
            }
        }
    }
}

impl S4dState {
    /// The real and imaginary parts, `[H, M, 2]`.
    pub fn parts(&self) -> Array3<f64> {
        let (h, m) = self.x.dim();
        let mut out = Array3::zeros((h, m, 2));
        Zip::from(out.index_axis_mut(Axis(2), 0))
            .and(&self.x)
            .for_each(|o, x| *o = x.re);
        Zip::from(out.index_axis_mut(Axis(2), 1))
            .and(&self.x)
            .for_each(|o, x| *o = x.im);
        out
    }
}
