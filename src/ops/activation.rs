//! Elementwise activations, in place on any array.

use super::map_inplace;
use ndarray::{ArrayBase, DataMut, Dimension};

/// `σ(x) = 1 / (1 + e^{-x})`, in place.
pub fn sigmoid<S: DataMut<Elem = f32>, D: Dimension>(a: &mut ArrayBase<S, D>) {
    map_inplace(a, |x| 1.0 / (1.0 + (-x).exp()));
}

/// `silu(x) = x σ(x)`, in place.
pub fn silu<S: DataMut<Elem = f32>, D: Dimension>(a: &mut ArrayBase<S, D>) {
    map_inplace(a, |x| x / (1.0 + (-x).exp()));
}

/// `relu(x)²`, in place (the channel-mix activation).
pub fn relu_squared<S: DataMut<Elem = f32>, D: Dimension>(a: &mut ArrayBase<S, D>) {
    map_inplace(a, |x| {
        let r = x.max(0.0);
        r * r
    });
}
