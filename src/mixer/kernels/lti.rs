//! Numerics of the linear time-invariant state-space mixers ([`s4d`](crate::mixer::s4d),
//! [`lmu`](crate::mixer::lmu), [`hippo`](crate::mixer::hippo)), all in f64: a radix-2 FFT, the long causal
//! convolution of a sequence with an impulse response (direct and FFT), the matrix exponential
//! (scaling and squaring with a Padé approximant) and the zero-order-hold discretisation built
//! on it.

use ndarray::{s, Array1, Array2, Array3, ArrayView1, ArrayView2, Zip};
use std::f64::consts::PI;

/// `(−1)^i`.
pub fn alternating(i: usize) -> f64 {
    if i.is_multiple_of(2) {
        1.0
    } else {
        -1.0
    }
}

/// Tokens per block of an LTI layer's recurrent path: the memories of a block (`[T, M, q]`)
/// are read out before the next block runs, so long calls do not hold every memory at once.
pub const RECURRENT_BLOCK: usize = 256;

/// How a long causal convolution is evaluated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Conv {
    /// `y_t = Σ_{ℓ≤t} k_ℓ u_{t−ℓ}` term by term, `O(T²)`.
    Direct,
    /// Through a zero-padded FFT of length `≥ 2T`, `O(T log T)`.
    Fft,
    /// `Fft` from [`FFT_MIN_LEN`] tokens on, `Direct` below.
    Auto,
}

/// The length from which [`Conv::Auto`] uses the FFT.
pub const FFT_MIN_LEN: usize = 64;

/// In-place iterative radix-2 FFT of `(re, im)` (length a power of two):
/// `X_k = Σ_j x_j e^{∓2πi jk/n}` (`−` forward, `+` inverse; the inverse is not scaled).
///
/// # Panics
/// If the lengths differ or are not a power of two.
pub fn fft(re: &mut [f64], im: &mut [f64], inverse: bool) {
    let n = re.len();
    assert_eq!(
        im.len(),
        n,
        "fft: real and imaginary parts differ in length"
    );
    assert!(n.is_power_of_two(), "fft: length must be a power of two");
    // Bit-reversal permutation.
    let mut j = 0;
    for i in 1..n {
        let mut bit = n >> 1;
        while j & bit != 0 {
            j ^= bit;
            bit >>= 1;
        }
        j |= bit;
        if i < j {
            re.swap(i, j);
            im.swap(i, j);
        }
    }
    // Twiddles e^{∓2πik/n}, k < n/2; the stage of length `len` reads every (n/len)-th.
    let sign = if inverse { 1.0 } else { -1.0 };
    let twiddles: Vec<(f64, f64)> = (0..n / 2)
        .map(|k| {
            let a = sign * 2.0 * PI * k as f64 / n as f64;
            (a.cos(), a.sin())
        })
        .collect();
    let mut len = 2;
    while len <= n {
        let stride = n / len;
        for start in (0..n).step_by(len) {
            for k in 0..len / 2 {
                let (wr, wi) = twiddles[k * stride];
                let (a, b) = (start + k, start + k + len / 2);
                let (xr, xi) = (re[b] * wr - im[b] * wi, re[b] * wi + im[b] * wr);
                re[b] = re[a] - xr;
                im[b] = im[a] - xi;
                re[a] += xr;
                im[a] += xi;
            }
        }
        len <<= 1;
    }
}

/// The causal convolution `y_t = Σ_{ℓ=0}^{t} k_ℓ u_{t−ℓ}` of one sequence with an impulse
/// response of at least `T` taps.
///
/// # Shapes
/// `kernel: [≥ T]`, `u: [T]` → `[T]`.
///
/// # Panics
/// If the kernel is shorter than `u`.
pub fn causal_conv(kernel: ArrayView1<f64>, u: ArrayView1<f64>, how: Conv) -> Array1<f64> {
    let t = u.len();
    let bank = causal_conv_bank(
        kernel.insert_axis(ndarray::Axis(1)),
        u.insert_axis(ndarray::Axis(1)),
        how,
    );
    bank.into_shape_with_order(t).expect("[T, 1, 1]")
}

/// Every column of `u` convolved causally with every column of `kernels`:
/// `y[t, j, k] = Σ_{ℓ≤t} kernels[ℓ, k] u[t − ℓ, j]`. With the FFT each input and each kernel is
/// transformed once, and each pair costs one product and one inverse transform.
///
/// # Shapes
/// `kernels: [≥ T, K]`, `u: [T, M]` → `[T, M, K]`.
///
/// # Panics
/// If the kernels are shorter than `u`.
pub fn causal_conv_bank(kernels: ArrayView2<f64>, u: ArrayView2<f64>, how: Conv) -> Array3<f64> {
    let (t, m) = u.dim();
    let kk = kernels.ncols();
    assert!(
        kernels.nrows() >= t,
        "lti::causal_conv_bank: kernels shorter than the input"
    );
    let mut y = Array3::zeros((t, m, kk));
    let fft_it = match how {
        Conv::Direct => false,
        Conv::Fft => true,
        Conv::Auto => t >= FFT_MIN_LEN,
    };
    if !fft_it {
        for ((i, j, k), y) in y.indexed_iter_mut() {
            *y = (0..=i).map(|l| kernels[[l, k]] * u[[i - l, j]]).sum();
        }
        return y;
    }
    let n = (2 * t).next_power_of_two();
    let spectrum = |col: ArrayView1<f64>| {
        let (mut re, mut im) = (vec![0.0; n], vec![0.0; n]);
        for i in 0..t {
            re[i] = col[i];
        }
        fft(&mut re, &mut im, false);
        (re, im)
    };
    let ks: Vec<_> = kernels.columns().into_iter().map(spectrum).collect();
    let (mut re, mut im) = (vec![0.0; n], vec![0.0; n]);
    for (j, uc) in u.columns().into_iter().enumerate() {
        let (ur, ui) = spectrum(uc);
        for (k, (kr, ki)) in ks.iter().enumerate() {
            for i in 0..n {
                re[i] = kr[i] * ur[i] - ki[i] * ui[i];
                im[i] = kr[i] * ui[i] + ki[i] * ur[i];
            }
            fft(&mut re, &mut im, true);
            for i in 0..t {
                y[[i, j, k]] = re[i] / n as f64;
            }
        }
    }
    y
}

/// `x` solving `a x = b` by Gaussian elimination with partial pivoting.
///
/// # Panics
/// If `a` is singular.
pub fn solve(a: &Array2<f64>, b: &Array2<f64>) -> Array2<f64> {
    let n = a.nrows();
    let mut m = a.clone();
    let mut x = b.clone();
    for col in 0..n {
        let piv = (col..n)
            .max_by(|&i, &j| m[[i, col]].abs().total_cmp(&m[[j, col]].abs()))
            .expect("a non-empty column");
        assert!(m[[piv, col]] != 0.0, "lti::solve: singular matrix");
        for k in 0..n {
            m.swap([col, k], [piv, k]);
        }
        for k in 0..x.ncols() {
            x.swap([col, k], [piv, k]);
        }
        for i in col + 1..n {
            let f = m[[i, col]] / m[[col, col]];
            if f != 0.0 {
                for k in col..n {
                    m[[i, k]] -= f * m[[col, k]];
                }
                for k in 0..x.ncols() {
                    x[[i, k]] -= f * x[[col, k]];
                }
            }
        }
    }
    for col in (0..n).rev() {
        for k in 0..x.ncols() {
            let s: f64 = (col + 1..n).map(|j| m[[col, j]] * x[[j, k]]).sum();
            x[[col, k]] = (x[[col, k]] - s) / m[[col, col]];
        }
    }
    x
}

/// `e^{a}` by scaling and squaring with the diagonal Padé approximant of degree 8
/// (`‖a / 2^s‖₁ ≤ 1/2`; relative error near f64's unit roundoff).
///
/// # Panics
/// If `a` is not square.
pub fn expm(a: &Array2<f64>) -> Array2<f64> {
    let n = a.nrows();
    assert_eq!(a.ncols(), n, "lti::expm: square matrix");
    let norm = (0..n)
        .map(|j| a.column(j).iter().map(|v| v.abs()).sum::<f64>())
        .fold(0.0, f64::max);
    let s = if norm > 0.5 {
        (norm / 0.5).log2().ceil() as i32
    } else {
        0
    };
    let x = a / 2f64.powi(s);
    // Padé [8/8]: c_k = (2q − k)! q! / ((2q)! k! (q − k)!).
    const Q: usize = 8;
    let mut c = [1.0f64; Q + 1];
    for k in 1..=Q {
        c[k] = c[k - 1] * (Q + 1 - k) as f64 / (k * (2 * Q + 1 - k)) as f64;
    }
    let eye = Array2::<f64>::eye(n);
    let (mut num, mut den) = (eye.clone(), eye.clone());
    let mut p = eye;
    for (k, &ck) in c.iter().enumerate().skip(1) {
        p = p.dot(&x);
        num = num + &p * ck;
        den = den + &p * (if k % 2 == 1 { -ck } else { ck });
    }
    let mut e = solve(&den, &num);
    for _ in 0..s {
        e = e.dot(&e);
    }
    e
}

/// Zero-order hold with step 1: `Ā = e^{A}`, `B̄ = A^{−1}(e^{A} − I) B`, both from one matrix
/// exponential, `exp([[A, B], [0, 0]]) = [[Ā, B̄], [0, 1]]` (no inverse of `A` needed).
///
/// # Shapes
/// `a: [N, N]`, `b: [N]` → `([N, N], [N])`.
pub fn zoh(a: &Array2<f64>, b: &Array1<f64>) -> (Array2<f64>, Array1<f64>) {
    let n = a.nrows();
    let mut m = Array2::zeros((n + 1, n + 1));
    m.slice_mut(s![..n, ..n]).assign(a);
    m.slice_mut(s![..n, n]).assign(b);
    let e = expm(&m);
    (
        e.slice(s![..n, ..n]).to_owned(),
        e.slice(s![..n, n]).to_owned(),
    )
}

/// A complex number in f64 (the diagonal state spaces' modes).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct C64 {
    /// Real part.
    pub re: f64,
    /// Imaginary part.
    pub im: f64,
}

impl C64 {
    /// `re + i·im`.
    pub const fn new(re: f64, im: f64) -> Self {
        C64 { re, im }
    }

    /// `e^{z}`.
    pub fn exp(self) -> Self {
        let m = self.re.exp();
        C64::new(m * self.im.cos(), m * self.im.sin())
    }

    /// `e^{z} − 1`, accurate for small `|z|`.
    pub fn exp_m1(self) -> Self {
        // e^{a+ib} − 1 = (e^a − 1) cos b + (cos b − 1) + i e^a sin b, cos b − 1 = −2 sin²(b/2).
        let h = (self.im / 2.0).sin();
        C64::new(
            self.re.exp_m1() * self.im.cos() - 2.0 * h * h,
            self.re.exp() * self.im.sin(),
        )
    }

    /// `z · s` for a real `s`.
    pub fn scale(self, s: f64) -> Self {
        C64::new(self.re * s, self.im * s)
    }
}

impl std::ops::Add for C64 {
    type Output = C64;
    fn add(self, o: C64) -> C64 {
        C64::new(self.re + o.re, self.im + o.im)
    }
}

impl std::ops::AddAssign for C64 {
    fn add_assign(&mut self, o: C64) {
        *self = *self + o;
    }
}

impl std::ops::Mul for C64 {
    type Output = C64;
    fn mul(self, o: C64) -> C64 {
        C64::new(
            self.re * o.re - self.im * o.im,
            self.re * o.im + self.im * o.re,
        )
    }
}

impl std::ops::Div for C64 {
    type Output = C64;
    fn div(self, o: C64) -> C64 {
        let d = o.re * o.re + o.im * o.im;
        C64::new(
            (self.re * o.re + self.im * o.im) / d,
            (self.im * o.re - self.re * o.im) / d,
        )
    }
}

/// A linear time-invariant memory of order `q` driven by scalar inputs (LMU, HiPPO-LegT):
/// `m_t = Ā m_{t−1} + B̄ u_t`, run on `M` independent copies at once, with its impulse response
/// `H_ℓ = Ā^ℓ B̄` for the convolution paths.
#[derive(Clone, Debug)]
pub struct LtiMemory {
    /// `Ā`, `[q, q]`.
    pub a_bar: Array2<f64>,
    /// `B̄`, `[q]`.
    pub b_bar: Array1<f64>,
    /// How [`LtiMemory::convolve`] convolves.
    pub conv: Conv,
}

impl LtiMemory {
    /// The zero-order-hold discretisation (step 1) of `dm/dt = A m + B u`.
    pub fn zoh(a: &Array2<f64>, b: &Array1<f64>) -> Self {
        let (a_bar, b_bar) = zoh(a, b);
        LtiMemory {
            a_bar,
            b_bar,
            conv: Conv::Auto,
        }
    }

    /// The order `q`.
    pub fn order(&self) -> usize {
        self.b_bar.len()
    }

    /// `m ← Ā m + B̄ u` for every copy at once (rows of `m: [M, q]`, `u: [M]`; one matrix
    /// product `m Āᵀ`, keras-lmu's row convention).
    fn step(&self, m: &mut Array2<f64>, u: Option<ArrayView1<f64>>) {
        let mut next = m.dot(&self.a_bar.t());
        if let Some(u) = u {
            Zip::from(next.rows_mut())
                .and(&u)
                .for_each(|mut row, &u| row.scaled_add(u, &self.b_bar));
        }
        *m = next;
    }

    /// The impulse response `H_ℓ = Ā^ℓ B̄` for `ℓ < len`, `[len, q]`.
    pub fn impulse(&self, len: usize) -> Array2<f64> {
        let mut h = Array2::zeros((len, self.order()));
        let mut m = Array2::zeros((1, self.order()));
        let one = Array1::ones(1);
        for (l, mut row) in h.rows_mut().into_iter().enumerate() {
            self.step(&mut m, (l == 0).then(|| one.view()));
            row.assign(&m.row(0));
        }
        h
    }

    /// Recurrent path: the memories after each input.
    ///
    /// # Shapes
    /// `u: [T, M]`, `state: [M, q]` → `[T, M, q]`.
    pub fn recurrent(&self, u: ArrayView2<f64>, state: &mut Array2<f64>) -> Array3<f64> {
        let (t, copies) = u.dim();
        let mut out = Array3::zeros((t, copies, self.order()));
        for (i, mut o) in out.outer_iter_mut().enumerate() {
            self.step(state, Some(u.row(i)));
            o.assign(state);
        }
        out
    }

    /// Convolution path: `m_t = Σ_{ℓ≤t} H_ℓ u_{t−ℓ} + Ā^{t+1} m_0`, the forced response by
    /// causal convolution with the impulse response and the free response of the carried state
    /// `m_0` by the recurrence without input (skipped for a zero state).
    ///
    /// # Shapes
    /// As [`LtiMemory::recurrent`].
    pub fn convolve(&self, u: ArrayView2<f64>, state: &mut Array2<f64>) -> Array3<f64> {
        let t = u.dim().0;
        let mut out = causal_conv_bank(self.impulse(t).view(), u, self.conv);
        if t == 0 {
            return out;
        }
        if state.iter().any(|&v| v != 0.0) {
            for mut o in out.outer_iter_mut() {
                self.step(state, None);
                o += &*state;
            }
        }
        state.assign(&out.index_axis(ndarray::Axis(0), t - 1));
        out
    }
}
