//! GGUF's 32-value blocks (Q8_0, Q4_0, Q5_0, Q5_1): quantize and dequantize bit for bit as
//! the `gguf` package (committed fixtures), every kernel this CPU runs against the portable
//! one, and the dot products against a dequantize-then-multiply reference in f64.

mod quant_support;
use quant_support::Rng;

use half::f16;
use std::path::PathBuf;
use tokenshift::ops::{Cpu, Matrix};
use tokenshift::storage::quant::{BlockFormat, Q8Act, Q4_0, Q5_0, Q5_1, Q8_0};
use tokenshift::storage::{Dense, Quantized, SharedBytes};

fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/quant")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

/// Our quantize and dequantize of the fixture `name` against gguf's, bit for bit.
fn matches_gguf<F: BlockFormat>(name: &str) {
    let x = f32s(&fixture(&format!("{name}_x.f32")));
    let blocks = fixture(&format!("{name}.blocks"));
    let deq = f32s(&fixture(&format!("{name}_deq.f32")));
    assert_eq!(x.len(), 512);
    assert_eq!(blocks.len(), x.len() / F::VALUES * F::BYTES);
    let mut ours = vec![0u8; blocks.len()];
    let mut values = vec![0.0f32; x.len()];
    for (i, ((xb, ob), (gb, vb))) in x
        .chunks_exact(F::VALUES)
        .zip(ours.chunks_exact_mut(F::BYTES))
        .zip(
            blocks
                .chunks_exact(F::BYTES)
                .zip(values.chunks_exact_mut(F::VALUES)),
        )
        .enumerate()
    {
        F::check_block(gb).unwrap();
        F::quantize(xb, ob);
        assert_eq!(ob, gb, "{name}: block {i} quantized differently from gguf");
        F::dequantize(gb, vb);
    }
    for (i, (a, b)) in values.iter().zip(&deq).enumerate() {
        assert_eq!(
            a.to_bits(),
            b.to_bits(),
            "{name}: value {i}: {a} against gguf's {b}"
        );
    }
    // The same through the matrix: quantized at load, rows read back.
    let m = Quantized::<F>::quantize(&x, 4, 128);
    assert_eq!(m.blocks(), &blocks[..]);
    let mut row = vec![0.0f32; 128];
    for r in 0..4 {
        m.row_into(r, &mut row);
        assert_eq!(row, deq[r * 128..(r + 1) * 128]);
    }
}

#[test]
fn q8_0_matches_gguf() {
    matches_gguf::<Q8_0>("q8_0");
}

#[test]
fn q4_0_matches_gguf() {
    matches_gguf::<Q4_0>("q4_0");
}

#[test]
fn q5_0_matches_gguf() {
    matches_gguf::<Q5_0>("q5_0");
}

#[test]
fn q5_1_matches_gguf() {
    matches_gguf::<Q5_1>("q5_1");
}

/// Where a block of `F` keeps its f16 scales: `d` first, and Q5_1's minimum `m` after it.
fn scale_offsets<F: BlockFormat>() -> &'static [usize] {
    if F::NAME == "q5_1" {
        &[0, 2]
    } else {
        &[0]
    }
}

/// Random blocks of `F` with every integer pattern and finite f16 scales of about `scale`
/// (1.0 exactly when `scale` is 1; a minimum of either sign).
fn random_blocks<F: BlockFormat>(rng: &mut Rng, blocks: usize, scale: f32) -> Vec<u8> {
    let mut b = rng.bytes(blocks * F::BYTES);
    for block in b.chunks_exact_mut(F::BYTES) {
        for (k, &at) in scale_offsets::<F>().iter().enumerate() {
            let d = if scale == 1.0 {
                1.0
            } else if k == 0 {
                scale * (0.5 + rng.uniform().abs())
            } else {
                scale * 8.0 * rng.uniform()
            };
            block[at..at + 2].copy_from_slice(&f16::from_f32(d).to_bits().to_le_bytes());
        }
    }
    b
}

/// Activation values of `n` integers in −127..=127 with a ±127 in each block, so the
/// quantized activation has `d = 1` and its integers are the values.
fn integer_activation(rng: &mut Rng, n: usize) -> Vec<f32> {
    let mut x: Vec<f32> = (0..n).map(|_| (rng.next() % 255) as f32 - 127.0).collect();
    for (b, block) in x.chunks_exact_mut(32).enumerate() {
        block[(b * 7) % 32] = if b % 2 == 0 { 127.0 } else { -127.0 };
    }
    x
}

/// With scales of 1 every product is an integer below 2²⁴ (up to 1024 values), exact in f32
/// in any order: every kernel gives the exact integer dot product.
fn integer_parts_exact<F: BlockFormat>() {
    let mut rng = Rng::new(7);
    for blocks in [1, 2, 3, 5, 8, 17, 32] {
        for _ in 0..4 {
            let row = random_blocks::<F>(&mut rng, blocks, 1.0);
            let x = integer_activation(&mut rng, blocks * 32);
            let act = F::quantize_activation(Cpu::detect(), &x);
            assert!(Q8Act::quantize(&x).scales().iter().all(|&d| d == 1.0));
            let mut w = vec![0.0f32; blocks * 32];
            for (b, o) in row.chunks_exact(F::BYTES).zip(w.chunks_exact_mut(32)) {
                F::dequantize(b, o);
            }
            let exact: i64 = w.iter().zip(&x).map(|(w, x)| *w as i64 * *x as i64).sum();
            for cpu in Cpu::detect().variants() {
                let got = F::dot(cpu, &row, &act);
                assert_eq!(got, exact as f32, "{} {cpu:?}, {blocks} blocks", F::NAME);
            }
        }
        // Four rows at once.
        let rows: Vec<Vec<u8>> = (0..4)
            .map(|_| random_blocks::<F>(&mut rng, blocks, 1.0))
            .collect();
        let x = integer_activation(&mut rng, blocks * 32);
        let act = F::quantize_activation(Cpu::detect(), &x);
        let exact: Vec<f32> = rows
            .iter()
            .map(|row| {
                let mut w = vec![0.0f32; blocks * 32];
                for (b, o) in row.chunks_exact(F::BYTES).zip(w.chunks_exact_mut(32)) {
                    F::dequantize(b, o);
                }
                w.iter()
                    .zip(&x)
                    .map(|(w, x)| *w as i64 * *x as i64)
                    .sum::<i64>() as f32
            })
            .collect();
        let all = rows.concat();
        for cpu in Cpu::detect().variants() {
            let mut got = [0.0f32; 4];
            F::dot_rows(cpu, &all, rows[0].len(), &act, &mut got, 1);
            assert_eq!(&got[..], &exact[..], "{} {cpu:?}, {blocks} blocks", F::NAME);
        }
    }
    // Extremes: weights at their most negative and largest, activations at ±127.
    let mut x = vec![127.0f32; 64];
    x[33..].iter_mut().for_each(|v| *v = -127.0);
    let act = F::quantize_activation(Cpu::detect(), &x);
    for fill in [0x00u8, 0xff, 0x80, 0x7f] {
        let mut row = vec![fill; 2 * F::BYTES];
        for b in row.chunks_exact_mut(F::BYTES) {
            for &at in scale_offsets::<F>() {
                b[at..at + 2].copy_from_slice(&0x3c00u16.to_le_bytes());
            }
        }
        let mut w = vec![0.0f32; 64];
        for (b, o) in row.chunks_exact(F::BYTES).zip(w.chunks_exact_mut(32)) {
            F::dequantize(b, o);
        }
        let exact: f32 = w.iter().zip(&x).map(|(w, x)| w * x).sum();
        for cpu in Cpu::detect().variants() {
            assert_eq!(
                F::dot(cpu, &row, &act),
                exact,
                "{} {cpu:?} {fill:#x}",
                F::NAME
            );
        }
    }
}

#[test]
fn q8_0_integer_parts_exact() {
    integer_parts_exact::<Q8_0>();
}

#[test]
fn q4_0_integer_parts_exact() {
    integer_parts_exact::<Q4_0>();
}

#[test]
fn q5_0_integer_parts_exact() {
    integer_parts_exact::<Q5_0>();
}

#[test]
fn q5_1_integer_parts_exact() {
    integer_parts_exact::<Q5_1>();
}

/// Dot products of random rows of `F` (random blocks and blocks quantized from normal
/// values) with random vectors, 32 to 4096 long, through [`Quantized::row_dots`]: every
/// kernel within f32 rounding of the portable one and of an f64 product of the dequantized
/// weights with the quantized activation, and within the activation's quantization error of
/// the f64 product with the vector itself.
fn against_reference<F: BlockFormat + Clone>() {
    let mut rng = Rng::new(11);
    for blocks in [1, 2, 3, 7, 24, 33, 96, 128] {
        let n = blocks * 32;
        let rows = 5;
        let mut bytes = random_blocks::<F>(&mut rng, 2 * blocks, 0.01);
        let values: Vec<f32> = (0..(rows - 2) * n).map(|_| rng.normal() * 0.3).collect();
        bytes.extend_from_slice(Quantized::<F>::quantize(&values, rows - 2, n).blocks());
        let xs: Vec<Vec<f32>> = (0..3)
            .map(|j| (0..n).map(|_| rng.normal() * (j + 1) as f32).collect())
            .collect();
        let xr: Vec<&[f32]> = xs.iter().map(|x| x.as_slice()).collect();
        let m = Quantized::<F>::from_bytes(SharedBytes::from_vec(bytes), rows, n).unwrap();
        let mut portable = vec![0.0f32; rows * 3];
        let m0 = m.clone().with_cpu(Cpu::portable());
        m0.row_dots(0..rows, &xr, &mut portable);
        for cpu in Cpu::detect().variants() {
            let mut got = vec![0.0f32; rows * 3];
            m.clone().with_cpu(cpu).row_dots(0..rows, &xr, &mut got);
            let mut w = vec![0.0f32; n];
            for r in 0..rows {
                m.row_into(r, &mut w);
                for (j, x) in xs.iter().enumerate() {
                    let act = Q8Act::quantize(x);
                    let xq = act.dequantize();
                    let g = got[r * 3 + j] as f64;
                    let p = portable[r * 3 + j] as f64;
                    let ref_q: f64 = w.iter().zip(&xq).map(|(&a, &b)| a as f64 * b as f64).sum();
                    let mag_q: f64 = w
                        .iter()
                        .zip(&xq)
                        .map(|(&a, &b)| (a as f64 * b as f64).abs())
                        .sum();
                    let rounding = (blocks as f64 + 8.0) * 1.2e-7 * mag_q + 1e-30;
                    let what = format!("{} {cpu:?} n {n} row {r} vector {j}", F::NAME);
                    assert!(
                        (g - p).abs() <= 2.0 * rounding,
                        "{what}: {g} vs portable {p}"
                    );
                    assert!((g - ref_q).abs() <= rounding, "{what}: {g} vs {ref_q}");
                    // The activation's quantization error: at most d/2 per value.
                    let ref_x: f64 = w.iter().zip(x).map(|(&a, &b)| a as f64 * b as f64).sum();
                    let bound: f64 = w
                        .chunks_exact(32)
                        .zip(act.scales())
                        .map(|(wb, &d)| {
                            d as f64 * 0.5 * 1.001 * wb.iter().map(|v| v.abs() as f64).sum::<f64>()
                        })
                        .sum::<f64>()
                        + rounding;
                    assert!(
                        (g - ref_x).abs() <= bound,
                        "{what}: {g} vs {ref_x} (bound {bound})"
                    );
                }
            }
        }
    }
}

#[test]
fn q8_0_dots_against_reference() {
    against_reference::<Q8_0>();
}

#[test]
fn q4_0_dots_against_reference() {
    against_reference::<Q4_0>();
}

#[test]
fn q5_0_dots_against_reference() {
    against_reference::<Q5_0>();
}

#[test]
fn q5_1_dots_against_reference() {
    against_reference::<Q5_1>();
}

/// A vector changed in place between calls (same address, new values) and products of two
/// formats with the same vector: each call's results are those of its own values.
#[test]
fn activations_reused_only_for_the_same_values() {
    let mut rng = Rng::new(5);
    let (rows, n) = (6, 96);
    let values: Vec<f32> = (0..rows * n).map(|_| rng.normal()).collect();
    let q8 = Quantized::<Q8_0>::quantize(&values, rows, n);
    let q4 = Quantized::<Q4_0>::quantize(&values, rows, n);
    let mut x: Vec<f32> = (0..n).map(|_| rng.normal()).collect();
    let mut y: Vec<f32> = (0..n).map(|_| rng.normal()).collect();
    let expect = |m: &dyn Matrix, x: &[f32], y: &[f32]| -> Vec<f32> {
        let mut w = vec![0.0f32; n];
        let mut out = Vec::new();
        for r in 0..rows {
            m.row_into(r, &mut w);
            for v in [x, y] {
                let a = Q8Act::quantize(v);
                let xq = a.dequantize();
                out.push(w.iter().zip(&xq).map(|(a, b)| a * b).sum::<f32>());
            }
        }
        out
    };
    for round in 0..4 {
        for m in [&q8 as &dyn Matrix, &q4] {
            let want = expect(m, &x, &y);
            let mut got = vec![0.0f32; rows * 2];
            for start in (0..rows).step_by(4) {
                let end = (start + 4).min(rows);
                m.row_dots(start..end, &[&x, &y], &mut got[start * 2..end * 2]);
            }
            for (g, w) in got.iter().zip(&want) {
                assert!(
                    (g - w).abs() <= 1e-4 * (1.0 + w.abs()),
                    "round {round}: {g} vs {w}"
                );
            }
            // One vector alone, then the pair again.
            let mut one = vec![0.0f32; rows];
            m.row_dots(0..rows, &[&y], &mut one);
            for (g, w) in one.iter().zip(want.iter().skip(1).step_by(2)) {
                assert!(
                    (g - w).abs() <= 1e-4 * (1.0 + w.abs()),
                    "round {round}: {g} vs {w}"
                );
            }
        }
        x[round * 7] += 1.0;
        y.reverse();
    }
}

#[test]
fn bad_scales_in_a_file_are_errors() {
    let mut bytes = vec![0u8; 4 * 34];
    bytes[3 * 34..3 * 34 + 2].copy_from_slice(&0x7e00u16.to_le_bytes());
    let e = Quantized::<Q8_0>::from_bytes(SharedBytes::from_vec(bytes), 2, 64).unwrap_err();
    assert!(
        e.contains("block 1 of row 1") && e.contains("scale d is NaN"),
        "{e}"
    );
    let mut bytes = vec![0u8; 2 * 18];
    bytes[1] = 0x7c;
    let e = Quantized::<Q4_0>::from_bytes(SharedBytes::from_vec(bytes), 1, 64).unwrap_err();
    assert!(
        e.contains("block 0 of row 0") && e.contains("infinite"),
        "{e}"
    );
    let mut bytes = vec![0u8; 6 * 22];
    bytes[5 * 22..5 * 22 + 2].copy_from_slice(&0xfc00u16.to_le_bytes());
    let e = Quantized::<Q5_0>::from_bytes(SharedBytes::from_vec(bytes), 3, 64).unwrap_err();
    assert!(
        e.contains("block 1 of row 2") && e.contains("q5_0 block scale d is infinite"),
        "{e}"
    );
    // Q5_1: its scale d and its minimum m.
    for (at, what) in [
        (0, "q5_1 block scale d is NaN"),
        (2, "q5_1 block scale m is NaN"),
    ] {
        let mut bytes = vec![0u8; 4 * 24];
        bytes[2 * 24 + at..2 * 24 + at + 2].copy_from_slice(&0x7e00u16.to_le_bytes());
        let e = Quantized::<Q5_1>::from_bytes(SharedBytes::from_vec(bytes), 2, 64).unwrap_err();
        assert!(e.contains("block 0 of row 1") && e.contains(what), "{e}");
    }
    // A wrong byte count names the format.
    let e = Quantized::<Q5_1>::from_bytes(SharedBytes::from_vec(vec![0; 47]), 1, 64).unwrap_err();
    assert!(e.contains("q5_1 blocks"), "{e}");
}

/// Seconds per call of `f`, the best of several timed runs.
fn time(mut f: impl FnMut()) -> f64 {
    f();
    let mut reps = 1;
    loop {
        let t = std::time::Instant::now();
        for _ in 0..reps {
            f();
        }
        if t.elapsed().as_secs_f64() > 0.05 {
            break;
        }
        reps *= 2;
    }
    (0..7)
        .map(|_| {
            let t = std::time::Instant::now();
            for _ in 0..reps {
                f();
            }
            t.elapsed().as_secs_f64() / reps as f64
        })
        .fold(f64::INFINITY, f64::min)
}

/// One vector's product with the whole matrix, `chunk` rows per `row_dots` call (as the
/// layers call it per task): seconds.
fn product_time(m: &dyn Matrix, x: &[f32], chunk: usize) -> f64 {
    let rows = m.dim().0;
    let mut out = vec![0.0f32; rows];
    time(|| {
        for start in (0..rows).step_by(chunk) {
            let end = (start + chunk).min(rows);
            m.row_dots(start..end, &[x], &mut out[start..end]);
        }
        std::hint::black_box(&out);
    })
}

/// Weight bytes streamed per second by one-vector row products on one thread, f16 against
/// Q8_0 and Q4_0 (run with `--ignored --nocapture`).
#[test]
#[ignore]
fn measure_streaming() {
    let mut rng = Rng::new(3);
    for (rows, cols) in [(768, 768), (2688, 768), (768, 2688), (65536, 768)] {
        let values: Vec<f32> = (0..rows * cols).map(|_| rng.normal() * 0.05).collect();
        let x: Vec<f32> = (0..cols).map(|_| rng.normal()).collect();
        let f16m = Dense::new(
            ndarray::Array2::from_shape_vec(
                (rows, cols),
                values.iter().map(|&v| f16::from_f32(v)).collect(),
            )
            .unwrap(),
        );
        let q8 = Quantized::<Q8_0>::quantize(&values, rows, cols);
        let q4 = Quantized::<Q4_0>::quantize(&values, rows, cols);
        let t_act = time(|| {
            std::hint::black_box(Q8Act::quantize(std::hint::black_box(&x)));
        });
        println!("{rows}×{cols}: quantizing the vector {:.2} µs", t_act * 1e6);
        for chunk in [rows, 16, 12] {
            let base = product_time(&f16m, &x, chunk);
            for (name, m) in [("f16", &f16m as &dyn Matrix), ("q8_0", &q8), ("q4_0", &q4)] {
                let t = product_time(m, &x, chunk);
                println!(
                    "  {name:5} {chunk:4} rows/call: {:7.1} µs, {:5.1} GB/s, {:.2}× f16",
                    t * 1e6,
                    m.size_bytes() as f64 / t / 1e9,
                    base / t
                );
            }
        }
        // The kernels alone, the activation quantized once: one row a call, and four.
        for cpu in Cpu::detect().variants() {
            let k8 = kernel_times::<Q8_0>(cpu, q8.blocks(), rows, cols, &x);
            let k4 = kernel_times::<Q4_0>(cpu, q4.blocks(), rows, cols, &x);
            println!(
                "  kernels {cpu:?}: q8_0 {:.1} / {:.1} GB/s, q4_0 {:.1} / {:.1} GB/s (1 / 4 rows a call)",
                q8.size_bytes() as f64 / k8.0 / 1e9,
                q8.size_bytes() as f64 / k8.1 / 1e9,
                q4.size_bytes() as f64 / k4.0 / 1e9,
                q4.size_bytes() as f64 / k4.1 / 1e9,
            );
        }
    }
}

/// Seconds for all rows of `blocks` through [`BlockFormat::dot`] and through
/// [`BlockFormat::dot_rows`] four rows at a time.
fn kernel_times<F: BlockFormat>(
    cpu: Cpu,
    blocks: &[u8],
    rows: usize,
    cols: usize,
    x: &[f32],
) -> (f64, f64) {
    let act = &F::quantize_activation(cpu, x);
    let n = cols / F::VALUES * F::BYTES;
    let row = |r: usize| &blocks[r * n..(r + 1) * n];
    let one = time(|| {
        for r in 0..rows {
            std::hint::black_box(F::dot(cpu, row(r), act));
        }
    });
    let four = time(|| {
        let mut out = [0.0f32; 4];
        for r in (0..rows).step_by(4) {
            F::dot_rows(cpu, &blocks[r * n..(r + 4) * n], n, act, &mut out, 1);
            std::hint::black_box(&out);
        }
    });
    (one, four)
}
