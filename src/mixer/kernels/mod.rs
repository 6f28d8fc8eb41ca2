//! The state-update kernels the mixers share: the decayed outer-product recurrence in its
//! recurrent, parallel and chunkwise forms ([`outer_product`]), RWKV-5/6's WKV on it ([`wkv`]),
//! RWKV-7's diagonal-plus-rank-one recurrence ([`wkv7`]), and the numerics of the
//! time-invariant state spaces ([`lti`]: FFT convolution, matrix exponential, the Legendre
//! memories).

pub mod lti;
pub mod outer_product;
pub mod wkv;
pub mod wkv7;
