#!/usr/bin/env python3
"""Golden fixtures for the mixer family, from independent implementations.

Writes tests/fixtures/mixers/golden.safetensors (f32 tensors named `<case>.<tensor>`), read by
tests/mixer_golden.rs. CI never runs this script.

    /work/venv/bin/pip install flash-linear-attention==0.6.0 torchscale==0.3.0
    /work/venv/bin/pip install --no-deps fairscale==0.4.0 timm==0.6.13 pillow torchvision
    /work/venv/bin/python tools/mixers/make_fixtures.py

Oracles (spec/mixers.md §17):
- fla 0.6.0 naive functions (pure torch, CPU):
  linear_attn.naive.naive_recurrent_linear_attn   layout [B, T, H, D], scale argument, eps 1e-10
  retention.naive.naive_retention                 layout [B, H, T, D], q scaled by D^-1/2, zero state
  simple_gla.naive.naive_recurrent_simple_gla     layout [B, T, H, D], g = log decay per head
  gla.naive.naive_recurrent_gla                   layout [B, T, H, K], q always scaled by K^-1/2
  rwkv6.recurrent_naive.naive_recurrent_rwkv6     layout [B, H, T, K], w = log decay, scale 1.0
- torchscale 0.3.0 MultiScaleRetention (parallel_forward and recurrent_forward) with RetNetRelPos,
  layernorm_eps 1e-12 (its D~ and |sum R| row normalisations cancel under its affine-free
  RMSNorm only up to eps).

Layout and scaling traps handled here (§17.4): every tensor is saved in our layout [T, H*D] with
any q scale already applied (`q` is what our kernel reads), log-decays as log-decays, and
RWKV-6's exclusive read-out via fla's own function. The fla naive functions compute in f32.
"""

import os
import sys
import warnings

import numpy as np
import torch
from safetensors.numpy import save_file

warnings.filterwarnings("ignore")

import fla  # noqa: E402
import torchscale  # noqa: E402,F401
from fla.ops.gla.naive import naive_recurrent_gla  # noqa: E402
from fla.ops.linear_attn.naive import naive_recurrent_linear_attn  # noqa: E402
from fla.ops.retention.naive import naive_retention  # noqa: E402
from fla.ops.rwkv6.recurrent_naive import naive_recurrent_rwkv6  # noqa: E402
from fla.ops.simple_gla.naive import naive_recurrent_simple_gla  # noqa: E402
from torchscale.architecture.config import RetNetConfig  # noqa: E402
from torchscale.architecture.retnet import RetNetRelPos  # noqa: E402
from torchscale.component.multiscale_retention import MultiScaleRetention  # noqa: E402

OUT = os.path.join(os.path.dirname(__file__), "../../tests/fixtures/mixers/golden.safetensors")
torch.manual_seed(0)
tensors = {}


def put(case, name, t):
    """Stores `t` as f32, flattening [B=1, T, H, D] to [T, H*D] when `bthd`."""
    tensors[f"{case}.{name}"] = np.ascontiguousarray(t.detach().to(torch.float32).numpy())


def bthd(t):
    """[1, T, H, D] -> [T, H*D]."""
    return t[0].reshape(t.shape[1], -1)


def bhtd(t):
    """[1, H, T, D] -> [T, H*D]."""
    return t[0].transpose(0, 1).reshape(t.shape[2], -1)


def linear_attention(case, T, H, K, V):
    # The caller applies the feature map: elu + 1 > 0.
    q = torch.nn.functional.elu(torch.randn(1, T, H, K)) + 1
    k = torch.nn.functional.elu(torch.randn(1, T, H, K)) + 1
    v = torch.randn(1, T, H, V)
    s0 = torch.randn(1, H, K, V)
    z0 = torch.rand(1, 1, H, K) + 0.5
    o, (s, z) = naive_recurrent_linear_attn(
        q, k, v, scale=1.0, initial_state=(s0, z0), output_final_state=True, normalize=True
    )
    for n, t in [("q", q), ("k", k), ("v", v), ("o", o)]:
        put(case, n, bthd(t))
    put(case, "s0", s0[0])
    put(case, "z0", z0[0, 0])
    put(case, "s", s[0])
    put(case, "z", z[0, 0])


def retention(case, T, H, K, V):
    q, k, v = torch.randn(1, H, T, K), torch.randn(1, H, T, K), torch.randn(1, H, T, V)
    o = naive_retention(q, k, v)
    put(case, "q", bhtd(q * K**-0.5))
    put(case, "k", bhtd(k))
    put(case, "v", bhtd(v))
    put(case, "o", bhtd(o))


def simple_gla(case, T, H, K, V, data_dependent):
    q, k, v = torch.randn(1, T, H, K), torch.randn(1, T, H, K), torch.randn(1, T, H, V)
    if data_dependent:
        g = torch.nn.functional.logsigmoid(torch.randn(1, T, H) * 2)
    else:  # RetNet's gamma_h = 1 - 2^(-5-h), with a carried state
        gam = torch.log(1 - 2.0 ** (-5 - torch.arange(H, dtype=torch.float32)))
        g = gam.view(1, 1, H).expand(1, T, H).contiguous()
    s0 = torch.randn(1, H, K, V)
    o, s = naive_recurrent_simple_gla(q, k, v, g, scale=1.0, initial_state=s0, output_final_state=True)
    for n, t in [("q", q), ("k", k), ("v", v), ("o", o)]:
        put(case, n, bthd(t))
    put(case, "g", g[0])
    put(case, "s0", s0[0])
    put(case, "s", s[0])


def gla(case, T, H, K, V, strong):
    q, k, v = torch.randn(1, T, H, K), torch.randn(1, T, H, K), torch.randn(1, T, H, V)
    if strong:  # decays from ~1 to ~e^-50 per token
        gk = -torch.exp(torch.rand(1, T, H, K) * 8 - 4)
    else:
        gk = torch.nn.functional.logsigmoid(torch.randn(1, T, H, K) + 2) / 16
    s0 = torch.randn(1, H, K, V)
    o, s = naive_recurrent_gla(q, k, v, gk, initial_state=s0, output_final_state=True)
    put(case, "q", bthd(q * K**-0.5))  # fla scales q by K^-1/2 inside
    put(case, "k", bthd(k))
    put(case, "v", bthd(v))
    put(case, "gk", bthd(gk))
    put(case, "o", bthd(o))
    put(case, "s0", s0[0])
    put(case, "s", s[0])


def rwkv6(case, T, H, K, V):
    q, k, v = torch.randn(1, H, T, K), torch.randn(1, H, T, K), torch.randn(1, H, T, V)
    w = -torch.exp(torch.randn(1, H, T, K) * 1.5)  # log decay
    u = torch.randn(H, K)
    s0 = torch.randn(1, H, K, V)
    o, s = naive_recurrent_rwkv6(q, k, v, w, u, scale=1.0, initial_state=s0, output_final_state=True)
    for n, t in [("q", q), ("k", k), ("v", v), ("w", w), ("o", o)]:
        put(case, n, bhtd(t))
    put(case, "u", u.reshape(-1))
    put(case, "s0", s0[0])
    put(case, "s", s[0])


def torchscale_retnet(case, T, C, Vd, H):
    args = RetNetConfig(
        decoder_embed_dim=C,
        decoder_value_embed_dim=Vd,
        decoder_retention_heads=H,
        layernorm_eps=1e-12,
    )
    msr = MultiScaleRetention(args, C, Vd, H).eval()
    relpos = RetNetRelPos(args)
    x = torch.randn(1, T, C)
    with torch.no_grad():
        o_par = msr(x, relpos(T))
        state = {}
        rows = []
        for t in range(T):
            rows.append(msr(x[:, t : t + 1], relpos(t + 1, activate_recurrent=True), incremental_state=state))
        o_rec = torch.cat(rows, dim=1)
    put(case, "x", x[0])
    for n in ["q_proj", "k_proj", "v_proj", "g_proj", "out_proj"]:
        put(case, n, getattr(msr, n).weight)  # [out, in]
    put(case, "o_parallel", o_par[0])
    put(case, "o_recurrent", o_rec[0])


linear_attention("linear_attn", 64, 2, 8, 8)
retention("retention", 100, 2, 8, 8)
simple_gla("retention_state", 64, 2, 8, 8, data_dependent=False)
simple_gla("simple_gla", 64, 2, 8, 8, data_dependent=True)
gla("gla", 64, 2, 8, 8, strong=False)
gla("gla_strong", 64, 2, 8, 8, strong=True)
rwkv6("rwkv6", 64, 2, 8, 8)
torchscale_retnet("torchscale_retnet", 33, 16, 32, 2)

os.makedirs(os.path.dirname(OUT), exist_ok=True)
meta = {
    "command": "python tools/mixers/make_fixtures.py",
    "fla": fla.__version__,
    "torchscale": "0.3.0",
    "torch": torch.__version__,
    "python": sys.version.split()[0],
}
save_file(tensors, OUT, metadata=meta)
print(f"wrote {OUT}: {len(tensors)} tensors, {os.path.getsize(OUT)} bytes")
