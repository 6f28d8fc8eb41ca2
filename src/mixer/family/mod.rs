//! The related sequence mixers beside RWKV: linear attention and Performer, RetNet, GLA, AFT,
//! short causal convolutions, and the state-space layers (Mamba-1, Mamba-2, S4D, LMU,
//! HiPPO-LegT/LegS), and the recurrent networks (LSTM, GRU, minGRU, minLSTM).

pub mod aft;
pub mod gla;
pub mod hippo;
pub mod linear_attention;
pub mod lmu;
pub mod mamba;
pub mod mamba2;
pub mod min_rnn;
pub mod retention;
pub mod rnn;
pub mod s4d;
pub mod short_conv;
pub mod window_attention;
