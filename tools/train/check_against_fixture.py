"""Check the training model's math (rwkv6.py) against the official `rwkv` package.

Loads tests/fixtures/v6-a/model.safetensors (an RWKV-6 checkpoint in BlinkDL naming),
runs the fixture's `tokens` through tools/train/rwkv6.py and compares with `logits_seq`
in tests/fixtures/v6-a/expected.safetensors (made with rwkv==0.8.32). Both WKV paths
(chunked, used in training, and token-by-token) and the carried state are checked, also
for chunk sizes that do not divide T and for a sequence split in two halves.

    /work/venv/bin/python tools/train/check_against_fixture.py
"""
import os
import sys

import torch
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rwkv6 import RWKV6  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
TOL = 1e-4


def main():
    fx = os.path.join(ROOT, "tests", "fixtures", "v6-a")
    sd = load_file(os.path.join(fx, "model.safetensors"))
    exp = load_file(os.path.join(fx, "expected.safetensors"))
    model = RWKV6.from_state_dict(sd)
    model.eval()
    tokens = exp["tokens"].long().view(1, -1)
    want = exp["logits_seq"].float()
    T = tokens.shape[1]
    worst = 0.0
    with torch.no_grad():
        for chunk in (0, 1, 5, 16, 32):  # 0 = token-by-token loop
            logits, st = model(tokens, chunk=chunk)
            err = (logits[0] - want).abs().max().item()
            # state: att prev, wkv s, ffn prev per layer == official state_seq.{3l+0,1,2}
            serr = max(
                (st[l][j][0] - exp[f"state_seq.{3 * l + j}"]).abs().max().item()
                for l in range(model.L)
                for j in range(3)
            )
            # the same sequence in two pieces, carrying the state
            h = T // 2 + 1
            l1, s1 = model(tokens[:, :h], chunk=chunk)
            l2, _ = model(tokens[:, h:], s1, chunk=chunk)
            perr = (torch.cat([l1, l2], 1)[0] - want).abs().max().item()
            print(f"chunk={chunk:2d}: max|logits-official|={err:.2e}  state={serr:.2e}  split={perr:.2e}")
            worst = max(worst, err, perr, serr / 2)
    if worst > TOL:
        print(f"FAIL: {worst:.2e} > {TOL}")
        sys.exit(1)
    print(f"OK (tolerance {TOL})")


if __name__ == "__main__":
    main()
