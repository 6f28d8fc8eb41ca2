"""Train a small byte-level RWKV-6 model on CPU and export it in BlinkDL naming.

Vocabulary: 257 ids, id = byte + 1, id 0 = end of text (the RWKV World ids of single bytes).
Training samples: random windows of ctx+1 bytes from train.txt. Validation: valid.txt is run
as one stream (state carried across windows), bits per byte = mean CE / ln 2.

    /work/venv/bin/python tools/train/train.py --data /work/data/kjv --out /work/data/run1 \
        --layers 6 --width 192 --head-size 32 --minutes 50
    (see README.md for the command used for the shipped model)
"""
import argparse
import json
import math
import os
import sys
import time

# OpenMP threads that spin-wait collapse when the 2 cores are shared with other work
# (measured 8-12 s/step instead of ~1 s/step); passive waiting avoids that.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rwkv6 import RWKV6  # noqa: E402

V = 257


def encode(b: bytes) -> np.ndarray:
    return np.frombuffer(b, dtype=np.uint8).astype(np.int64) + 1


@torch.no_grad()
def eval_bpb(model, ids, window=256, chunk=16, limit=None):
    """Mean cross-entropy of ids[1:] given ids[:-1] in bits/byte, one stream, state carried."""
    model.eval()
    ids = torch.as_tensor(ids[: limit or len(ids)], dtype=torch.long)
    state = None
    tot, n = 0.0, 0
    for s in range(0, len(ids) - 1, window):
        x = ids[s : min(s + window, len(ids) - 1)].view(1, -1)
        y = ids[s + 1 : s + 1 + x.shape[1]]
        logits, state = model(x, state, chunk=chunk)
        tot += F.cross_entropy(logits[0].double(), y, reduction="sum").item()
        n += len(y)
    model.train()
    return tot / n / math.log(2)


def param_groups(model, wd):
    decay, no_decay, fast = [], [], []
    for n, p in model.named_parameters():
        if n.endswith("time_decay") or n.endswith("time_faaaa"):
            fast.append(p)  # RWKV-LM trains these with a larger LR
        elif p.dim() >= 2 and n.endswith(".weight") and "emb" not in n:
            decay.append(p)
        else:
            no_decay.append(p)
    return [
        dict(params=decay, weight_decay=wd, lr_scale=1.0),
        dict(params=no_decay, weight_decay=0.0, lr_scale=1.0),
        dict(params=fast, weight_decay=0.0, lr_scale=2.0),
    ]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--width", type=int, default=192)
    ap.add_argument("--head-size", type=int, default=32)
    ap.add_argument("--dmix", type=int, default=32)
    ap.add_argument("--ddecay", type=int, default=64)
    ap.add_argument("--ctx", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--chunk", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--lr-final", type=float, default=1e-4)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--wd", type=float, default=0.1)
    ap.add_argument("--steps", type=int, default=0, help="total steps (0: schedule by wall time)")
    ap.add_argument("--minutes", type=float, default=50.0,
                    help="wall-time budget if --steps=0: the cosine LR schedule runs over elapsed time")
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bench", type=int, default=0, help="only time this many steps")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # exp() of large negative log-decays gives denormals: very slow on CPU
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    os.makedirs(args.out, exist_ok=True)

    train = encode(open(os.path.join(args.data, "train.txt"), "rb").read())
    valid = encode(open(os.path.join(args.data, "valid.txt"), "rb").read())
    print(f"train {len(train)} bytes, valid {len(valid)} bytes", flush=True)

    C = args.width
    model = RWKV6(V, C, args.layers, C // args.head_size, Dm=args.dmix, Dd=args.ddecay)
    model.init_weights()
    nparams = sum(p.numel() for p in model.parameters())
    print(f"shape L={args.layers} C={C} H={model.H} N={model.N} F={model.Fd} Dm={args.dmix} Dd={args.ddecay}"
          f" params={nparams}", flush=True)

    opt = torch.optim.AdamW(param_groups(model, args.wd), lr=args.lr, betas=(0.9, 0.99), eps=1e-8)
    T, B = args.ctx, args.batch
    starts_max = len(train) - T - 1

    def batch():
        st = rng.integers(0, starts_max, size=B)
        a = np.stack([train[s : s + T + 1] for s in st])
        a = torch.from_numpy(a)
        return a[:, :-1], a[:, 1:]

    def train_step(step, p):
        # p: progress in [0, 1] (fraction of steps, or of the wall-time budget)
        if step < args.warmup:
            lr = args.lr * (step + 1) / args.warmup
        else:
            lr = args.lr_final + 0.5 * (args.lr - args.lr_final) * (1 + math.cos(math.pi * min(p, 1.0)))
        for g in opt.param_groups:
            g["lr"] = lr * g["lr_scale"]
        x, y = batch()
        logits, _ = model(x, chunk=args.chunk)
        loss = F.cross_entropy(logits.view(-1, V), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss.item(), lr

    if args.bench:
        train_step(0, 0.0)
        t0 = time.time()
        for i in range(args.bench):
            train_step(1 + i, 0.0)
        dt = (time.time() - t0) / args.bench
        print(f"BENCH {dt:.3f} s/step, {B * T / dt:.0f} tok/s", flush=True)
        return

    t_start = time.time()
    budget = args.minutes * 60
    log = []
    ema = None
    step = 0
    while True:
        el = time.time() - t_start
        p = step / args.steps if args.steps else el / budget
        if p >= 1.0:
            break
        loss, lr = train_step(step, p)
        step += 1
        ema = loss if ema is None else 0.98 * ema + 0.02 * loss
        if step % 25 == 0:
            print(f"step {step} loss {loss:.4f} ema {ema:.4f} ({ema / math.log(2):.3f} bpb) lr {lr:.2e} "
                  f"{el / 60:.1f} min", flush=True)
        if step % args.eval_every == 0:
            vb = eval_bpb(model, valid, limit=20000)
            print(f"EVAL step {step} valid[:20000] {vb:.4f} bpb", flush=True)
            log.append(dict(step=step, train_loss_ema=ema, valid20k_bpb=vb, minutes=(time.time() - t_start) / 60))
            torch.save(model.state_dict(), os.path.join(args.out, "model.pt"))
    total = step
    wall_train = time.time() - t_start
    torch.save(model.state_dict(), os.path.join(args.out, "model.pt"))
    vb = eval_bpb(model, valid)
    print(f"EVAL final valid {vb:.4f} bpb", flush=True)
    log.append(dict(step=step, train_loss_ema=ema, valid_bpb=vb, minutes=(time.time() - t_start) / 60))
    wall = time.time() - t_start
    info = dict(
        command=" ".join(["python"] + sys.argv),
        steps=total,
        tokens_seen=total * B * T,
        wall_seconds_training=round(wall_train),
        wall_seconds_with_final_eval=round(wall),
        params=nparams,
        final_train_loss_ema_nats=ema,
        final_train_bpb_ema=ema / math.log(2),
        valid_bpb_f32=log[-1]["valid_bpb"],
        shape=dict(V=V, L=args.layers, C=C, H=model.H, N=model.N, F=model.Fd, Dm=args.dmix, Dd=args.ddecay),
        args=vars(args),
        log=log,
    )
    json.dump(info, open(os.path.join(args.out, "train_info.json"), "w"), indent=1)
    print("DONE", json.dumps({k: v for k, v in info.items() if k != "log"}), flush=True)


if __name__ == "__main__":
    main()
