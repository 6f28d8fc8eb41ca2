#!/usr/bin/env python3
"""Golden fixtures for the recurrent networks, from independent implementations.

Writes tests/fixtures/mixers/rnn.safetensors (f32 tensors named `<case>.<tensor>`), read by
tests/mixers_rnn.rs. CI never runs this script.

    /work/pyenv/bin/python tools/mixers/make_rnn_fixtures.py

Oracles (spec/mixers.md §14):
- torch.nn.LSTM and torch.nn.GRU (one layer, CPU, float64) with their random initial weights,
  saved under their torch names (`weight_ih`, `weight_hh`, `bias_ih`, `bias_hh`), a random
  input `x` [T, I] and a random positive initial state (`h0`, and `c0` for the LSTM); the
  outputs `y` [T, H] and final states (`h`, `c`).
- float64 NumPy written from Feng et al. 2024 ("Were RNNs All We Needed?"), token by token in
  linear space: minGRU (`w_z`, `w_h`) and minLSTM (`w_f`, `w_i`, `w_h`) with
  g(x) = x + 0.5 (x >= 0), sigmoid(x) (x < 0), from a positive initial state `h0`.
"""

import os

import numpy as np
import torch
from safetensors.numpy import save_file

OUT = os.path.join(os.path.dirname(__file__), "../../tests/fixtures/mixers/rnn.safetensors")
torch.manual_seed(0)
RNG = np.random.default_rng(0)
T, I, H = 13, 8, 6
tensors = {}


def put(case, name, t):
    if isinstance(t, torch.Tensor):
        t = t.detach().numpy()
    tensors[f"{case}.{name}"] = np.ascontiguousarray(np.asarray(t, dtype=np.float32))


def f32(a):
    """Rounds to f32 (what the crate reads) and back to f64, so that the oracle sees the same
    numbers."""
    return np.asarray(a, dtype=np.float32).astype(np.float64)


def torch_case(case, module):
    module = module.double()
    x = torch.from_numpy(f32(RNG.standard_normal((T, I))))
    h0 = torch.from_numpy(f32(RNG.uniform(0.0, 1.0, (1, H))))
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.from_numpy(f32(p.numpy())))
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            put(case, name, getattr(module, name + "_l0"))
        put(case, "x", x)
        put(case, "h0", h0[0])
        if isinstance(module, torch.nn.LSTM):
            c0 = torch.from_numpy(f32(RNG.standard_normal((1, H))))
            put(case, "c0", c0[0])
            y, (h, c) = module(x, (h0, c0))
            put(case, "c", c[0])
        else:
            y, h = module(x, h0)
        put(case, "y", y)
        put(case, "h", h[0])


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def g(x):
    return np.where(x >= 0, x + 0.5, sigmoid(x))


def min_case(case, names, update):
    b = np.sqrt(3.0 / I)
    ws = [f32(RNG.uniform(-b, b, (H, I))) for _ in names]
    x = f32(RNG.standard_normal((T, I)))
    h = f32(RNG.uniform(0.0, 1.0, H))
    for n, w in zip(names, ws):
        put(case, n, w)
    put(case, "x", x)
    put(case, "h0", h)
    ys = []
    for t in range(T):
        h = update(h, *[w @ x[t] for w in ws])
        ys.append(h)
    put(case, "y", np.stack(ys))
    put(case, "h", h)


def min_gru(h, kz, kh):
    z = sigmoid(kz)
    return (1.0 - z) * h + z * g(kh)


def min_lstm(h, kf, ki, kh):
    f, i = sigmoid(kf), sigmoid(ki)
    return f / (f + i) * h + i / (f + i) * g(kh)


torch_case("lstm", torch.nn.LSTM(I, H))
torch_case("gru", torch.nn.GRU(I, H))
min_case("mingru", ["w_z", "w_h"], min_gru)
min_case("minlstm", ["w_f", "w_i", "w_h"], min_lstm)

save_file(tensors, OUT)
print(f"{OUT}: {len(tensors)} tensors, {os.path.getsize(OUT)} bytes")
