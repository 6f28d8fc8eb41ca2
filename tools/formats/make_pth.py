#!/usr/bin/env python3
"""Regenerate the PyTorch `.pth` files of the six "-a" test fixtures.

tools/oracle/make_fixtures.sh makes every fixture model with tools/oracle/make_model.py, which
writes the model twice: as the `.pth` that the official package ran on (never committed there)
and as the committed tests/fixtures/<name>/model.safetensors. This script runs make_model.py
again with the same command line (read from make_fixtures.sh's tables, so the seeds cannot
drift), and keeps the `.pth` as tests/fixtures/formats/pth/<name>.pth.

Before it writes anything it checks that every tensor of the `.pth` (read back with torch.load)
has exactly the names, shapes, dtype (f32) and bit patterns of the committed
model.safetensors, so the `.pth` is the very file the official package's expected logits were
computed from.

    /work/pyenv/bin/python tools/formats/make_pth.py

It also writes, under tests/fixtures/formats/pth/variants/, a few tiny files in the other
shapes torch.save gives a state dict (values from torch.arange, so a test can state them):

  state_dict_bf16.pth       an nn.Module's state_dict(): an OrderedDict with `_metadata`, bf16
  parameters_protocol4.pth  nn.Parameter values, pickle protocol 4 (FRAME, MEMOIZE,
                            STACK_GLOBAL, _rebuild_parameter), f16
  views.pth                 views sharing one storage (a row at an offset, the same tensor
                            under two names), a 0-d tensor and an int64 tensor
  transposed.pth            a transposed (non-contiguous) view, which the crate refuses

And it writes the seeds of the `pth_load` fuzz target, fuzz/seeds/pth_load/: the tiny files
above and the fuzz seeds of `model_load` (width 8, vocabulary 16) saved as `.pth`.

Needs torch, numpy and safetensors. Running it twice gives byte-identical files (torch.save
writes fixed zip timestamps).
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import torch
from safetensors import safe_open
from safetensors.numpy import load_file

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
ORACLE = os.path.join(ROOT, "tools", "oracle")
NAMES = ["v4-a", "v5.0-a", "v5.1-a", "v5.2-a", "v6-a", "v7-a"]


def fixture_commands():
    """name -> make_model.py arguments (less --out), from make_fixtures.sh's two tables."""
    text = open(os.path.join(ORACLE, "make_fixtures.sh")).read()
    commands = {}
    for table in ("FIXTURE_TABLE", "V7_TABLE"):
        body = re.search(table + r'="\n(.*?)\n"', text, re.S).group(1)
        for line in body.splitlines():
            f = line.split()
            if not f:
                continue
            if table == "FIXTURE_TABLE":
                name, ver, _det, L, C, N, V, DM, DD, mseed, _tseed = f
                args = ["--version", ver, "--n-layer", L, "--n-embd", C, "--head-size", N,
                        "--vocab", V, "--lora-mix", DM, "--lora-decay", DD, "--seed", mseed]
            else:
                name, L, C, N, V, DW, DA, DV, DG, block0, mseed, _tseed = f
                args = ["--version", "7", "--n-layer", L, "--n-embd", C, "--head-size", N,
                        "--vocab", V, "--lora-decay", DW, "--lora-a", DA, "--lora-v", DV,
                        "--lora-g", DG] + (["--omit-block0-v"] if block0 == "omit" else []) + \
                       ["--seed", mseed]
            commands[name] = args
    return commands


def same_values(pth, safetensors):
    """Fails unless the two files hold the same names, shapes and f32 bit patterns."""
    a = torch.load(pth, map_location="cpu", weights_only=True)
    b = load_file(safetensors)
    if sorted(a) != sorted(b):
        sys.exit(f"{pth}: tensor names differ from {safetensors}")
    for name, t in a.items():
        if t.dtype != torch.float32:
            sys.exit(f"{pth}: {name} is {t.dtype}, not float32")
        x = t.contiguous().numpy()
        y = b[name]
        if x.shape != y.shape or not np.array_equal(x.view(np.uint32), y.view(np.uint32)):
            sys.exit(f"{pth}: {name} differs from {safetensors}")


def variants(out_dir):
    """The tiny files of other state dict shapes (see the module's docstring)."""
    os.makedirs(out_dir, exist_ok=True)
    module = torch.nn.Linear(3, 2)
    with torch.no_grad():
        module.weight.copy_(torch.arange(6.0).reshape(2, 3) / 4)
        module.bias.copy_(torch.tensor([0.5, -1.5]))
    torch.save(module.to(torch.bfloat16).state_dict(),
               os.path.join(out_dir, "state_dict_bf16.pth"))
    params = {"p": torch.nn.Parameter(torch.arange(4, dtype=torch.float16)),
              "q": torch.nn.Parameter(-torch.arange(6, dtype=torch.float16).reshape(1, 2, 3))}
    torch.save(params, os.path.join(out_dir, "parameters_protocol4.pth"), pickle_protocol=4)
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    torch.save({"base": base, "row": base[1], "same": base, "scalar": torch.tensor(2.5),
                "ids": torch.arange(3)}, os.path.join(out_dir, "views.pth"))
    torch.save({"t": base.t()}, os.path.join(out_dir, "transposed.pth"))


def fuzz_seeds(variants_dir, out_dir):
    """fuzz/seeds/pth_load: the variants and the model_load seeds as .pth files."""
    os.makedirs(out_dir, exist_ok=True)
    for name in sorted(os.listdir(variants_dir)):
        shutil.copyfile(os.path.join(variants_dir, name), os.path.join(out_dir, name))
    seeds = os.path.join(ROOT, "fuzz", "seeds", "model_load")
    for name in ("v5.2-bf16", "v6-f32", "v7-f16"):
        with safe_open(os.path.join(seeds, name + ".safetensors"), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        torch.save(tensors, os.path.join(out_dir, name + ".pth"))


def main():
    python = sys.executable
    commands = fixture_commands()
    out_dir = os.path.join(ROOT, "tests", "fixtures", "formats", "pth")
    os.makedirs(out_dir, exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        for name in NAMES:
            stem = os.path.join(work, name, "model")
            os.makedirs(os.path.dirname(stem))
            subprocess.run([python, os.path.join(ORACLE, "make_model.py"), *commands[name],
                            "--out", stem], check=True, stdout=subprocess.DEVNULL)
            committed = os.path.join(ROOT, "tests", "fixtures", name, "model.safetensors")
            same_values(stem + ".safetensors", committed)
            same_values(stem + ".pth", committed)
            target = os.path.join(out_dir, name + ".pth")
            shutil.copyfile(stem + ".pth", target)
            print(f"{target}: {os.path.getsize(target)} bytes, same values as {committed}")
    variants(os.path.join(out_dir, "variants"))
    fuzz_seeds(os.path.join(out_dir, "variants"), os.path.join(ROOT, "fuzz", "seeds", "pth_load"))


if __name__ == "__main__":
    main()
