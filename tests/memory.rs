//! `Model::forward` takes memory independent of the prompt's length: it runs a prompt in pieces
//! of `FORWARD_PIECE` tokens, so beyond the model and the tokens only one piece's
//! intermediates and the `[T, V]` logits of `Logits::All` are live at once.
//!
//! A global allocator tracks the bytes live on every thread and their peak during a call.

mod common;

use common::*;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use tokenshift::model::FORWARD_PIECE;
use tokenshift::synthetic::{random_model, DType};
use tokenshift::{Config, Logits, Model, Version};

struct Tracking;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grown(bytes: usize) {
    let live = LIVE.fetch_add(bytes, Ordering::Relaxed) + bytes;
    PEAK.fetch_max(live, Ordering::Relaxed);
}

// SAFETY: every call is forwarded unchanged to the system allocator; tracking touches only
// atomics, which do not allocate.
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        grown(layout.size());
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        grown(layout.size());
        System.alloc_zeroed(layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size >= layout.size() {
            grown(new_size - layout.size());
        } else {
            LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
        }
        System.realloc(ptr, layout, new_size)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static GLOBAL: Tracking = Tracking;

/// Serialises the tests of this file (the counters are global).
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Peak bytes live during `model.forward` of `t` tokens, above what was live before it: the
/// least of three calls, since threads that overlap their intermediates more or less move it.
fn forward_peak(model: &Model, t: usize, which: Logits) -> usize {
    (0..3)
        .map(|_| forward_peak_once(model, t, which))
        .min()
        .unwrap()
}

fn forward_peak_once(model: &Model, t: usize, which: Logits) -> usize {
    let tokens = Rng::new(5).tokens(t, model.config().vocab);
    let mut state = model.init_state();
    // Warm-up: rayon's pool and the state's first use allocate once.
    model.forward(&tokens[..1], &mut state, which).unwrap();
    let before = LIVE.load(Ordering::SeqCst);
    PEAK.store(before, Ordering::SeqCst);
    let logits = model.forward(&tokens, &mut state, which).unwrap();
    let peak = PEAK.load(Ordering::SeqCst) - before;
    assert!(logits.iter().all(|v| v.is_finite()));
    peak
}

fn model(version: Version) -> Model {
    let config = Config::standard(version, 2, 64, 32, 300);
    random_model(&config, DType::F32, 11).unwrap()
}

#[test]
fn forward_memory_does_not_grow_with_the_prompt() {
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    for version in [Version::V4, Version::V5_2, Version::V6, Version::V7] {
        let model = model(version);
        let short = forward_peak(&model, 2 * FORWARD_PIECE + 3, Logits::Last);
        let long = forward_peak(&model, 6 * FORWARD_PIECE + 3, Logits::Last);
        // One piece's intermediates: a generous bound, far below the 4 × 1024 more rows of
        // about fifteen [T, C] arrays (15.7 MB at C = 64) that a whole-prompt pass would add
        // (2.6 times the peak of 2 pieces).
        assert!(
            long <= short + short / 2,
            "{version}: peak {long} bytes for 6 pieces against {short} for 2"
        );
        let vocab = model.config().vocab;
        let all_short = forward_peak(&model, 2 * FORWARD_PIECE + 3, Logits::All);
        let all_long = forward_peak(&model, 6 * FORWARD_PIECE + 3, Logits::All);
        let logits_bytes = 4 * FORWARD_PIECE * vocab * 4;
        assert!(
            all_long <= all_short + logits_bytes + short / 2,
            "{version}: Logits::All peak {all_long} bytes for 6 pieces against {all_short} for 2 \
             (the logits add {logits_bytes})"
        );
    }
}

/// The pieces carry the state exactly as one pass would: a prompt across several pieces gives
/// the logits and state of token-by-token decoding.
#[test]
fn forward_across_pieces_equals_steps() {
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    for version in [Version::V4, Version::V5_2, Version::V6, Version::V7] {
        let model = model(version);
        let tokens = Rng::new(9).tokens(2 * FORWARD_PIECE + 17, model.config().vocab);
        let mut seq = model.init_state();
        let all = model.forward(&tokens, &mut seq, Logits::All).unwrap();
        let mut last_state = model.init_state();
        let last = model
            .forward(&tokens, &mut last_state, Logits::Last)
            .unwrap();
        // The head over one row and over many may sum in another order.
        let head_diff = max_abs_diff(last.row(0), all.row(tokens.len() - 1));
        assert!(
            head_diff < 1e-5,
            "{version}: Last and All differ by {head_diff}"
        );
        assert_eq!(last_state, seq, "{version}");
        let mut step = model.init_state();
        let mut worst = 0f32;
        for (i, &t) in tokens.iter().enumerate() {
            let logits = model.step(t, &mut step).unwrap();
            worst = worst.max(max_abs_diff(logits.view(), all.row(i)));
        }
        assert!(worst < 1e-4, "{version}: max |Δ logits| {worst}");
        // States grow over thousands of random-weight tokens: compared relative to their size.
        let step_list = step.to_official_list();
        let scale = step_list.iter().flatten().fold(1f32, |m, v| m.max(v.abs()));
        let state_diff = max_abs_diff_list(&seq.to_official_list(), &step_list) / scale;
        assert!(
            state_diff < 2e-5,
            "{version}: max |Δ state| / max |state| {state_diff}"
        );
    }
}
