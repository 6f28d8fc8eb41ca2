//! Choosing the next token from logits, with the rules of the official RWKV `PIPELINE`
//! (`rwkv/utils.py` of the `rwkv` Python package), built from parts that can be used and tested
//! on their own.
//!
//! One generation step, in the official order:
//!
//! 1. copy the logits `ℓ ∈ R^V` and set `ℓ_n = −∞` for each banned token ([`ban_tokens`]);
//! 2. subtract the repetition penalty of every token seen so far ([`RepetitionPenalty`]):
//!    `ℓ_n −= α_presence + c_n · α_frequency`;
//! 3. draw a token with [`sample_logits`]:
//!    - `p = softmax(ℓ)` in f32;
//!    - top-p: sort `p` descending, `cutoff` = the first sorted `p` at which the running sum
//!      reaches `top_p`, zero every `p_i < cutoff` (ties with the cutoff are kept);
//!    - top-k: if `0 < top_k < V`, zero all but the `top_k` largest;
//!    - temperature, **after** truncation and on probabilities: `p_i ← p_i^(1/T)`;
//!    - renormalise and draw;
//!    - `T = 0` is greedy: the argmax of `ℓ` (the lowest id among equal maxima; the official
//!      code keeps every token tied at the maximum probability and draws among them);
//! 4. stop if the token is a stop token (it is not recorded);
//! 5. otherwise record it: every count decays, `c_n ← α_decay · c_n`, then the new token's
//!    count grows by its [`occurrence_weight`] (0 for the text of `" \t0123456789"`, else 1).
//!
//! [`Sampler`] runs steps 1–3 ([`Sampler::sample`]) and 5 ([`Sampler::accept`]) with a
//! [`SamplerConfig`] (the official defaults) and a seeded [`Rng`], so a seed makes a run
//! reproducible. Stop strings are checked on the generated text with [`find_stop_string`],
//! [`ends_with_stop_string`] and [`partial_stop_len`].
//!
//! # Example
//!
//! ```
//! use ndarray::array;
//! use tokenshift::sample::{Sampler, SamplerConfig};
//!
//! # fn main() -> tokenshift::Result<()> {
//! let config = SamplerConfig { top_p: 0.9, token_stop: vec![0], ..SamplerConfig::default() };
//! let mut sampler = Sampler::new(config, 42)?;
//! let logits = array![0.0f32, 3.0, 2.5, -1.0];
//! let token = sampler.sample(logits.view())?;
//! assert!(token == 1 || token == 2); // top-p 0.9 keeps the two most likely tokens
//! if !sampler.is_stop_token(token) {
//!     sampler.accept(token, b"x"); // the token's bytes decide its repetition weight
//! }
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]

use crate::error::{Error, Result};
use ndarray::{ArrayView1, ArrayViewMut1};
use std::collections::HashMap;

/// A small seeded pseudo-random generator (xoshiro256**, seeded through SplitMix64).
///
/// Not cryptographic. The same seed always gives the same sequence, on every platform.
///
/// ```
/// use tokenshift::sample::Rng;
/// let (mut a, mut b) = (Rng::new(7), Rng::new(7));
/// assert_eq!(a.next_u64(), b.next_u64());
/// let x = a.next_f64();
/// assert!((0.0..1.0).contains(&x));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    /// A generator whose state is four outputs of SplitMix64 started at `seed`.
    pub fn new(seed: u64) -> Self {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        Rng {
            s: [next(), next(), next(), next()],
        }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// A uniform draw from `[0, 1)` with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// Settings of the official `PIPELINE_ARGS`, plus stop strings.
///
/// Floating-point settings are `f64` like the Python floats they mirror: the penalty arithmetic
/// is done in `f64` and the result subtracted from the f32 logits, `top_p` is compared with the
/// f32 running sum as `top_p as f32`, and the exponent `1/T` is taken in f64 (so it stays
/// positive for every finite `T > 0`) and never applied to a zero probability.
///
/// `Default` gives the official defaults: temperature 1.0, top_p 0.85, top_k 0 (off),
/// alpha_frequency 0.2, alpha_presence 0.2, alpha_decay 0.996, nothing banned, no stop tokens
/// or strings.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplerConfig {
    /// `T >= 0`: probabilities are raised to `1/T` after truncation; 0 means greedy.
    pub temperature: f64,
    /// Nucleus mass in `[0, 1]`: keep the most likely tokens until their running sum reaches
    /// it (0 keeps only the most likely token and its ties; 1 keeps all).
    pub top_p: f64,
    /// Keep only the `top_k` most likely tokens; 0 (or `>= V`) turns it off.
    pub top_k: usize,
    /// Penalty per unit of (decayed) count of a token already generated.
    pub alpha_frequency: f64,
    /// Penalty for any token already generated, whatever its count.
    pub alpha_presence: f64,
    /// Factor applied to every count after each generated token.
    pub alpha_decay: f64,
    /// Tokens that are never drawn (their logit is set to −∞).
    pub token_ban: Vec<u32>,
    /// Tokens that end generation when drawn (they are not part of the output).
    pub token_stop: Vec<u32>,
    /// Texts that end generation when the generated text contains them (empty strings are
    /// ignored).
    pub stop_strings: Vec<String>,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig {
            temperature: 1.0,
            top_p: 0.85,
            top_k: 0,
            alpha_frequency: 0.2,
            alpha_presence: 0.2,
            alpha_decay: 0.996,
            token_ban: Vec::new(),
            token_stop: Vec::new(),
            stop_strings: Vec::new(),
        }
    }
}

impl SamplerConfig {
    /// Greedy decoding (temperature 0) without repetition penalties.
    pub fn greedy() -> Self {
        SamplerConfig {
            temperature: 0.0,
            alpha_frequency: 0.0,
            alpha_presence: 0.0,
            alpha_decay: 1.0,
            ..SamplerConfig::default()
        }
    }

    /// Checks the numeric settings.
    ///
    /// # Errors
    /// [`Error::Sample`] if the temperature is negative or not finite, `top_p` is outside
    /// `[0, 1]`, or a penalty setting is not finite.
    pub fn validate(&self) -> Result<()> {
        check_temperature(self.temperature)?;
        check_top_p(self.top_p)?;
        for (name, value) in [
            ("alpha_frequency", self.alpha_frequency),
            ("alpha_presence", self.alpha_presence),
            ("alpha_decay", self.alpha_decay),
        ] {
            if !value.is_finite() {
                return Err(Error::Sample(format!("{name} = {value} is not finite")));
            }
        }
        Ok(())
    }

    /// Whether `token` is one of [`SamplerConfig::token_stop`].
    pub fn is_stop_token(&self, token: u32) -> bool {
        self.token_stop.contains(&token)
    }

    /// [`find_stop_string`] with this configuration's stop strings.
    pub fn find_stop_string(&self, text: &str) -> Option<(usize, usize)> {
        find_stop_string(text, &self.stop_strings)
    }
}

fn check_temperature(temperature: f64) -> Result<()> {
    if temperature.is_finite() && temperature >= 0.0 {
        Ok(())
    } else {
        Err(Error::Sample(format!(
            "temperature = {temperature}; it must be finite and >= 0"
        )))
    }
}

fn check_top_p(top_p: f64) -> Result<()> {
    if (0.0..=1.0).contains(&top_p) {
        Ok(())
    } else {
        Err(Error::Sample(format!(
            "top_p = {top_p}; it must be in [0, 1]"
        )))
    }
}

/// Sets the logit of every token in `ban` to −∞.
///
/// # Errors
/// [`Error::TokenOutOfRange`] if a banned id is not below `logits.len()` (nothing is changed
/// then).
pub fn ban_tokens(mut logits: ArrayViewMut1<f32>, ban: &[u32]) -> Result<()> {
    let vocab = logits.len();
    if let Some(&token) = ban.iter().find(|&&t| t as usize >= vocab) {
        return Err(Error::TokenOutOfRange { token, vocab });
    }
    for &t in ban {
        logits[t as usize] = f32::NEG_INFINITY;
    }
    Ok(())
}

/// The official count increment of a generated token, from its bytes: 0 if its text is a
/// substring of `" \t0123456789"` (a space, a tab, a digit, or a run of consecutive ones like
/// `"12"`), else 1.
///
/// The official code tests `decode([token]) in ' \t0123456789'`, a substring test on the decoded
/// text, where a token that is not valid UTF-8 on its own decodes to `"\u{FFFD}"` (weight 1).
/// The token still gets an entry, so the presence penalty applies to it.
pub fn occurrence_weight(token_bytes: &[u8]) -> f64 {
    match std::str::from_utf8(token_bytes) {
        Ok(text) if " \t0123456789".contains(text) => 0.0,
        _ => 1.0,
    }
}

/// The official presence/frequency repetition penalty with decaying counts.
///
/// Holds a count `c_n` for every token generated so far. [`apply`] subtracts
/// `α_presence + c_n · α_frequency` (computed in f64, then subtracted as an f32) from the logit
/// of each such token; [`record`] decays all counts by `α_decay` and then adds the new token's
/// weight (creating its entry with that weight if it is new).
///
/// [`apply`]: RepetitionPenalty::apply
/// [`record`]: RepetitionPenalty::record
///
/// ```
/// use ndarray::array;
/// use tokenshift::sample::RepetitionPenalty;
///
/// let mut penalty = RepetitionPenalty::new(0.2, 0.2, 0.5);
/// penalty.record(1, b"a"); // c_1 = 1
/// penalty.record(1, b"a"); // c_1 = 0.5·1 + 1 = 1.5
/// let mut logits = array![0.0f32, 1.0, 2.0];
/// penalty.apply(logits.view_mut()).unwrap();
/// assert_eq!(logits[1], 1.0 - (0.2 + 1.5 * 0.2) as f32);
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RepetitionPenalty {
    /// Penalty for any token already generated.
    pub alpha_presence: f64,
    /// Penalty per unit of count.
    pub alpha_frequency: f64,
    /// Factor applied to every count at each [`record`](RepetitionPenalty::record).
    pub alpha_decay: f64,
    counts: HashMap<u32, f64>,
}

impl RepetitionPenalty {
    /// An empty tracker with the given settings.
    pub fn new(alpha_presence: f64, alpha_frequency: f64, alpha_decay: f64) -> Self {
        RepetitionPenalty {
            alpha_presence,
            alpha_frequency,
            alpha_decay,
            counts: HashMap::new(),
        }
    }

    /// An empty tracker with a configuration's penalty settings.
    pub fn from_config(config: &SamplerConfig) -> Self {
        Self::new(
            config.alpha_presence,
            config.alpha_frequency,
            config.alpha_decay,
        )
    }

    /// The amount subtracted from `token`'s logit: `α_presence + c · α_frequency` if the token
    /// has an entry, else 0.
    pub fn penalty(&self, token: u32) -> f64 {
        match self.counts.get(&token) {
            Some(&c) => self.alpha_presence + c * self.alpha_frequency,
            None => 0.0,
        }
    }

    /// Subtracts each tracked token's [`penalty`](RepetitionPenalty::penalty) from its logit:
    /// `ℓ_n ← ℓ_n − f32(α_presence + c_n · α_frequency)`.
    ///
    /// # Errors
    /// [`Error::TokenOutOfRange`] if a tracked token is not below `logits.len()` (nothing is
    /// changed then).
    pub fn apply(&self, mut logits: ArrayViewMut1<f32>) -> Result<()> {
        let vocab = logits.len();
        if let Some(&token) = self.counts.keys().find(|&&t| t as usize >= vocab) {
            return Err(Error::TokenOutOfRange { token, vocab });
        }
        for &token in self.counts.keys() {
            logits[token as usize] -= self.penalty(token) as f32;
        }
        Ok(())
    }

    /// Records a generated token from its bytes: [`record_weighted`] with its
    /// [`occurrence_weight`].
    ///
    /// [`record_weighted`]: RepetitionPenalty::record_weighted
    pub fn record(&mut self, token: u32, token_bytes: &[u8]) {
        self.record_weighted(token, occurrence_weight(token_bytes));
    }

    /// Records a generated token: `c_n ← α_decay · c_n` for every tracked `n`, then
    /// `c_token += weight` (a new entry starts at `weight`).
    pub fn record_weighted(&mut self, token: u32, weight: f64) {
        for c in self.counts.values_mut() {
            *c *= self.alpha_decay;
        }
        *self.counts.entry(token).or_insert(0.0) += weight;
    }

    /// The count of `token`, if it has an entry.
    pub fn count(&self, token: u32) -> Option<f64> {
        self.counts.get(&token).copied()
    }

    /// Number of tracked tokens.
    pub fn len(&self) -> usize {
        self.counts.len()
    }

    /// Whether no token is tracked.
    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    /// Forgets every count (keeps the settings).
    pub fn clear(&mut self) {
        self.counts.clear();
    }
}

/// Checks the logits and writes `softmax(ℓ)` (f32, sum accumulated in f64) to `probs`.
fn softmax_into(logits: &[f32], probs: &mut Vec<f32>) -> Result<()> {
    let max = checked_max(logits)?;
    probs.clear();
    probs.extend(logits.iter().map(|&l| (l - max).exp()));
    let sum = probs.iter().map(|&p| f64::from(p)).sum::<f64>() as f32;
    for p in probs.iter_mut() {
        *p /= sum;
    }
    Ok(())
}

/// The largest logit, after checking that the logits can be sampled from: some, none NaN or
/// +∞, not all −∞.
fn checked_max(logits: &[f32]) -> Result<f32> {
    if logits.is_empty() {
        return Err(Error::Sample("no logits".into()));
    }
    let mut max = f32::NEG_INFINITY;
    for (i, &l) in logits.iter().enumerate() {
        if l.is_nan() || l == f32::INFINITY {
            return Err(Error::Sample(format!("the logit of token {i} is {l}")));
        }
        max = max.max(l);
    }
    if max == f32::NEG_INFINITY {
        return Err(Error::Sample(
            "every logit is −∞ (every token is banned)".into(),
        ));
    }
    Ok(max)
}

/// `softmax(ℓ)_i = exp(ℓ_i − max ℓ) / Σ_j exp(ℓ_j − max ℓ)`, in f32 (the sum accumulated in
/// f64). `−∞` logits get probability 0.
///
/// # Errors
/// [`Error::Sample`] if the logits are empty, a logit is NaN or `+∞`, or all are `−∞`.
pub fn softmax(logits: ArrayView1<f32>) -> Result<Vec<f32>> {
    let mut probs = Vec::new();
    softmax_into(&contiguous(logits), &mut probs)?;
    Ok(probs)
}

/// The logits as a slice, copied only if the view is not contiguous.
fn contiguous(logits: ArrayView1<'_, f32>) -> std::borrow::Cow<'_, [f32]> {
    match logits.to_slice() {
        Some(s) => std::borrow::Cow::Borrowed(s),
        None => std::borrow::Cow::Owned(logits.to_vec()),
    }
}

/// The official top-p cutoff of a probability vector: sort `probs` descending, take the
/// running f32 sum, and return the first sorted probability at which the sum is `>= top_p as
/// f32`. Tokens with `p < cutoff` are dropped; ties with the cutoff are kept.
///
/// If the sum never reaches `top_p` (only possible for `top_p` within rounding of 1), the
/// cutoff is 0 and nothing is dropped; for `top_p >= 1` the cutoff is 0 too. (The official code
/// would then fall back to the largest probability, a rounding artefact.)
///
/// # Errors
/// [`Error::Sample`] if `top_p` is outside `[0, 1]` or `probs` holds a NaN.
pub fn top_p_cutoff(probs: &[f32], top_p: f64) -> Result<f32> {
    check_top_p(top_p)?;
    if probs.iter().any(|p| p.is_nan()) {
        return Err(Error::Sample("a probability is NaN".into()));
    }
    let mut order = Vec::new();
    let (cutoff, _) = cutoff_and_sorted(probs, top_p, &mut order);
    Ok(cutoff)
}

/// Total order used everywhere: probability descending, then id ascending.
fn by_prob_desc(probs: &[f32]) -> impl Fn(&u32, &u32) -> std::cmp::Ordering + '_ {
    move |&a, &b| {
        probs[b as usize]
            .total_cmp(&probs[a as usize])
            .then(a.cmp(&b))
    }
}

/// Fills `order` with `0..V`, sorts just enough of it to find the top-p cutoff, and returns
/// the cutoff and the length of the sorted prefix of `order` (which holds the largest
/// probabilities in [`by_prob_desc`] order).
fn cutoff_and_sorted(probs: &[f32], top_p: f64, order: &mut Vec<u32>) -> (f32, usize) {
    let v = probs.len();
    order.clear();
    order.extend(0..v as u32);
    if top_p >= 1.0 {
        return (0.0, 0);
    }
    let top_p = top_p as f32;
    let cmp = by_prob_desc(probs);
    let (mut sorted, mut step, mut cumsum) = (0, 64, 0.0f32);
    while sorted < v {
        let end = v.min(sorted + step);
        if end < v {
            order[sorted..].select_nth_unstable_by(end - sorted - 1, &cmp);
        }
        order[sorted..end].sort_unstable_by(&cmp);
        for &i in &order[sorted..end] {
            cumsum += probs[i as usize];
            if cumsum >= top_p {
                return (probs[i as usize], end);
            }
        }
        sorted = end;
        step *= 4;
    }
    (0.0, v)
}

/// Reusable buffers for one sampling step.
#[derive(Clone, Debug, Default)]
struct Workspace {
    logits: Vec<f32>,
    probs: Vec<f32>,
    order: Vec<u32>,
    /// Unnormalised weights of the kept tokens `order[..weights.len()]`.
    weights: Vec<f32>,
}

impl Workspace {
    /// Computes the kept tokens (`order[..weights.len()]`) and their tempered, unnormalised
    /// weights from `self.logits`. `T = 0` keeps only the argmax, with weight 1.
    fn distribution(&mut self, temperature: f64, top_p: f64, top_k: usize) -> Result<()> {
        check_temperature(temperature)?;
        check_top_p(top_p)?;
        self.weights.clear();
        if temperature == 0.0 {
            // The argmax needs no probabilities; the logits are checked as softmax would.
            checked_max(&self.logits)?;
            let best = argmax_slice(&self.logits)?;
            self.order.clear();
            self.order.push(best);
            self.weights.push(1.0);
            return Ok(());
        }
        softmax_into(&self.logits, &mut self.probs)?;
        let probs = &self.probs;
        let v = probs.len();
        let (cutoff, sorted) = cutoff_and_sorted(probs, top_p, &mut self.order);
        let mut keep = if cutoff > 0.0 {
            probs.iter().filter(|&&p| p >= cutoff).count()
        } else {
            v
        };
        if top_k > 0 && top_k < v {
            keep = keep.min(top_k);
        }
        if keep > sorted && keep < v {
            self.order[sorted..].select_nth_unstable_by(keep - sorted - 1, by_prob_desc(probs));
        }
        let kept = &self.order[..keep];
        self.weights.extend(kept.iter().map(|&i| probs[i as usize]));
        if temperature != 1.0 {
            // In f64, 1/T stays positive for every finite T > 0 (it would round to 0 in f32
            // above about 1e45, and 0^0 = 1 would revive the zero weights); a T so small that
            // 1/T overflows gives an infinite exponent, which keeps the largest weight alone.
            let inv_t = 1.0 / temperature;
            let max = self.weights.iter().fold(0.0f32, |m, &w| m.max(w));
            for w in self.weights.iter_mut() {
                // (p / p_max)^(1/T): the same distribution as p^(1/T) after renormalising,
                // without underflowing to all zeros for small T. A zero weight (a banned or
                // −∞ token) stays exactly zero.
                if *w > 0.0 {
                    *w = f64::from(*w / max).powf(inv_t) as f32;
                }
            }
        }
        Ok(())
    }

    /// Draws one of the kept tokens with probability proportional to its weight.
    fn draw(&self, rng: &mut Rng) -> Result<u32> {
        if self.weights.len() == 1 {
            // A single candidate (greedy, or truncation kept one token): no randomness used.
            return Ok(self.order[0]);
        }
        let total: f64 = self.weights.iter().map(|&w| f64::from(w)).sum();
        if !(total > 0.0 && total.is_finite()) {
            return Err(Error::Sample(format!(
                "the kept probabilities sum to {total}"
            )));
        }
        let u = rng.next_f64() * total;
        let mut acc = 0.0f64;
        let mut last = None;
        for (&id, &w) in self.order.iter().zip(&self.weights) {
            if w > 0.0 {
                acc += f64::from(w);
                last = Some(id);
                if u < acc {
                    return Ok(id);
                }
            }
        }
        // Rounding left `u` just above the running sum: the last token with weight wins.
        last.ok_or_else(|| Error::Sample("no token has a non-zero probability".into()))
    }

    /// The renormalised distribution over all `V` tokens (`w / Σw`, in f32).
    fn full_distribution(&self) -> Vec<f32> {
        let total = self.weights.iter().map(|&w| f64::from(w)).sum::<f64>() as f32;
        let mut p = vec![0.0f32; self.logits.len()];
        for (&id, &w) in self.order.iter().zip(&self.weights) {
            p[id as usize] = w / total;
        }
        p
    }
}

fn argmax_slice(logits: &[f32]) -> Result<u32> {
    let mut best: Option<(usize, f32)> = None;
    for (i, &l) in logits.iter().enumerate() {
        if l.is_nan() {
            return Err(Error::Sample(format!("the logit of token {i} is NaN")));
        }
        match best {
            Some((_, b)) if l <= b => {}
            _ => best = Some((i, l)),
        }
    }
    match best {
        Some((i, l)) if l > f32::NEG_INFINITY => Ok(i as u32),
        Some(_) => Err(Error::Sample(
            "every logit is −∞ (every token is banned)".into(),
        )),
        None => Err(Error::Sample("no logits".into())),
    }
}

/// The greedy choice: the index of the largest logit (the lowest such index on ties).
///
/// # Errors
/// [`Error::Sample`] if the logits are empty, hold a NaN, or are all `−∞`.
pub fn argmax(logits: ArrayView1<f32>) -> Result<u32> {
    argmax_slice(&contiguous(logits))
}

/// The distribution [`sample_logits`] draws from, over all `V` tokens: softmax, top-p cutoff,
/// top-k, then `p^(1/T)` and renormalisation (see the [module docs](self)). `T = 0` gives
/// probability 1 to the [`argmax`].
///
/// Temperature is applied as `(p / p_max)^(1/T)`, which renormalises to the same distribution
/// as the official `p^(1/T)` but cannot underflow to all zeros for a small `T`.
///
/// # Errors
/// [`Error::Sample`] for a negative or non-finite `temperature`, a `top_p` outside `[0, 1]`,
/// empty logits, a NaN or `+∞` logit, or all logits `−∞`.
pub fn probabilities(
    logits: ArrayView1<f32>,
    temperature: f64,
    top_p: f64,
    top_k: usize,
) -> Result<Vec<f32>> {
    let mut work = Workspace {
        logits: contiguous(logits).into_owned(),
        ..Workspace::default()
    };
    work.distribution(temperature, top_p, top_k)?;
    Ok(work.full_distribution())
}

/// Draws a token id from `logits` with the official `sample_logits` rules: softmax, top-p
/// cutoff, top-k, temperature `p^(1/T)` after truncation, renormalise, draw with `rng`.
/// `temperature = 0` returns the [`argmax`]. When only one token is left (greedy, or
/// truncation kept a single token) `rng` is not used.
///
/// On ties at the top-k boundary the lower ids are kept.
///
/// # Errors
/// As [`probabilities`].
pub fn sample_logits(
    logits: ArrayView1<f32>,
    temperature: f64,
    top_p: f64,
    top_k: usize,
    rng: &mut Rng,
) -> Result<u32> {
    let mut work = Workspace {
        logits: contiguous(logits).into_owned(),
        ..Workspace::default()
    };
    work.distribution(temperature, top_p, top_k)?;
    work.draw(rng)
}

/// A [`SamplerConfig`], a seeded [`Rng`] and the [`RepetitionPenalty`] state: one generation
/// stream. Cloning forks it (same settings, same random sequence, same counts).
///
/// Per step: [`sample`](Sampler::sample) a token; if it
/// [`is_stop_token`](Sampler::is_stop_token), stop; else [`accept`](Sampler::accept) it.
#[derive(Clone, Debug)]
pub struct Sampler {
    config: SamplerConfig,
    rng: Rng,
    penalty: RepetitionPenalty,
    work: Workspace,
}

impl Sampler {
    /// A sampler with no tokens seen yet, drawing from `Rng::new(seed)`.
    ///
    /// # Errors
    /// [`Error::Sample`] if the configuration does not [validate](SamplerConfig::validate).
    pub fn new(config: SamplerConfig, seed: u64) -> Result<Self> {
        config.validate()?;
        Ok(Sampler {
            penalty: RepetitionPenalty::from_config(&config),
            config,
            rng: Rng::new(seed),
            work: Workspace::default(),
        })
    }

    /// Draws the next token: bans, subtracts the repetition penalties, then [`sample_logits`]
    /// with the configured temperature, top-p and top-k. The logits themselves are not changed,
    /// and neither are the penalty counts (see [`accept`](Sampler::accept)).
    ///
    /// # Errors
    /// [`Error::TokenOutOfRange`] if a banned or tracked token is not below `logits.len()`;
    /// [`Error::Sample`] as [`probabilities`].
    pub fn sample(&mut self, logits: ArrayView1<f32>) -> Result<u32> {
        let work = &mut self.work;
        work.logits.clear();
        work.logits.extend(logits.iter().copied());
        let view = ArrayViewMut1::from(&mut work.logits[..]);
        ban_tokens(view, &self.config.token_ban)?;
        self.penalty
            .apply(ArrayViewMut1::from(&mut work.logits[..]))?;
        let SamplerConfig {
            temperature,
            top_p,
            top_k,
            ..
        } = self.config;
        work.distribution(temperature, top_p, top_k)?;
        work.draw(&mut self.rng)
    }

    /// Records a generated (non-stop) token for the repetition penalty, given its bytes
    /// (see [`RepetitionPenalty::record`]).
    pub fn accept(&mut self, token: u32, token_bytes: &[u8]) {
        self.penalty.record(token, token_bytes);
    }

    /// Whether `token` ends generation.
    pub fn is_stop_token(&self, token: u32) -> bool {
        self.config.is_stop_token(token)
    }

    /// The settings.
    pub fn config(&self) -> &SamplerConfig {
        &self.config
    }

    /// The repetition-penalty state.
    pub fn penalty(&self) -> &RepetitionPenalty {
        &self.penalty
    }

    /// The random generator (e.g. to reseed it).
    pub fn rng_mut(&mut self) -> &mut Rng {
        &mut self.rng
    }

    /// Forgets the penalty counts, for a new, unrelated generation (the random sequence
    /// continues).
    pub fn reset(&mut self) {
        self.penalty.clear();
    }
}

/// The earliest occurrence of any non-empty stop string in `text`: `(byte offset, index of the
/// stop string)`. At equal offsets the first stop string in `stops` wins. The text before the
/// offset is the output to keep.
///
/// ```
/// use tokenshift::sample::find_stop_string;
/// assert_eq!(find_stop_string("Hi!\n\nUser:", &["User:", "\n\n"]), Some((3, 1)));
/// assert_eq!(find_stop_string("Hi!", &["\n\n"]), None);
/// ```
pub fn find_stop_string<S: AsRef<str>>(text: &str, stops: &[S]) -> Option<(usize, usize)> {
    stops
        .iter()
        .enumerate()
        .filter(|(_, s)| !s.as_ref().is_empty())
        .filter_map(|(k, s)| text.find(s.as_ref()).map(|at| (at, k)))
        .min()
}

/// The index of the first non-empty stop string that `text` ends with.
///
/// ```
/// use tokenshift::sample::ends_with_stop_string;
/// assert_eq!(ends_with_stop_string("Hi!\n\n", &["User:", "\n\n"]), Some(1));
/// ```
pub fn ends_with_stop_string<S: AsRef<str>>(text: &str, stops: &[S]) -> Option<usize> {
    stops
        .iter()
        .position(|s| !s.as_ref().is_empty() && text.ends_with(s.as_ref()))
}

/// The length in bytes of the longest suffix of `text` that is a proper, non-empty prefix of
/// some stop string: text a streaming caller should hold back, since the next tokens may
/// complete a stop string. Always ends on a character boundary of `text`.
///
/// ```
/// use tokenshift::sample::partial_stop_len;
/// assert_eq!(partial_stop_len("Hello\n", &["\n\nUser:"]), 1);
/// assert_eq!(partial_stop_len("Hello", &["\n\nUser:"]), 0);
/// ```
pub fn partial_stop_len<S: AsRef<str>>(text: &str, stops: &[S]) -> usize {
    let mut best = 0;
    for stop in stops {
        let stop = stop.as_ref();
        let longest = text.len().min(stop.len().saturating_sub(1));
        for len in (best + 1..=longest).rev() {
            let start = text.len() - len;
            if text.is_char_boundary(start)
                && stop.as_bytes().starts_with(&text.as_bytes()[start..])
            {
                best = len;
                break;
            }
        }
    }
    best
}
