"""Writes the K-quant fixtures of tests/quant_k.rs: blocks and gguf's dequantization of them.

For each of Q4_K, Q5_K and Q6_K, under tests/fixtures/quant/:

- `<type>.rows.f32`: random f32 rows (little-endian, 2 rows of 256 values);
- `<type>.blocks`: blocks as gguf stores them. gguf.quants quantizes the rows where it can;
  where it cannot (it has no K-quant quantizer), random valid blocks: random bytes with
  finite f16 scales, plus blocks that reach the edges (zero scales, all bits set, negative
  and subnormal scales);
- `<type>.dequant.f32`: gguf.quants' dequantization of those blocks (little-endian f32);
- `<type>.source`: `gguf` when the blocks are gguf's quantization of the rows, `random`
  otherwise.

Run with the project's Python environment (numpy, gguf):

    /work/pyenv/bin/python tools/quant/make_blocks_k.py
"""

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import quants

OUT = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "quant"
QK_K = 256
# (type, bytes per block, offsets of its f16 scales)
FORMATS = [("q4_k", T.Q4_K, 144, [0, 2]), ("q5_k", T.Q5_K, 176, [0, 2]), ("q6_k", T.Q6_K, 210, [208])]
RANDOM_BLOCKS = 6


def f16_bytes(v):
    return np.array([v], dtype=np.float16).view(np.uint8)


def random_blocks(rng, size, scale_at):
    blocks = rng.integers(0, 256, size=(RANDOM_BLOCKS, size), dtype=np.uint8)
    for b in range(RANDOM_BLOCKS):
        for k, at in enumerate(scale_at):
            if b == 0:
                v = 0.0  # a zero scale
            elif b == 1:
                v = -rng.uniform(1e-3, 1e-1)  # negative
            elif b == 2:
                v = 3e-6 * (k + 1)  # subnormal f16
            elif b == 3:
                v = 60000.0 / (k + 1)  # near the largest f16
            else:
                v = rng.uniform(1e-4, 1e-1) * rng.choice([-1, 1])
            blocks[b, at : at + 2] = f16_bytes(v)
    # Block 4: every bit set but the scales.
    scales = [blocks[4, a : a + 2].copy() for a in scale_at]
    blocks[4, :] = 0xFF
    for a, v in zip(scale_at, scales):
        blocks[4, a : a + 2] = v
    return blocks


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(19)
    for name, qtype, size, scale_at in FORMATS:
        rows = (rng.standard_normal((2, QK_K)) * np.array([[0.05], [1.5]])).astype(np.float32)
        rows[1, :40] = 0.0  # a sub-block of zeros
        try:
            blocks = quants.quantize(rows, qtype).reshape(-1, size)
            source = "gguf"
        except NotImplementedError:
            blocks = random_blocks(rng, size, scale_at)
            source = "random"
        assert np.isfinite(np.concatenate([blocks[:, a : a + 2].copy().view(np.float16) for a in scale_at])).all()
        deq = quants.dequantize(blocks, qtype).astype(np.float32).reshape(-1)
        assert deq.size == blocks.shape[0] * QK_K
        (OUT / f"{name}.rows.f32").write_bytes(rows.astype("<f4").tobytes())
        (OUT / f"{name}.blocks").write_bytes(blocks.tobytes())
        (OUT / f"{name}.dequant.f32").write_bytes(deq.astype("<f4").tobytes())
        (OUT / f"{name}.source").write_text(source + "\n")
        print(f"{name}: {blocks.shape[0]} blocks ({source}), {deq.size} values")


if __name__ == "__main__":
    main()
