"""Golden outputs for sliding-window attention with sinks (tests/mixers_window.rs).

Writes tests/fixtures/mixers/window.safetensors. Three cases, each with its random projections
(w_q, w_k, w_v: [H*D, C]; w_o: [C, H*D]), its input x [T, C] and the output y [T, C]:

- `band`: window 5, no sinks, rotary embeddings (base 10000) at absolute positions; y from
  torch's scaled_dot_product_attention with an explicit banded causal mask (t - W < j <= t).
- `sinks_plain`: window 4, 3 sinks, no rotary embeddings; y from scaled_dot_product_attention
  with the mask {j < S} or {t - W < j <= t} (without rotation, cache positions do not matter).
- `sinks_rope`: window 4, 2 sinks, rotary embeddings at cache positions (StreamingLLM); y from
  a float64 NumPy recomputation over the cache contents at every step, written from the paper.

Run with the project's virtual environment (torch, numpy, safetensors); the tests never run it.
"""
import numpy as np
import torch
from safetensors.numpy import save_file

C, H, D, T = 16, 2, 8, 23
rng = np.random.default_rng(11)


def rope(x, pos, base=10000.0):
    """Rotates each head's pairs (x_i, x_{i+D/2}) of x [..., H*D] by pos * base^(-2i/D)."""
    x = x.reshape(*x.shape[:-1], H, D).copy()
    half = D // 2
    theta = pos * base ** (-2.0 * np.arange(half) / D)
    cos, sin = np.cos(theta), np.sin(theta)
    a, b = x[..., :half].copy(), x[..., half:].copy()
    x[..., :half] = a * cos - b * sin
    x[..., half:] = a * sin + b * cos
    return x.reshape(*x.shape[:-2], H * D)


def weights():
    b_in, b_out = np.sqrt(3.0 / C), np.sqrt(3.0 / (H * D))
    return [rng.uniform(-b_in, b_in, (H * D, C)) for _ in range(3)] + [
        rng.uniform(-b_out, b_out, (C, H * D))
    ]


def sdpa(q, k, v, allowed):
    """Masked attention per head with torch (float64): q, k, v [T, H*D]."""
    def heads(a):
        return torch.from_numpy(a.reshape(T, H, D).transpose(1, 0, 2).copy())
    mask = torch.from_numpy(allowed)
    o = torch.nn.functional.scaled_dot_product_attention(heads(q), heads(k), heads(v), attn_mask=mask)
    return o.numpy().transpose(1, 0, 2).reshape(T, H * D)


def band_mask(window, sinks):
    t = np.arange(T)[:, None]
    j = np.arange(T)[None, :]
    return (j <= t) & ((t - window < j) | (j < sinks))


def case_sdpa(window, sinks, use_rope):
    wq, wk, wv, wo = weights()
    x = rng.uniform(-1, 1, (T, C))
    q, k, v = x @ wq.T, x @ wk.T, x @ wv.T
    if use_rope:
        q = np.stack([rope(q[i], i) for i in range(T)])
        k = np.stack([rope(k[i], i) for i in range(T)])
    o = sdpa(q, k, v, band_mask(window, sinks))
    return wq, wk, wv, wo, x, o @ wo.T


def case_streaming(window, sinks):
    wq, wk, wv, wo = weights()
    x = rng.uniform(-1, 1, (T, C))
    q, k, v = x @ wq.T, x @ wk.T, x @ wv.T
    out = np.zeros((T, H * D))
    for t in range(T):
        start = max(0, t + 1 - window)
        cache = list(range(min(sinks, start))) + list(range(start, t + 1))
        kr = np.stack([rope(k[j], p) for p, j in enumerate(cache)])
        qr = rope(q[t], len(cache) - 1)
        for h in range(H):
            cols = slice(h * D, (h + 1) * D)
            s = kr[:, cols] @ qr[cols] / np.sqrt(D)
            w = np.exp(s - s.max())
            w /= w.sum()
            out[t, cols] = w @ v[cache][:, cols]
    return wq, wk, wv, wo, x, out @ wo.T


cases = {
    "band": case_sdpa(5, 0, True),
    "sinks_plain": case_sdpa(4, 3, False),
    "sinks_rope": case_streaming(4, 2),
}
tensors = {}
for name, arrays in cases.items():
    for key, a in zip(["w_q", "w_k", "w_v", "w_o", "x", "y"], arrays):
        tensors[f"{name}.{key}"] = np.ascontiguousarray(a, dtype=np.float32)
save_file(tensors, "tests/fixtures/mixers/window.safetensors")
print({k: v.shape for k, v in tensors.items()})
