"""Export a trained tools/train/train.py run to an f16 safetensors checkpoint (BlinkDL names).

    /work/venv/bin/python tools/train/export.py --run /work/data/run1 --data /work/data/kjv \
        --heldout tests/fixtures/heldout/kjv-genesis-50.txt \
        --out assets/models/kjv-rwkv6-6x192.safetensors

Every tensor is stored as f16 (checked: no value overflows, and the relative rounding error
is reported). The validation numbers written into the metadata and printed here are computed
from the *exported, rounded* weights (f16 -> f32, f32 arithmetic), not from the f32 training
weights. The held-out fixture number is the mean cross-entropy, in bits per byte, of bytes
1..n-1 of the file given the bytes before them, starting from the zero state, run in
windows of 256 tokens carrying the state (what tests/shipped_model.rs recomputes with the crate).
"""
import argparse
import json
import math
import os
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rwkv6 import RWKV6  # noqa: E402
from train import encode, eval_bpb  # noqa: E402


@torch.no_grad()
def heldout_bpb(model, path, window=256):
    data = encode(open(path, "rb").read())
    return eval_bpb(model, data, window=window), len(data)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", required=True, help="train.py --out directory (model.pt, train_info.json)")
    ap.add_argument("--data", required=True, help="get_text.sh output directory")
    ap.add_argument("--heldout", required=True, help="held-out fixture text file")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(2)
    torch.set_flush_denormal(True)

    info = json.load(open(os.path.join(args.run, "train_info.json")))
    sd = torch.load(os.path.join(args.run, "model.pt"), map_location="cpu")
    out = {}
    worst_rel = 0.0
    for k in sorted(sd.keys()):  # (safetensors stores the keys sorted anyway)
        t = sd[k].float().contiguous()
        h = t.half()
        assert torch.isfinite(h).all(), f"{k} overflows f16"
        rel = ((h.float() - t).abs().max() / t.abs().max().clamp_min(1e-30)).item()
        worst_rel = max(worst_rel, rel)
        out[k] = h.contiguous()
    print(f"{len(out)} tensors, worst max-abs rounding error relative to the tensor's max: {worst_rel:.2e}")

    # evaluate the rounded weights
    model = RWKV6.from_state_dict(load_file_like(out))
    model.eval()
    f32_model = RWKV6.from_state_dict(sd)
    f32_model.eval()
    valid = encode(open(os.path.join(args.data, "valid.txt"), "rb").read())
    vb16 = eval_bpb(model, valid)
    vb32 = eval_bpb(f32_model, valid)
    hb, hn = heldout_bpb(model, args.heldout)
    print(f"valid.txt ({len(valid)} bytes): {vb16:.5f} bpb (f16 export), {vb32:.5f} bpb (f32 training weights)")
    print(f"heldout {args.heldout} ({hn} bytes): {hb:.6f} bpb (f16 export)")

    s = info["shape"]
    meta = {
        "format": "RWKV-6 (x060) checkpoint, BlinkDL tensor names, f16",
        "architecture": "rwkv6",
        "vocab": "bytes: 257 ids, id = byte + 1, id 0 = end of text (RWKV World ids of single bytes)",
        "shape": json.dumps(s),
        "params": str(info["params"]),
        "corpus": "King James Version of the Bible (public domain), Debian packages bible-kjv + "
                  "bible-kjv-text 4.38, via tools/train/get_text.sh: verse text only, one verse per line, "
                  "chapters separated by an empty line; every 50th chapter held out",
        "training_command": info["command"],
        "steps": str(info["steps"]),
        "tokens_seen": str(info["tokens_seen"]),
        "context_length": str(info["args"]["ctx"]),
        "batch_size": str(info["args"]["batch"]),
        "training_wall_seconds": str(info["wall_seconds_training"]),
        "training_hardware": "2 CPU cores (shared), torch f32",
        "final_train_loss_ema_nats_per_byte": f"{info['final_train_loss_ema_nats']:.4f}",
        "valid_bits_per_byte": f"{vb16:.4f}",
        "valid_bits_per_byte_note": "valid.txt of get_text.sh (86145 bytes, 23 held-out chapters), "
                                    "computed with these f16 weights in f32 arithmetic, one stream from the zero state",
        "heldout_fixture_bits_per_byte": f"{hb:.6f}",
        "license_of_text": "public domain (KJV, 1611)",
        "made_by": "tools/train (train.py, export.py)",
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    save_file(out, args.out, metadata=meta)
    print(f"wrote {args.out}: {os.path.getsize(args.out)} bytes")
    print(json.dumps(meta, indent=1))


def load_file_like(tensors):
    return {k: v.float() for k, v in tensors.items()}


if __name__ == "__main__":
    main()
