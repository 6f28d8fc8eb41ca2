#!/usr/bin/env python3
"""Golden fixtures for the state-space mixers, from independent implementations.

Writes tests/fixtures/mixers/ssm.safetensors (f32 tensors named `<case>.<tensor>`), read by
tests/mixers_ssm.rs. CI never runs this script.

    /work/pyenv/bin/python tools/mixers/make_ssm_fixtures.py

Oracles (spec/mixers.md §10-13):
- transformers 5.x `MambaMixer` and `Mamba2Mixer` on CPU, which fall back to their pure-torch
  reference paths (the selective scan loop / the naive chunked SSD, and the single-token decode
  branch through a `DynamicCache`). Random small configurations; every parameter is saved under
  its transformers name (`mamba.in_proj.weight`, ...) in its transformers shape, so the crate's
  constructors from those arrays are what is tested. Each case stores the output of one whole
  call (`y`), the output of a prefill of `split` tokens followed by single-token decode steps
  (`y_cached`, transformers' other path) and the state after them: the conv state's last K - 1
  inputs as [K - 1, channels] and the SSM state in the crate's layout.
- float64 NumPy written from the papers, token by token: S4D (ZOH, complex and real diagonal,
  B = 1), the feedforward LMU (Voelker et al. 2019; ZOH of the augmented matrix through
  torch.linalg.matrix_exp in float64), HiPPO-LegT (Gu et al. 2020, orthonormal basis, ZOH) and
  HiPPO-LegS (the bilinear step of the HiPPO paper, c_0 = (f_0, 0, ...)), each with a per-channel
  read-out and skip.
"""

import math
import os
import warnings

import numpy as np
import torch
from safetensors.numpy import save_file

warnings.filterwarnings("ignore")

from transformers import DynamicCache, Mamba2Config, MambaConfig  # noqa: E402
from transformers.models.mamba.modeling_mamba import MambaMixer  # noqa: E402
from transformers.models.mamba2.modeling_mamba2 import Mamba2Mixer  # noqa: E402

OUT = os.path.join(os.path.dirname(__file__), "../../tests/fixtures/mixers/ssm.safetensors")
torch.manual_seed(0)
RNG = np.random.default_rng(0)
tensors = {}


def put(case, name, t):
    if isinstance(t, torch.Tensor):
        t = t.detach().to(torch.float32).numpy()
    tensors[f"{case}.{name}"] = np.ascontiguousarray(np.asarray(t, dtype=np.float32))


def perturb(mixer):
    """Moves the parameters away from their structured init so that every one matters."""
    with torch.no_grad():
        for name, p in mixer.named_parameters():
            if name == "A_log":
                p.add_(0.5 * torch.randn_like(p))
            elif name in ("D", "norm.weight"):
                p.copy_(1.0 + 0.5 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.add_(0.3 * torch.randn_like(p))


def run_mixer(case, mixer, config, t_len, split):
    perturb(mixer)
    mixer.eval()
    for name, p in mixer.named_parameters():
        put(case, name, p)
    x = torch.randn(1, t_len, config.hidden_size)
    with torch.no_grad():
        y = mixer(x)
        cache = DynamicCache(config=config)
        ys = [mixer(x[:, :split], cache=cache)]
        for t in range(split, t_len):
            ys.append(mixer(x[:, t : t + 1], cache=cache))
    put(case, "x", x[0])
    put(case, "split", [split])
    put(case, "y", y[0])
    put(case, "y_cached", torch.cat(ys, 1)[0])
    put(case, "conv_state", cache.get_conv_state(0)[0, :, 1:].T)  # [K - 1, channels]
    return cache.get_recurrent_state(0)[0]


def mamba():
    config = MambaConfig(
        hidden_size=16, state_size=8, expand=2, conv_kernel=4, time_step_rank=4, num_hidden_layers=1
    )
    state = run_mixer("mamba", MambaMixer(config, 0), config, 21, 13)
    put("mamba", "ssm_state", state)  # [E, N]
    # With in_proj / out_proj biases (`use_bias`).
    config = MambaConfig(
        hidden_size=8, state_size=4, expand=2, conv_kernel=4, time_step_rank=2, use_bias=True,
        num_hidden_layers=1,
    )
    state = run_mixer("mamba_bias", MambaMixer(config, 0), config, 9, 5)
    put("mamba_bias", "ssm_state", state)


def mamba2():
    config = Mamba2Config(
        hidden_size=16, state_size=8, expand=2, conv_kernel=4, head_dim=8, num_heads=4,
        n_groups=2, chunk_size=4, num_hidden_layers=1,
    )
    state = run_mixer("mamba2", Mamba2Mixer(config, 0), config, 21, 13)
    put("mamba2", "ssm_state", state.transpose(1, 2))  # [H, N, P]: key = state, value = head dim
    # Δ clamped by time_step_limit (the chunked path clamps, its decode branch does not: the
    # cached outputs are only compared up to the split).
    config = Mamba2Config(
        hidden_size=16, state_size=4, expand=2, conv_kernel=4, head_dim=4, num_heads=8,
        n_groups=1, chunk_size=8, num_hidden_layers=1, time_step_limit=(0.05, 0.5),
    )
    state = run_mixer("mamba2_limit", Mamba2Mixer(config, 0), config, 11, 11)
    put("mamba2_limit", "ssm_state", state.transpose(1, 2))


def s4d(case, h, m, t_len, complex_):
    log_dt = RNG.uniform(math.log(1e-3), math.log(1e-1), h) + 1.5  # larger steps: faster modes
    log_a_real = np.log(0.5) + 0.3 * RNG.standard_normal((h, m))
    a_imag = math.pi * np.arange(m)[None, :] + 0.2 * RNG.standard_normal((h, m))
    c = RNG.standard_normal((h, m, 2 if complex_ else 1)) * math.sqrt(0.5)
    d = RNG.standard_normal(h)
    x = RNG.standard_normal((t_len, h))
    a = -np.exp(log_a_real) + (1j * a_imag if complex_ else 0.0)
    cc = c[..., 0] + (1j * c[..., 1] if complex_ else 0.0)
    f = 2.0 if complex_ else 1.0
    dt = np.exp(log_dt)[:, None]
    a_bar = np.exp(dt * a)
    b_bar = (a_bar - 1.0) / a
    state = np.zeros((h, m), dtype=np.complex128)
    y = np.zeros((t_len, h))
    for t in range(t_len):
        state = a_bar * state + b_bar * x[t][:, None]
        y[t] = f * np.real((cc * state).sum(-1)) + d * x[t]
    for name, v in [("log_dt", log_dt), ("log_A_real", log_a_real), ("C", c), ("D", d), ("x", x), ("y", y)]:
        put(case, name, v)
    if complex_:
        put(case, "A_imag", a_imag)
    put(case, "state", np.stack([state.real, state.imag], -1))


def zoh(a, b):
    """exp([[A, B], [0, 0]]) = [[A_bar, B_bar], [0, 1]] (torch's matrix_exp, float64)."""
    n = a.shape[0]
    m = np.zeros((n + 1, n + 1))
    m[:n, :n] = a
    m[:n, n] = b
    e = torch.linalg.matrix_exp(torch.from_numpy(m)).numpy()
    return e[:n, :n], e[:n, n]


def lmu_matrices(q, theta):
    """Voelker et al. 2019, eq. (2): the Legendre delay network."""
    a = np.zeros((q, q))
    for i in range(q):
        for j in range(q):
            a[i, j] = (2 * i + 1) / theta * (-1.0 if i < j else (-1.0) ** (i - j + 1))
    b = np.array([(2 * i + 1) * (-1.0) ** i / theta for i in range(q)])
    return a, b


def legt_matrices(n, theta):
    """HiPPO-LegT (Gu et al. 2020) in the orthonormal basis: dc/dt = A c + B f."""
    r = np.sqrt(2 * np.arange(n) + 1)
    a = np.zeros((n, n))
    for i in range(n):
        for k in range(n):
            a[i, k] = -r[i] * r[k] / theta * ((-1.0) ** (i - k) if k <= i else 1.0)
    return a, r * (-1.0) ** np.arange(n) / theta


def lmu(case, c, dm, q, theta, t_len):
    a_bar, b_bar = zoh(*lmu_matrices(q, theta))
    enc = RNG.uniform(-1, 1, (dm, c))
    wm = RNG.uniform(-1, 1, (c, dm * q)) / math.sqrt(dm * q)
    wx = RNG.uniform(-1, 1, (c, c)) / math.sqrt(c)
    bias = RNG.uniform(-0.1, 0.1, c)
    x = RNG.standard_normal((t_len, c))
    m = np.zeros((dm, q))
    y = np.zeros((t_len, c))
    for t in range(t_len):
        u = enc @ x[t]
        m = m @ a_bar.T + u[:, None] * b_bar[None, :]
        y[t] = np.tanh(wx @ x[t] + wm @ m.reshape(-1) + bias)
    for name, v in [("encoder", enc), ("memory_kernel", wm), ("input_kernel", wx), ("bias", bias),
                    ("x", x), ("y", y), ("state", m), ("theta", [theta])]:
        put(case, name, v)


def readout(case, n, c, t_len):
    w = RNG.standard_normal((c, n)) / math.sqrt(n)
    d = RNG.standard_normal(c)
    x = RNG.standard_normal((t_len, c))
    for name, v in [("W", w), ("D", d), ("x", x)]:
        put(case, name, v)
    return w, d, x


def legt(case, c, n, theta, t_len):
    a_bar, b_bar = zoh(*legt_matrices(n, theta))
    w, d, x = readout(case, n, c, t_len)
    s = np.zeros((c, n))
    y = np.zeros((t_len, c))
    for t in range(t_len):
        s = s @ a_bar.T + x[t][:, None] * b_bar[None, :]
        y[t] = (w * s).sum(-1) + d * x[t]
    put(case, "y", y)
    put(case, "state", s)
    put(case, "theta", [theta])


def legs(case, c, n, t_len):
    r = np.sqrt(2 * np.arange(n) + 1)
    a = np.where(np.arange(n)[:, None] > np.arange(n)[None, :], r[:, None] * r[None, :], 0.0)
    a += np.diag(np.arange(n) + 1.0)
    b = r
    w, d, x = readout(case, n, c, t_len)
    s = np.zeros((c, n))
    y = np.zeros((t_len, c))
    eye = np.eye(n)
    for t in range(t_len):
        if t == 0:
            s = np.zeros((c, n))
            s[:, 0] = x[0]
        else:
            ak, bk = a / t, b / t
            rhs = s @ (eye - ak / 2).T + x[t][:, None] * bk[None, :]
            s = np.linalg.solve(eye + ak / 2, rhs.T).T
        y[t] = (w * s).sum(-1) + d * x[t]
    put(case, "y", y)
    put(case, "state", s)


mamba()
mamba2()
s4d("s4d", 3, 4, 40, True)
s4d("s4d_real", 2, 3, 17, False)
s4d("s4d_long", 2, 3, 300, True)
lmu("lmu", 4, 2, 6, 12.0, 40)
legt("legt", 3, 8, 20.0, 40)
legs("legs", 3, 8, 40)

save_file(tensors, OUT)
print(f"wrote {len(tensors)} tensors, {os.path.getsize(OUT)} bytes to {OUT}")
