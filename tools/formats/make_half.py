#!/usr/bin/env python3
"""Half-precision fixtures: a bf16 and an f16 `.pth` of one random model per RWKV version, with
the logits the official package computes from each file.

For every version (4, 5.0, 5.1, 5.2, 6, 7) a random model is built by tools/oracle/make_model.py's
`build` (its value ranges, a seed per version), smaller than the "-a" fixtures to keep the files
small (2 layers, n_embd 32, vocabulary 64). Every value is then made exactly representable in
BOTH f16 and bf16: rounded to bf16 (8 significant bits, which f16's 11 hold too), and set to 0
where its magnitude is below 2^-14 (f16's smallest normal number, below which f16 keeps fewer
bits). Since the two files hold the same numbers, any difference between their official logits
comes from what the official loader does in the checkpoint's type (folding blocks.0.ln0 into
the embedding for v4-v6).

Each model is saved with torch.save as `model.pth` in tests/fixtures/half/<version>-bf16/ and
tests/fixtures/half/<version>-f16/, and tools/oracle/run_official.py runs the official package
(rwkv 0.8.32, strategy `cpu fp32`, JIT off, RWKV_V7_ON for v7) on that very file, writing
expected.safetensors beside it (24 tokens, sequence and token-by-token logits and final states,
the format of tools/oracle's expected files).

    /work/pyenv/bin/python tools/formats/make_half.py

The scratch directory for the `.pth` files the official package runs on is $HALF_WORK
(default /tmp/tokenshift-half, wiped first); its path ends up in the `command` metadata of the
expected files, so keep the default for byte-identical regeneration. Running it twice gives
byte-identical files.
"""

import argparse
import os
import shutil
import subprocess
import sys

import torch

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
ORACLE = os.path.join(ROOT, "tools", "oracle")
sys.path.insert(0, ORACLE)
from make_model import build  # noqa: E402  (tools/oracle/make_model.py)

TOKENS = 24
# version, directory name, head size, model seed, token seed
TABLE = [
    ("4", "v4", 16, 4301, 4311),
    ("5.0", "v5.0", 16, 5301, 5311),
    ("5.1", "v5.1", 16, 5321, 5331),
    ("5.2", "v5.2", 16, 5341, 5351),
    ("6", "v6", 16, 6301, 6311),
    ("7", "v7", 32, 7301, 7311),
]
DTYPES = {"bf16": torch.bfloat16, "f16": torch.float16}


def model_args(version, head_size, seed):
    """The arguments make_model.py would parse for a small model of `version`."""
    return argparse.Namespace(
        version=version, n_layer=2, n_embd=32, head_size=head_size, vocab=64, ffn=None,
        lora_mix=8, lora_decay=16, lora_a=16, lora_v=8, lora_g=16, omit_block0_v=False,
        lora_scale=0.5, seed=seed, out=None)


def representable(t):
    """`t` rounded to 8 significant bits, with magnitudes below 2^-14 set to 0: exact in both
    bf16 and f16."""
    r = t.to(torch.bfloat16).to(torch.float32)
    r = torch.where(r.abs() < 2.0 ** -14, torch.zeros_like(r), r)
    assert torch.equal(r.to(torch.float16).to(torch.float32), r)
    assert torch.equal(r.to(torch.bfloat16).to(torch.float32), r)
    return r


def main():
    python = sys.executable
    out_root = os.path.join(ROOT, "tests", "fixtures", "half")
    work = os.environ.get("HALF_WORK", "/tmp/tokenshift-half")
    shutil.rmtree(work, ignore_errors=True)
    for version, dirname, head_size, mseed, tseed in TABLE:
        tensors, _ = build(model_args(version, head_size, mseed))
        state = {name: representable(t) for name, t in tensors}
        for suffix, dtype in DTYPES.items():
            name = f"{dirname}-{suffix}"
            stem = os.path.join(work, name, "model")
            os.makedirs(os.path.dirname(stem))
            torch.save({n: t.to(dtype) for n, t in state.items()}, stem + ".pth")
            out_dir = os.path.join(out_root, name)
            os.makedirs(out_dir, exist_ok=True)
            expected = os.path.join(out_dir, "expected.safetensors")
            # the official loader reports v5.0 as "5"
            detected = "5" if version == "5.0" else version
            subprocess.run([python, os.path.join(ORACLE, "run_official.py"),
                            "--model", stem, "--n-tokens", str(TOKENS), "--seed", str(tseed),
                            "--expect-version", detected, "--max-self-diff", "1e-5",
                            "--out", expected], check=True, cwd=ORACLE)
            shutil.copyfile(stem + ".pth", os.path.join(out_dir, "model.pth"))
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
