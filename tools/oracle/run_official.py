#!/usr/bin/env python3
"""Run the official `rwkv` package (PyPI rwkv 0.8.32, strategy 'cpu fp32') on a
token list and save logits and final states as ground truth.

The model is given as PATH without extension; PATH.pth is loaded. A checkpoint
with RWKV-7 tensors (`blocks.0.att.r_k`) is run by the package's RWKV_x070
class (RWKV_V7_ON=1, which must be set before the import); any other by its
v4-v6 class.
The tokens are run twice from a zero state (state=None):
  (a) sequence mode: one call forward(tokens, None, full_output=True) -> [T,V]
  (b) token by token: T calls forward([tok], state), logits stacked -> [T,V]

Output safetensors tensors:
  tokens          int64 [T]
  logits_seq      f32 [T,V]
  logits_step     f32 [T,V]
  state_seq.{i}   f32, final state entry i of the official list after (a)
  state_step.{i}  f32, final state entry i after (b)
Metadata (str -> str): version (as detected by the official loader; "7" for
the x070 class, which records no version), n_layer,
n_embd, n_head, head_size (both 0 for v4), n_ffn, vocab, n_state,
rwkv_package_version, torch_version, command.
"""

import argparse
import os
import shlex
import sys

import numpy as np
import torch
from importlib.metadata import version as pkg_version

from st_write import write_safetensors  # deterministic writer next to this script


def import_rwkv(v7):
    """The package's model class. It reads these at import time: plain Python (no
    TorchScript; the x070 class scripts its functions regardless), no CUDA
    kernels, the v4-v6 class or RWKV_x070, and no forced fp16 rescaling."""
    os.environ["RWKV_JIT_ON"] = "0"
    os.environ["RWKV_CUDA_ON"] = "0"
    os.environ["RWKV_V7_ON"] = "1" if v7 else "0"
    os.environ.pop("RWKV_RESCALE_LAYER", None)
    os.environ.pop("RWKV_DE_VERSION", None)
    from rwkv.model import RWKV
    return RWKV


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="model path without .pth")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--tokens", help="comma-separated token ids, e.g. 1,2,3")
    g.add_argument("--n-tokens", type=int, help="draw this many random token ids in [0, V)")
    p.add_argument("--seed", type=int, default=0, help="seed for --n-tokens")
    p.add_argument("--out", required=True, help="output .safetensors file")
    p.add_argument("--expect-version", default=None,
                   help="fail unless the loader detects this version (e.g. 4, 5, 5.1, 5.2, 6)")
    p.add_argument("--max-self-diff", type=float, default=None,
                   help="fail if max |logits_seq - logits_step| exceeds this (the package must agree with itself)")
    return p.parse_args()


def version_string(v):
    # the loader stores 4, 5, 6 as ints and 5.1 / 5.2 as floats
    if float(v) == int(v):
        return str(int(v))
    return str(v)


def snapshot(state):
    # forward() replaces list entries in place and some entries are views into
    # larger tensors (e.g. xx[-1,:]), so keep independent contiguous f32 copies
    return [s.detach().to(torch.float32).clone().contiguous() for s in state]


def main():
    args = parse_args()
    torch.set_grad_enabled(False)

    keys = torch.load(args.model + ".pth", map_location="cpu", mmap=True).keys()
    v7 = "blocks.0.att.r_k" in keys
    RWKV = import_rwkv(v7)
    if v7:
        # RWKV_x070(model, strategy): no verbose flag, weights in model.z, no version field
        model = RWKV(model=args.model, strategy="cpu fp32")
        weights, ver = model.z, "7"
    else:
        model = RWKV(model=args.model, strategy="cpu fp32", verbose=False)
        weights, ver = model.w, version_string(model.version)
    a = model.args
    if args.expect_version is not None and ver != args.expect_version:
        sys.exit(f"official loader detected version {ver}, expected {args.expect_version}")

    V = weights["emb.weight"].shape[0]
    if args.tokens is not None:
        tokens = [int(t) for t in args.tokens.split(",") if t.strip() != ""]
    else:
        rng = np.random.default_rng(args.seed)
        tokens = [int(t) for t in rng.integers(0, V, size=args.n_tokens)]
    if len(tokens) < 2:
        sys.exit("need at least 2 tokens (a 1-token list takes the one-token path)")
    if min(tokens) < 0 or max(tokens) >= V:
        sys.exit(f"token id out of range [0, {V})")
    T = len(tokens)

    # (a) sequence mode, one call
    logits_seq, state = model.forward(list(tokens), None, full_output=True)
    logits_seq = logits_seq.detach().to(torch.float32).clone().contiguous()
    state_seq = snapshot(state)

    # (b) token by token
    state = None
    rows = []
    for tok in tokens:
        logits, state = model.forward([tok], state)
        rows.append(logits.detach().to(torch.float32).clone())
    logits_step = torch.stack(rows).contiguous()
    state_step = snapshot(state)

    assert logits_seq.shape == (T, V), logits_seq.shape
    assert logits_step.shape == (T, V), logits_step.shape
    assert len(state_seq) == len(state_step)

    if ver == "4":
        n_head, head_size = 0, 0
    elif v7:
        n_head, head_size = model.n_head, model.head_size
    else:
        n_head = a.n_head
        head_size = a.n_att // a.n_head
    # the x070 class keeps ffn.key.weight transposed, [C, F]
    n_ffn = weights["blocks.0.ffn.key.weight"].shape[1] if v7 else a.n_ffn

    tensors = {
        "tokens": torch.tensor(tokens, dtype=torch.int64),
        "logits_seq": logits_seq,
        "logits_step": logits_step,
    }
    for i, s in enumerate(state_seq):
        tensors[f"state_seq.{i}"] = s
    for i, s in enumerate(state_step):
        tensors[f"state_step.{i}"] = s

    meta = {
        "version": ver,
        "n_layer": str(a.n_layer),
        "n_embd": str(a.n_embd),
        "n_head": str(n_head),
        "head_size": str(head_size),
        "n_ffn": str(n_ffn),
        "vocab": str(V),
        "n_state": str(len(state_seq)),
        "rwkv_package_version": pkg_version("rwkv"),
        "torch_version": torch.__version__,
        "command": shlex.join(sys.argv),
    }

    d_logits = (logits_seq - logits_step).abs().max().item()
    d_state = max((x - y).abs().max().item() for x, y in zip(state_seq, state_step))
    shapes = ", ".join(f"{i}:{list(s.shape)}" for i, s in enumerate(state_seq[: len(state_seq) // a.n_layer]))
    print(f"{args.out}: detected v{ver}, T={T}, V={V}, n_layer={a.n_layer}, n_embd={a.n_embd}, "
          f"n_head={n_head}, head_size={head_size}")
    print(f"  state entries per layer: {shapes}")
    print(f"  max |logits_seq - logits_step| = {d_logits:.3e}")
    print(f"  max |state_seq - state_step|   = {d_state:.3e}")
    # refuse to write a fixture if the package disagrees with itself
    if args.max_self_diff is not None and d_logits > args.max_self_diff:
        sys.exit(f"sequence and step logits differ by {d_logits:.3e} > {args.max_self_diff:g}; nothing written")

    out_dir = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(out_dir, exist_ok=True)
    write_safetensors(args.out, tensors, metadata=meta)
    print(f"  wrote {args.out}")


if __name__ == "__main__":
    main()
