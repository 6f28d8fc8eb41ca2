#!/usr/bin/env python3
"""Write a random-weight RWKV model in the real BlinkDL checkpoint format.

Outputs, for --out PATH:
  PATH.pth          torch.save of a plain dict name -> fp32 tensor, keys in the
                    order the RWKV-LM training code registers its parameters
                    (this order matters for the official loader's version
                    detection)
  PATH.safetensors  the same tensors (same names, same shapes), fp32, contiguous,
                    written by st_write.py (sorted header, byte-reproducible)

Supported versions: 4, 5.0, 5.1, 5.2, 6 (the v4..v6 class of the official
`rwkv` package) and 7 (its RWKV_x070 class). All random draws come from one
numpy Generator seeded with --seed, so the output is a pure function of the
command line.

Value ranges imitate trained checkpoints so that activations stay O(1) and the
decays cover both slow and fast channels:
  * mixing coefficients (time_mix_* / time_maa_*): uniform [0, 1]
  * layer norm weights 1 + 0.1 N(0,1), biases 0.05 N(0,1)
  * v4 time_decay uniform [-6, 2] (w = -exp(td) in [-7.4, -0.0025]),
    v4 time_first uniform [-1, 1]
  * v5/v6 time_decay uniform [-8, 1.3] (exp(-exp(td)) in about [0.025, 0.9997])
  * v5.0/5.1 time_first (log of the bonus) uniform [-3, 0.5]
  * v5.2/v6 time_faaaa (the bonus itself) uniform [-0.5, 1]
  * nn.Linear weights [out, in] ~ N(0,1)/sqrt(in); head ~ N(0,1)/sqrt(C)
  * v6 LoRA matrices ~ lora_scale * N(0,1)/sqrt(in) (default lora_scale 0.5,
    large enough that the data-dependent terms visibly change the logits)
  * v7: x_* uniform [0, 1]; w0 uniform [-7, 2] (decay exp(-0.606531 sigmoid(.))
    from 0.9995 down to 0.59); a0, v0 uniform [-1, 1] (learning rate and
    value-residual mix around 0.5); k_k uniform [0.7, 1]; k_a uniform
    [0.8, 1.2]; r_k ~ 0.1 N(0,1); the w/a/v LoRAs ~ lora_scale * N(0,1)/sqrt(in);
    g1 ~ N(0,1)/sqrt(C), g2 ~ N(0,1)/sqrt(Dg) (the gate varies with the input)
  * embedding ~ 0.1 N(0,1) (ln0 normalises it at load time)
"""

import argparse
import os
import shlex
import sys

import numpy as np
import torch

from st_write import write_safetensors  # deterministic writer next to this script

VERSIONS = ["4", "5.0", "5.1", "5.2", "6", "7"]


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", required=True, choices=VERSIONS)
    p.add_argument("--n-layer", type=int, required=True)
    p.add_argument("--n-embd", type=int, required=True)
    p.add_argument("--head-size", type=int, default=64,
                   help="head size N (ignored for v4); n_head = n_embd / N")
    p.add_argument("--vocab", type=int, required=True)
    p.add_argument("--ffn", type=int, default=None,
                   help="FFN size; default 4C for v4/5.0/5.1/7, int(3.5C)//32*32 for v5.2/v6")
    p.add_argument("--lora-mix", type=int, default=32, help="v6 time_maa LoRA dim (D_mix)")
    p.add_argument("--lora-decay", type=int, default=64,
                   help="v6 time_decay / v7 w LoRA dim (D_decay)")
    p.add_argument("--lora-a", type=int, default=64, help="v7 a (learning rate) LoRA dim")
    p.add_argument("--lora-v", type=int, default=32, help="v7 v (value residual) LoRA dim")
    p.add_argument("--lora-g", type=int, default=128, help="v7 g (gate) LoRA dim")
    p.add_argument("--omit-block0-v", action="store_true",
                   help="v7: leave out blocks.0.att.v0/v1/v2 (never used; some files omit them)")
    p.add_argument("--lora-scale", type=float, default=0.5,
                   help="v6/v7 LoRA weights are lora_scale * N(0,1)/sqrt(in)")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--out", required=True, help="output path without extension")
    return p.parse_args()


class Gen:
    """Small helper around a seeded numpy Generator that returns fp32 torch tensors."""

    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)

    def _t(self, a):
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))

    def normal(self, shape, std=1.0, mean=0.0):
        return self._t(mean + std * self.rng.standard_normal(shape))

    def uniform(self, shape, lo, hi):
        return self._t(self.rng.uniform(lo, hi, shape))

    def linear(self, n_out, n_in):
        # nn.Linear layout [out, in], variance 1/in keeps activations O(1)
        return self.normal((n_out, n_in), std=1.0 / np.sqrt(n_in))

    def ln(self, c):
        # (weight, bias) of a LayerNorm / GroupNorm affine
        return self.normal((c,), std=0.1, mean=1.0), self.normal((c,), std=0.05)


def build(args):
    """Return a list of (name, tensor) in BlinkDL (RWKV-LM state_dict) order."""
    ver = args.version
    C = args.n_embd
    V = args.vocab
    L = args.n_layer
    if ver == "4":
        H = N = None
    else:
        if C % args.head_size != 0:
            sys.exit(f"n_embd {C} is not a multiple of head_size {args.head_size}")
        N = args.head_size
        H = C // N
    if args.ffn is not None:
        F = args.ffn
    elif ver in ("4", "5.0", "5.1", "7"):
        F = 4 * C
    else:
        F = int(3.5 * C) // 32 * 32
    Dm, Dd = args.lora_mix, args.lora_decay

    g = Gen(args.seed)
    out = []

    def add(name, t):
        out.append((name, t))

    def mix(name):
        # per-channel mixing coefficient, stored [1,1,C] like the checkpoints
        add(name, g.uniform((1, 1, C), 0.0, 1.0))

    add("emb.weight", g.normal((V, C), std=0.1))

    for i in range(L):
        b = f"blocks.{i}."
        # Block.__init__ registers ln1, ln2, then ln0 (layer 0 only), att, ffn
        for ln_name in ["ln1", "ln2"] + (["ln0"] if i == 0 else []):
            w, bias = g.ln(C)
            add(b + ln_name + ".weight", w)
            add(b + ln_name + ".bias", bias)

        a = b + "att."
        if ver == "4":
            # RWKV_TimeMix (v4): time_decay, time_first, time_mix_k/v/r, key, value, receptance, output
            add(a + "time_decay", g.uniform((C,), -6.0, 2.0))
            add(a + "time_first", g.uniform((C,), -1.0, 1.0))
            mix(a + "time_mix_k")
            mix(a + "time_mix_v")
            mix(a + "time_mix_r")
            add(a + "key.weight", g.linear(C, C))
            add(a + "value.weight", g.linear(C, C))
            add(a + "receptance.weight", g.linear(C, C))
            add(a + "output.weight", g.linear(C, C))
        elif ver in ("5.0", "5.1"):
            # RWKV_TimeMix_RWKV5_Preview: own parameters first (time_mix_k/v/r[/g],
            # time_decay [H], time_first [H]), then the submodules in registration
            # order: gate (5.1, registered first), receptance, key, value, output, ln_x
            mix(a + "time_mix_k")
            mix(a + "time_mix_v")
            mix(a + "time_mix_r")
            if ver == "5.1":
                mix(a + "time_mix_g")
            add(a + "time_decay", g.uniform((H,), -8.0, 1.3))
            # log-space bonus: the loader uses u = exp(time_first)
            add(a + "time_first", g.uniform((H,), -3.0, 0.5))
            if ver == "5.1":
                add(a + "gate.weight", g.linear(C, C))
            add(a + "receptance.weight", g.linear(C, C))
            add(a + "key.weight", g.linear(C, C))
            add(a + "value.weight", g.linear(C, C))
            add(a + "output.weight", g.linear(C, C))
            w, bias = g.ln(C)
            add(a + "ln_x.weight", w)
            add(a + "ln_x.bias", bias)
        elif ver == "5.2":
            # RWKV_TimeMix_RWKV5 (x052): time_mix_k/v/r/g, time_decay [H,N],
            # time_faaaa [H,N], receptance, key, value, output, gate, ln_x
            mix(a + "time_mix_k")
            mix(a + "time_mix_v")
            mix(a + "time_mix_r")
            mix(a + "time_mix_g")
            add(a + "time_decay", g.uniform((H, N), -8.0, 1.3))
            add(a + "time_faaaa", g.uniform((H, N), -0.5, 1.0))
            add(a + "receptance.weight", g.linear(C, C))
            add(a + "key.weight", g.linear(C, C))
            add(a + "value.weight", g.linear(C, C))
            add(a + "output.weight", g.linear(C, C))
            add(a + "gate.weight", g.linear(C, C))
            w, bias = g.ln(C)
            add(a + "ln_x.weight", w)
            add(a + "ln_x.bias", bias)
        elif ver == "7":
            # RWKV_Tmix_x070: x_r/w/k/v/a/g [1,1,C]; w1 [C,Dw], w2 [Dw,C], w0 [1,1,C];
            # a1, a2, a0; v1, v2, v0; g1 [C,Dg], g2 [Dg,C]; k_k, k_a [1,1,C]; r_k [H,N];
            # receptance, key, value, output; ln_x. LoRA matrices are stored [in, out].
            for s in "rwkvag":
                mix(a + "x_" + s)
            ls = args.lora_scale
            loras = [("w", args.lora_decay, -7.0, 2.0), ("a", args.lora_a, -1.0, 1.0),
                     ("v", args.lora_v, -1.0, 1.0)]
            for name, D, lo, hi in loras:
                if name == "v" and i == 0 and args.omit_block0_v:
                    continue
                add(a + name + "1", g.normal((C, D), std=ls / np.sqrt(C)))
                add(a + name + "2", g.normal((D, C), std=ls / np.sqrt(D)))
                add(a + name + "0", g.uniform((1, 1, C), lo, hi))
            add(a + "g1", g.normal((C, args.lora_g), std=1.0 / np.sqrt(C)))
            add(a + "g2", g.normal((args.lora_g, C), std=1.0 / np.sqrt(args.lora_g)))
            add(a + "k_k", g.uniform((1, 1, C), 0.7, 1.0))
            add(a + "k_a", g.uniform((1, 1, C), 0.8, 1.2))
            add(a + "r_k", g.normal((H, N), std=0.1))
            add(a + "receptance.weight", g.linear(C, C))
            add(a + "key.weight", g.linear(C, C))
            add(a + "value.weight", g.linear(C, C))
            add(a + "output.weight", g.linear(C, C))
            w, bias = g.ln(C)
            add(a + "ln_x.weight", w)
            add(a + "ln_x.bias", bias)
        else:  # v6
            # RWKV_Tmix_x060: time_maa_x/w/k/v/r/g, time_maa_w1 [C,5Dm],
            # time_maa_w2 [5,Dm,C], time_decay [1,1,C], time_decay_w1 [C,Dd],
            # time_decay_w2 [Dd,C], time_faaaa [H,N], receptance, key, value,
            # output, gate, ln_x. LoRA matrices are stored [in, out].
            for s in "xwkvrg":
                mix(a + "time_maa_" + s)
            ls = args.lora_scale
            add(a + "time_maa_w1", g.normal((C, 5 * Dm), std=ls / np.sqrt(C)))
            add(a + "time_maa_w2", g.normal((5, Dm, C), std=ls / np.sqrt(Dm)))
            add(a + "time_decay", g.uniform((1, 1, C), -8.0, 1.3))
            add(a + "time_decay_w1", g.normal((C, Dd), std=ls / np.sqrt(C)))
            add(a + "time_decay_w2", g.normal((Dd, C), std=ls / np.sqrt(Dd)))
            add(a + "time_faaaa", g.uniform((H, N), -0.5, 1.0))
            add(a + "receptance.weight", g.linear(C, C))
            add(a + "key.weight", g.linear(C, C))
            add(a + "value.weight", g.linear(C, C))
            add(a + "output.weight", g.linear(C, C))
            add(a + "gate.weight", g.linear(C, C))
            w, bias = g.ln(C)
            add(a + "ln_x.weight", w)
            add(a + "ln_x.bias", bias)

        f = b + "ffn."
        if ver == "7":
            # RWKV_CMix_x070: x_k [1,1,C], key [F,C], value [C,F]; no receptance
            mix(f + "x_k")
            add(f + "key.weight", g.linear(F, C))
            add(f + "value.weight", g.linear(C, F))
            continue
        # ChannelMix: time_mix_k/r (v6: time_maa_k/r), key [F,C], receptance [C,C], value [C,F]
        prefix = "time_maa_" if ver == "6" else "time_mix_"
        mix(f + prefix + "k")
        mix(f + prefix + "r")
        add(f + "key.weight", g.linear(F, C))
        add(f + "receptance.weight", g.linear(C, C))
        add(f + "value.weight", g.linear(C, F))

    w, bias = g.ln(C)
    add("ln_out.weight", w)
    add("ln_out.bias", bias)
    add("head.weight", g.normal((V, C), std=1.0 / np.sqrt(C)))

    info = {"n_head": H, "head_size": N, "n_ffn": F}
    return out, info


def main():
    args = parse_args()
    tensors, info = build(args)

    # names must be unique; the list order is the checkpoint order
    names = [n for n, _ in tensors]
    assert len(names) == len(set(names)), "duplicate tensor name"

    out_dir = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(out_dir, exist_ok=True)

    # .pth: a plain dict; Python dicts keep insertion order and torch.save keeps it too
    state = {n: t for n, t in tensors}
    torch.save(state, args.out + ".pth")

    # .safetensors: same names and shapes, fp32, contiguous. The metadata is
    # informational only (a loader must not need it).
    meta = {
        "format": "pt",
        "generator": "tools/oracle/make_model.py",
        "rwkv_version": args.version,
        "n_layer": str(args.n_layer),
        "n_embd": str(args.n_embd),
        "n_head": str(info["n_head"] or 0),
        "head_size": str(info["head_size"] or 0),
        "n_ffn": str(info["n_ffn"]),
        "vocab": str(args.vocab),
        "seed": str(args.seed),
        "command": shlex.join(sys.argv),
    }
    if args.version == "6":
        meta["lora_mix"] = str(args.lora_mix)
        meta["lora_decay"] = str(args.lora_decay)
        meta["lora_scale"] = repr(args.lora_scale)
    if args.version == "7":
        meta["lora_decay"] = str(args.lora_decay)
        meta["lora_a"] = str(args.lora_a)
        meta["lora_v"] = str(args.lora_v)
        meta["lora_g"] = str(args.lora_g)
        meta["lora_scale"] = repr(args.lora_scale)
        meta["block0_v"] = "absent" if args.omit_block0_v else "present"
    write_safetensors(args.out + ".safetensors", {n: t for n, t in tensors}, metadata=meta)

    n_params = sum(t.numel() for _, t in tensors)
    print(f"wrote {args.out}.pth and {args.out}.safetensors: v{args.version}, "
          f"{len(tensors)} tensors, {n_params} parameters")


if __name__ == "__main__":
    main()
