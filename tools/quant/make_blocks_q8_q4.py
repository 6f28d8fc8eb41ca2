"""Writes the fixtures of the 32-value block formats (Q8_0, Q4_0, Q5_0, Q5_1) for
tests/quant_q8_q4.rs with the `gguf` package's numpy quantizer and dequantizer (gguf.quants),
which the tests compare with the crate's bit for bit.

For each format F in q8_0, q4_0, q5_0, q5_1 (files in tests/fixtures/quant/):
  F_x.f32    512 f32 values (16 blocks of 32), little-endian: the rows quantized
  F.blocks   gguf.quants.quantize(x, F): the blocks as GGUF stores them
  F_deq.f32  gguf.quants.dequantize(blocks, F): 512 f32, little-endian

Run from the repository root: /work/pyenv/bin/python tools/quant/make_blocks_q8_q4.py
"""

import os

import numpy as np
from gguf import GGMLQuantizationType, quants

OUT = os.path.join("tests", "fixtures", "quant")
BLOCK = 32


def rows(seed: int) -> np.ndarray:
    """16 blocks: random ones at many magnitudes and the cases a quantizer may get wrong."""
    rng = np.random.default_rng(seed)
    blocks = []
    for scale in [1e-3, 1e-2, 0.1, 0.5, 1.0, 2.0, 10.0, 100.0]:
        blocks.append(rng.standard_normal(BLOCK) * scale)
    blocks.append(rng.uniform(-1.0, 1.0, BLOCK))
    blocks.append(rng.uniform(0.0, 3.0, BLOCK))  # all positive
    blocks.append(np.zeros(BLOCK))  # d = 0
    # Halves: with max 127 (Q8_0 d = 1) x · (1/d) lands exactly on .5 (rounding of ties).
    ties = np.arange(BLOCK) - 15.5
    ties[0] = 127.0
    blocks.append(ties)
    # Largest magnitude negative, and its magnitude again with the other sign later on
    # (the first of them sets Q4_0's and Q5_0's d).
    b = rng.standard_normal(BLOCK)
    b[5], b[20] = -4.0, 4.0
    blocks.append(b)
    b = rng.standard_normal(BLOCK)
    b[2], b[9] = 4.0, -4.0
    blocks.append(b)
    blocks.append(rng.standard_normal(BLOCK) * 1e-6)  # subnormal f16 scales
    b = rng.standard_normal(BLOCK) * 0.05
    b[17] = 30.0  # one outlier
    blocks.append(b)
    return np.concatenate(blocks).astype(np.float32)


def main() -> None:
    os.makedirs(OUT, exist_ok=True)
    for seed, (name, qtype) in enumerate(
        [
            ("q8_0", GGMLQuantizationType.Q8_0),
            ("q4_0", GGMLQuantizationType.Q4_0),
            ("q5_0", GGMLQuantizationType.Q5_0),
            ("q5_1", GGMLQuantizationType.Q5_1),
        ]
    ):
        x = rows(1000 + seed)
        blocks = quants.quantize(x.reshape(1, -1), qtype)
        deq = quants.dequantize(blocks, qtype).astype(np.float32).reshape(-1)
        assert deq.shape == x.shape
        x.astype("<f4").tofile(os.path.join(OUT, f"{name}_x.f32"))
        blocks.tofile(os.path.join(OUT, f"{name}.blocks"))
        deq.astype("<f4").tofile(os.path.join(OUT, f"{name}_deq.f32"))
        print(name, x.size, "values,", blocks.size, "bytes of blocks")


if __name__ == "__main__":
    main()
