#!/usr/bin/env python3
"""Writes tests/fixtures/quant/v7-a.q8_0.gguf: the v7-a fixture model as llama.cpp's `rwkv7`
GGUF (tools/formats/make_gguf.py's conversion), with every block projection (time mix key,
value, receptance, output; channel mix key, value) stored as Q8_0 blocks made by the gguf
package's own quantizer (`gguf.quants.quantize`); every other tensor F32.

tests/quant_load.rs loads it and checks its blocks and logits against the crate's reading of
the F32 file quantized at load: the layout (GGUF's innermost-first dims, rows of blocks) is
the one the gguf package writes.

Usage: make_quant_gguf.py [REPO_ROOT]   (run with a Python that has numpy, safetensors, gguf)
"""

import sys
from pathlib import Path

import gguf

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "formats"))
import make_gguf  # noqa: E402

PROJECTIONS = {
    "time_mix_key",
    "time_mix_value",
    "time_mix_receptance",
    "time_mix_output",
    "channel_mix_key",
    "channel_mix_value",
}


def storage_type(tmap, name, data, outtype):
    """Q8_0 for the block projections, F32 for everything else."""
    stem = name[: -len(".weight")].split(".")[-1] if name.endswith(".weight") else ""
    if name.startswith("blk.") and stem in PROJECTIONS and data.ndim == 2:
        return gguf.GGMLQuantizationType.Q8_0
    return make_gguf.F32


def main():
    root = Path(sys.argv[1] if len(sys.argv) > 1 else ".").resolve()
    out = root / "tests/fixtures/quant"
    out.mkdir(parents=True, exist_ok=True)
    make_gguf.storage_type = storage_type
    make_gguf.write(
        root / "tests/fixtures/v7-a/model.safetensors",
        out / "v7-a.q8_0.gguf",
        make_gguf.F32,
    )


if __name__ == "__main__":
    main()
