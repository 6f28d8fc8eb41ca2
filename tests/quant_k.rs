//! GGUF's K-quant block formats (Q4_K, Q5_K, Q6_K): dequantization bit for bit as the `gguf`
//! package's on committed blocks (tools/quant/make_blocks_k.py), quantization error, and the
//! integer dot-product kernels of every instruction set of this CPU against the portable code
//! and a plain f64 dequantize-then-multiply reference.

mod quant_support;
use quant_support::Rng;

use half::f16;
use ndarray::Array2;
use std::path::PathBuf;
use tokenshift::ops::{Cpu, Matrix};
use tokenshift::storage::quant::{Q8KActivation, Q4K, Q5K, Q6K};
use tokenshift::storage::{BlockFormat, Dense, Quantized, SharedBytes};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/quant")
        .join(name)
}

fn read_f32(name: &str) -> Vec<f32> {
    std::fs::read(fixture(name))
        .unwrap()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

/// Where each format keeps its f16 scales (`d` first).
fn scale_offsets<F: BlockFormat>() -> &'static [usize] {
    match F::NAME {
        "q6_k" => &[208],
        _ => &[0, 2],
    }
}

fn dequantize_all<F: BlockFormat>(blocks: &[u8]) -> Vec<f32> {
    let mut out = vec![0.0; blocks.len() / F::BYTES * F::VALUES];
    for (b, o) in blocks
        .chunks_exact(F::BYTES)
        .zip(out.chunks_exact_mut(F::VALUES))
    {
        F::dequantize(b, o);
    }
    out
}

fn dequantize_matches_gguf<F: BlockFormat>() {
    let blocks = std::fs::read(fixture(&format!("{}.blocks", F::NAME))).unwrap();
    let want = read_f32(&format!("{}.dequant.f32", F::NAME));
    assert_eq!(blocks.len() % F::BYTES, 0);
    assert_eq!(want.len(), blocks.len() / F::BYTES * F::VALUES);
    for b in blocks.chunks_exact(F::BYTES) {
        F::check_block(b).unwrap();
    }
    let got = dequantize_all::<F>(&blocks);
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(
            g.to_bits(),
            w.to_bits(),
            "{} value {i}: {g} != {w}",
            F::NAME
        );
    }
    // The same through a matrix over the bytes, as a mapped GGUF tensor is read.
    let n = blocks.len() / F::BYTES;
    let m = Quantized::<F>::from_bytes(SharedBytes::from_vec(blocks), n, F::VALUES).unwrap();
    let mut row = vec![0.0; F::VALUES];
    m.row_into(n - 1, &mut row);
    assert_eq!(row, want[(n - 1) * F::VALUES..]);
}

#[test]
fn q4_k_dequantizes_as_gguf() {
    dequantize_matches_gguf::<Q4K>();
}

#[test]
fn q5_k_dequantizes_as_gguf() {
    dequantize_matches_gguf::<Q5K>();
}

#[test]
fn q6_k_dequantizes_as_gguf() {
    dequantize_matches_gguf::<Q6K>();
}

/// Quantizes the fixture rows (gguf 0.19 has no K-quant quantizer to compare with, so the
/// error is checked instead): RMS error relative to the row's RMS under `rel`, every value
/// within `abs_rel` of the row's largest magnitude, and a block of zeros stays zero.
fn quantize_error<F: BlockFormat>(rel: f32, abs_rel: f32) {
    let rows = read_f32(&format!("{}.rows.f32", F::NAME));
    for row in rows.chunks_exact(F::VALUES) {
        let mut block = vec![0u8; F::BYTES];
        F::quantize(row, &mut block);
        F::check_block(&block).unwrap();
        let mut back = vec![0.0; F::VALUES];
        F::dequantize(&block, &mut back);
        let rms = (row.iter().map(|v| v * v).sum::<f32>() / row.len() as f32).sqrt();
        let amax = row.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let err = (row
            .iter()
            .zip(&back)
            .map(|(a, b)| (a - b) * (a - b))
            .sum::<f32>()
            / row.len() as f32)
            .sqrt();
        assert!(err <= rel * rms, "{}: rms error {err} of {rms}", F::NAME);
        for (a, b) in row.iter().zip(&back) {
            assert!((a - b).abs() <= abs_rel * amax, "{}: {a} → {b}", F::NAME);
        }
        let zeros = row.iter().take_while(|v| **v == 0.0).count();
        // Zero sub-blocks (32 values for Q4_K/Q5_K, 16 for Q6_K) come back as zeros but for
        // the minimum's rounding.
        for b in &back[..zeros / 32 * 32] {
            assert!(b.abs() <= abs_rel * amax, "{}: zero → {b}", F::NAME);
        }
    }
    let mut block = vec![0u8; F::BYTES];
    F::quantize(&vec![0.0; F::VALUES], &mut block);
    let mut back = vec![1.0; F::VALUES];
    F::dequantize(&block, &mut back);
    assert!(back.iter().all(|v| *v == 0.0), "{}: zeros", F::NAME);
}

#[test]
fn q4_k_quantizes_within_its_error() {
    quantize_error::<Q4K>(0.12, 0.15);
}

#[test]
fn q5_k_quantizes_within_its_error() {
    quantize_error::<Q5K>(0.06, 0.08);
}

#[test]
fn q6_k_quantizes_within_its_error() {
    quantize_error::<Q6K>(0.03, 0.04);
}

fn bad_scales_are_errors<F: BlockFormat>() {
    let blocks = std::fs::read(fixture(&format!("{}.blocks", F::NAME))).unwrap();
    let names = ["d", "dmin"];
    for (k, &at) in scale_offsets::<F>().iter().enumerate() {
        for (bad, what) in [(f16::NAN, "NaN"), (f16::NEG_INFINITY, "infinite")] {
            let mut b = blocks.clone();
            b[F::BYTES + at..F::BYTES + at + 2].copy_from_slice(&bad.to_le_bytes());
            let e = F::check_block(&b[F::BYTES..2 * F::BYTES]).unwrap_err();
            assert!(e.contains(names[k]) && e.contains(what), "{}: {e}", F::NAME);
            let n = b.len() / F::BYTES;
            let e = Quantized::<F>::from_bytes(SharedBytes::from_vec(b), n / 2, 2 * F::VALUES)
                .unwrap_err();
            assert!(
                e.contains("block 1 of row 0") && e.contains(names[k]),
                "{e}"
            );
        }
    }
}

#[test]
fn nan_or_infinite_scales_are_errors_naming_them() {
    bad_scales_are_errors::<Q4K>();
    bad_scales_are_errors::<Q5K>();
    bad_scales_are_errors::<Q6K>();
}

/// `rows` rows of `cols`: quantized normal values, and for every other row random bytes with
/// moderate finite scales (every bit pattern of the levels and scales).
fn weights<F: BlockFormat>(rng: &mut Rng, rows: usize, cols: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; rows * cols / F::VALUES * F::BYTES];
    let row_bytes = cols / F::VALUES * F::BYTES;
    for (r, row) in bytes.chunks_exact_mut(row_bytes).enumerate() {
        if r % 2 == 0 {
            let values: Vec<f32> = (0..cols).map(|_| rng.normal() * 0.1).collect();
            for (v, b) in values
                .chunks_exact(F::VALUES)
                .zip(row.chunks_exact_mut(F::BYTES))
            {
                F::quantize(v, b);
            }
        } else {
            for b in row.chunks_exact_mut(F::BYTES) {
                b.iter_mut().for_each(|x| *x = rng.next() as u8);
                for &at in scale_offsets::<F>() {
                    let s = f16::from_f32(rng.uniform() * 1e-2);
                    b[at..at + 2].copy_from_slice(&s.to_le_bytes());
                }
            }
        }
    }
    bytes
}

/// Every kernel of this CPU against the portable one (bit for bit) and against f64
/// references: the dequantized weights times the dequantized activation (to rounding), and
/// times the activation itself (within the activation's quantization error).
fn kernels_agree<F: BlockFormat<Activation = Q8KActivation> + Clone>() {
    let mut rng = Rng::new(0x5eed ^ F::BYTES as u64);
    for cols in [256, 512, 768, 1280, 2304, 4096] {
        let rows = 5;
        let bytes = weights::<F>(&mut rng, rows, cols);
        let xs: Vec<Vec<f32>> = (0..3)
            .map(|k| {
                (0..cols)
                    .map(|i| {
                        if k == 2 && i < 256 {
                            0.0 // an all-zero activation block
                        } else {
                            rng.normal() * if i % 97 == 0 { 20.0 } else { 1.0 }
                        }
                    })
                    .collect()
            })
            .collect();
        let x_refs: Vec<&[f32]> = xs.iter().map(|x| x.as_slice()).collect();
        let base =
            Quantized::<F>::from_bytes(SharedBytes::from_vec(bytes.clone()), rows, cols).unwrap();
        let mut portable = vec![0.0f32; rows * xs.len()];
        base.clone()
            .with_cpu(Cpu::portable())
            .row_dots(0..rows, &x_refs, &mut portable);
        for cpu in Cpu::detect().variants() {
            let mut got = vec![0.0f32; rows * xs.len()];
            base.clone()
                .with_cpu(cpu)
                .row_dots(0..rows, &x_refs, &mut got);
            for (g, p) in got.iter().zip(&portable) {
                assert_eq!(
                    g.to_bits(),
                    p.to_bits(),
                    "{} {cols} {cpu:?}: {g} != {p}",
                    F::NAME
                );
            }
        }
        for (j, x) in xs.iter().enumerate() {
            let act = F::quantize_activation(Cpu::detect(), x);
            let xq = act.dequantize();
            for r in 0..rows {
                let mut w = vec![0.0; cols];
                base.row_into(r, &mut w);
                let row = &bytes[r * cols / F::VALUES * F::BYTES..][..cols / F::VALUES * F::BYTES];
                let got = portable[r * xs.len() + j] as f64;
                // Against the dequantized activation: only float rounding, relative to the
                // sizes of the terms (a minimum's part can cancel the levels' part).
                let mut exact = 0.0f64;
                let mut size = 0.0f64;
                let mut bound = 0.0f64;
                for (b, (wb, (xb, qb))) in w
                    .chunks_exact(256)
                    .zip(x.chunks_exact(256).zip(xq.chunks_exact(256)))
                    .enumerate()
                {
                    let dmin = match F::NAME {
                        "q6_k" => 0.0,
                        _ => {
                            let at = b * F::BYTES + 2;
                            f16::from_le_bytes([row[at], row[at + 1]]).to_f32().abs() as f64
                        }
                    };
                    let sum_q: f64 = qb.iter().map(|v| v.abs() as f64).sum();
                    for (&wv, &qv) in wb.iter().zip(qb) {
                        exact += wv as f64 * qv as f64;
                        size += (wv as f64 * qv as f64).abs();
                    }
                    size += 2.0 * dmin * 63.0 * sum_q;
                    let sum_w: f64 = wb.iter().map(|v| v.abs() as f64).sum();
                    let d = act.blocks[b].d.abs() as f64;
                    bound += sum_w * d * 0.5 * 1.001;
                    let _ = xb;
                }
                assert!(
                    (got - exact).abs() <= 1e-5 * size + 1e-30,
                    "{} {cols} row {r} x{j}: {got} vs {exact} (size {size})",
                    F::NAME
                );
                let plain: f64 = w.iter().zip(x).map(|(a, b)| *a as f64 * *b as f64).sum();
                assert!(
                    (got - plain).abs() <= bound + 1e-5 * size + 1e-30,
                    "{} {cols} row {r} x{j}: {got} vs {plain} (bound {bound})",
                    F::NAME
                );
            }
        }
    }
}

#[test]
fn q4_k_kernels_agree() {
    kernels_agree::<Q4K>();
}

#[test]
fn q5_k_kernels_agree() {
    kernels_agree::<Q5K>();
}

#[test]
fn q6_k_kernels_agree() {
    kernels_agree::<Q6K>();
}

/// Weight bytes streamed per second by one thread's `row_dots` (one vector), for K-quant
/// matrices and `Dense<f16>` of the same shapes. `cargo test --release --test quant_k --
/// --ignored --nocapture`.
#[test]
#[ignore]
fn measure_row_dots_bandwidth() {
    fn time(m: &dyn Matrix, x: &[f32]) -> (f64, f64) {
        let rows = m.dim().0;
        let mut out = vec![0.0; rows];
        m.row_dots(0..rows, &[x], &mut out);
        let start = std::time::Instant::now();
        let mut iters = 0usize;
        while start.elapsed().as_secs_f64() < 1.0 {
            m.row_dots(0..rows, &[x], &mut out);
            iters += 1;
        }
        let secs = start.elapsed().as_secs_f64() / iters as f64;
        (m.size_bytes() as f64 / secs / 1e9, secs * 1e6)
    }
    let mut rng = Rng::new(7);
    for (rows, cols) in [(768, 768), (2688, 768)] {
        let values: Vec<f32> = (0..rows * cols).map(|_| rng.normal() * 0.05).collect();
        let x: Vec<f32> = (0..cols).map(|_| rng.normal()).collect();
        let dense = Dense::new(Array2::from_shape_fn((rows, cols), |(r, c)| {
            f16::from_f32(values[r * cols + c])
        }));
        let (f16_gbs, f16_us) = time(&dense, &x);
        println!("{rows}×{cols} f16:  {f16_gbs:6.2} GB/s  {f16_us:8.1} µs");
        let report = |name: &str, m: &dyn Matrix| {
            let (gbs, us) = time(m, &x);
            println!(
                "{rows}×{cols} {name}: {gbs:6.2} GB/s  {us:8.1} µs  ({:.2}× f16's speed)",
                f16_us / us
            );
        };
        report("q4_k", &Quantized::<Q4K>::quantize(&values, rows, cols));
        report("q5_k", &Quantized::<Q5K>::quantize(&values, rows, cols));
        report("q6_k", &Quantized::<Q6K>::quantize(&values, rows, cols));
    }
}
