"""Runs flash-linear-attention's own RWKV-7 model on tests/fixtures/formats/hf/v7-a and compares
its logits with the official ones of tests/fixtures/v7-a/expected.safetensors.

fla's kernels need triton on a GPU, so on CPU the layer's triton ops are replaced by fla's own
reference functions (token_shift_ref, torch_addcmul_rwkv7, k_update_ref,
gate_output_correction_ref) and the recurrence by a plain loop written here. Everything else
(parameter names and shapes loaded with strict=True, LoRA modules, GroupNorm eps, norms, head)
is fla's code.

    pip download --no-deps flash-linear-attention fla-core -d /tmp/fla   # then unzip both wheels
    pip install --target /tmp/pydeps einops
    PYTHONPATH=/tmp/fla:/tmp/pydeps python tools/formats/check_fla.py
"""

import json
import os
import warnings

import numpy as np
import torch
from safetensors.numpy import load_file as load_numpy
from safetensors.torch import load_file

warnings.filterwarnings("ignore")

import fla.layers.rwkv7 as layer  # noqa: E402
import fla.models.rwkv7.modeling_rwkv7 as modeling  # noqa: E402
from fla.models.rwkv7 import RWKV7Config, RWKV7ForCausalLM  # noqa: E402
from fla.modules.token_shift import token_shift_ref  # noqa: E402
from fla.ops.rwkv7.fused_addcmul import torch_addcmul_rwkv7  # noqa: E402
from fla.ops.rwkv7.fused_k_update import k_update_ref  # noqa: E402
from fla.ops.rwkv7.gate_output_correction import gate_output_correction_ref  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
FOLDER = os.path.join(ROOT, "tests", "fixtures", "formats", "hf", "v7-a")
EXPECTED = os.path.join(ROOT, "tests", "fixtures", "v7-a", "expected.safetensors")


def shift(x, cu_seqlens=None, cache=None, output_cache=False, **_):
    delta = token_shift_ref(x)
    return (delta, x[:, -1:]) if output_cache else delta


def recurrence(r, w, k, v, kk, a, initial_state=None, output_final_state=False, **_):
    """S[v, k] <- S·diag(exp(w)) + (S·(-kk)) (kk·a)ᵀ + v kᵀ;  o = S r (per head, fp32)."""
    batch, steps, heads, n = r.shape
    state = torch.zeros(batch, heads, n, n)
    out = torch.zeros(batch, steps, heads, n)
    for t in range(steps):
        rt, wt, kt, vt, kkt, at = (x[:, t].float() for x in (r, w, k, v, kk, a))
        removed = torch.einsum("bhvk,bhk->bhv", state, -kkt)
        state = (
            state * torch.exp(wt)[:, :, None, :]
            + removed[..., None] * (kkt * at)[:, :, None, :]
            + vt[..., None] * kt[:, :, None, :]
        )
        out[:, t] = torch.einsum("bhvk,bhk->bhv", state, rt)
    return out, None


def main():
    layer.token_shift = shift
    modeling.token_shift = shift
    layer.fused_addcmul_rwkv7 = torch_addcmul_rwkv7
    layer.fused_k_rwkv7 = lambda k, a, ka, **_: k_update_ref(k, a, ka)
    layer.gate_output_correction = gate_output_correction_ref
    layer.fused_mul_recurrent_rwkv7 = recurrence

    config = json.load(open(os.path.join(FOLDER, "config.json")))
    for key in ("architectures", "model_type", "torch_dtype"):
        config.pop(key, None)
    config["fuse_norm"] = False  # the fused norms are triton kernels; the math is the same
    model = RWKV7ForCausalLM(RWKV7Config(**config)).eval()
    model.load_state_dict(load_file(os.path.join(FOLDER, "model.safetensors")), strict=True)

    expected = load_numpy(EXPECTED)
    tokens = torch.from_numpy(expected["tokens"].astype(np.int64))[None]
    with torch.no_grad():
        logits = model(tokens).logits[0].float().numpy()
    delta = float(np.abs(logits - expected["logits_seq"]).max())
    print(f"fla RWKV7ForCausalLM on formats/hf/v7-a vs official logits: max |d| = {delta:.3e}")
    assert delta <= 1e-4, delta


if __name__ == "__main__":
    main()
