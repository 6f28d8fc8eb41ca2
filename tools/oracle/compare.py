#!/usr/bin/env python3
"""Compare logits written by the crate with the official ground truth.

Usage:
  compare.py EXPECTED.safetensors ACTUAL.safetensors [--tol 1e-4] [--key logits_seq]

EXPECTED is a file written by run_official.py. ACTUAL holds one f32 tensor
`logits` of shape [T, V] (it may also hold `tokens`, which is then checked
against the expected token list). Prints max |actual - expected| against both
official modes (logits_seq and logits_step) and exits with status 1 if the
difference against --key exceeds --tol (status 2 for malformed input).
Only numpy and safetensors are needed (no torch).
"""

import argparse
import sys

import numpy as np
from safetensors.numpy import load_file


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("expected", help="expected.safetensors from run_official.py")
    p.add_argument("actual", help="safetensors file with a `logits` [T,V] tensor")
    p.add_argument("--tol", type=float, default=1e-4, help="max allowed |difference| (default 1e-4)")
    p.add_argument("--key", default="logits_seq", choices=["logits_seq", "logits_step"],
                   help="expected tensor that decides pass/fail (default logits_seq)")
    args = p.parse_args()

    exp = load_file(args.expected)
    act = load_file(args.actual)

    if "logits" not in act:
        print(f"error: {args.actual} has no tensor `logits` (has: {sorted(act)})")
        return 2
    logits = act["logits"].astype(np.float64)

    if "tokens" in act and "tokens" in exp:
        if not np.array_equal(act["tokens"].astype(np.int64), exp["tokens"].astype(np.int64)):
            print("error: the token lists differ")
            return 2

    diffs = {}
    for key in ("logits_seq", "logits_step"):
        ref = exp[key].astype(np.float64)
        if ref.shape != logits.shape:
            print(f"error: shape mismatch: actual {list(logits.shape)} vs {key} {list(ref.shape)}")
            return 2
        d = np.abs(logits - ref)
        if not np.all(np.isfinite(d)):
            diffs[key] = float("inf")
        else:
            diffs[key] = float(d.max())
        print(f"max |logits - {key}| = {diffs[key]:.3e}")

    worst = diffs[args.key]
    if worst > args.tol:
        # point at the first offending position to help debugging
        ref = exp[args.key].astype(np.float64)
        d = np.abs(logits - ref)
        d[~np.isfinite(d)] = np.inf
        t, v = np.unravel_index(int(np.argmax(d)), d.shape)
        print(f"FAIL: {worst:.3e} > tol {args.tol:g} (worst at t={t}, token id {v}: "
              f"actual {logits[t, v]:.6g}, expected {ref[t, v]:.6g})")
        return 1
    print(f"OK: {worst:.3e} <= tol {args.tol:g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
