"""A small RWKV-6 ("Finch", x060) language model in plain PyTorch, for CPU training.

Parameters are stored under the BlinkDL checkpoint names and in the BlinkDL shapes
(BlinkDL x060 names and shapes), so a state dict of this module *is* a
checkpoint that the official `rwkv` package and the `tokenshift` crate can load.

Math (per layer, x̂ = LayerNorm output, `prev` = x̂ of the previous token):
  time mix:  d = prev - x̂
             z = tanh((x̂ + d*maa_x) @ maa_w1) -> 5 x Dm; m_s = z_s @ maa_w2[s], order w,k,v,r,g
             x_s = x̂ + d*(maa_s + m_s)
             r,k,v = W x_s;  g = silu(Wg x_g)
             w = exp(-exp(time_decay + tanh(x_w @ decay_w1) @ decay_w2))
             y_t = r_t^T (diag(u) k_t v_t^T + S_{t-1});  S_t = diag(w_t) S_{t-1} + k_t v_t^T  (per head)
             out = Wo(GroupNorm_H(y, eps 64e-5) * g)
  chan mix:  d = prev - x̂;  out = sigmoid(Wr(x̂+d*maa_r)) * Wv relu(Wk(x̂+d*maa_k))^2
  ln0 is applied to the embedding (block 0 only), ln_out before the head.

The WKV recurrence is evaluated in chunks of `chunk` tokens: inside a chunk the exact
pairwise form with cumulative log-decays (all exponents <= 0, so no overflow), and a
sequential pass over chunks for the carried state.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

LN_EPS = 1e-5
GN_EPS = 64e-5


def wkv6_chunked(r, k, v, logw, u, s0, chunk=16):
    """RWKV-6 WKV.

    r, k, v, logw: [B, T, H, N] (logw = log of the decay, <= 0); u: [H, N];
    s0: [B, H, N, N] state indexed s[b, h, key_i, value_j].
    Returns y [B, T, H, N] and the final state [B, H, N, N].
    """
    B, T, H, N = r.shape
    L = chunk
    pad = (-T) % L
    if pad:
        z = r.new_zeros(B, pad, H, N)
        r, k, v, logw = (torch.cat([a, z], 1) for a in (r, k, v, logw))
    Tp = T + pad
    nc = Tp // L
    # -> [B, H, nc, L, N]
    r, k, v, logw = (a.view(B, nc, L, H, N).permute(0, 3, 1, 2, 4) for a in (r, k, v, logw))
    A = torch.cumsum(logw, dim=3)  # inclusive: sum_{j<=t} log w_j
    Ap = A - logw  # exclusive: sum_{j<t} log w_j
    # intra-chunk, s < t:  sum_i r_t,i k_s,i exp(Ap_t,i - A_s,i)
    D = Ap.unsqueeze(4) - A.unsqueeze(3)  # [B,H,nc,L(t),L(s),N]
    mask = torch.ones(L, L, dtype=torch.bool, device=r.device).tril(-1)  # s < t
    D = D.masked_fill(~mask.view(1, 1, 1, L, L, 1), float("-inf"))
    att = (r.unsqueeze(4) * k.unsqueeze(3) * torch.exp(D)).sum(-1)  # [B,H,nc,L,L]
    y = att @ v
    # current-token bonus: (r_t . (u*k_t)) v_t
    y = y + (r * k * u.view(1, H, 1, 1, N)).sum(-1, keepdim=True) * v
    # inter-chunk: carried state
    rd = r * torch.exp(Ap)  # decay from chunk start to t-1
    AL = A[:, :, :, -1:, :]  # [B,H,nc,1,N]
    kd = k * torch.exp(AL - A)  # decay from s+1 to chunk end
    wL = torch.exp(AL).squeeze(3)  # [B,H,nc,N]
    s = s0
    ys = []
    for c in range(nc):
        ys.append(rd[:, :, c] @ s)  # [B,H,L,N]
        s = wL[:, :, c].unsqueeze(-1) * s + kd[:, :, c].transpose(-1, -2) @ v[:, :, c]
    y = y + torch.stack(ys, 2)
    y = y.permute(0, 2, 3, 1, 4).reshape(B, Tp, H, N)[:, :T]
    return y, s


def wkv6_loop(r, k, v, logw, u, s0):
    """Reference token-by-token WKV (same interface), used for testing."""
    B, T, H, N = r.shape
    s = s0
    w = torch.exp(logw)
    ys = []
    for t in range(T):
        kv = k[:, t].unsqueeze(-1) * v[:, t].unsqueeze(-2)  # [B,H,N,N]
        ys.append((r[:, t].unsqueeze(-1) * (u.unsqueeze(-1) * kv + s)).sum(-2))
        s = w[:, t].unsqueeze(-1) * s + kv
    return torch.stack(ys, 1), s


class TimeMix(nn.Module):
    def __init__(self, C, H, Dm, Dd):
        super().__init__()
        self.C, self.H, self.N, self.Dm, self.Dd = C, H, C // H, Dm, Dd
        p = lambda *s: nn.Parameter(torch.zeros(*s))
        for n in ("x", "w", "k", "v", "r", "g"):
            setattr(self, "time_maa_" + n, p(1, 1, C))
        self.time_maa_w1 = p(C, 5 * Dm)
        self.time_maa_w2 = p(5, Dm, C)
        self.time_decay = p(1, 1, C)
        self.time_decay_w1 = p(C, Dd)
        self.time_decay_w2 = p(Dd, C)
        self.time_faaaa = p(H, C // H)
        for n in ("receptance", "key", "value", "gate", "output"):
            setattr(self, n, nn.Linear(C, C, bias=False))
        self.ln_x = nn.GroupNorm(H, C, eps=GN_EPS)

    def forward(self, x, prev, s0, chunk):
        # x: [B,T,C] (LayerNorm output); prev: [B,C]; s0: [B,H,N,N]
        B, T, C = x.shape
        H, N = self.H, self.N
        xprev = torch.cat([prev.unsqueeze(1), x[:, :-1]], 1)
        d = xprev - x
        z = torch.tanh((x + d * self.time_maa_x) @ self.time_maa_w1)  # [B,T,5*Dm]
        z = z.view(B * T, 5, self.Dm).transpose(0, 1)  # [5,BT,Dm]
        m = torch.bmm(z, self.time_maa_w2).view(5, B, T, C)
        mw, mk, mv, mr, mg = m.unbind(0)
        xw = x + d * (self.time_maa_w + mw)
        xk = x + d * (self.time_maa_k + mk)
        xv = x + d * (self.time_maa_v + mv)
        xr = x + d * (self.time_maa_r + mr)
        xg = x + d * (self.time_maa_g + mg)
        r = self.receptance(xr).view(B, T, H, N)
        k = self.key(xk).view(B, T, H, N)
        v = self.value(xv).view(B, T, H, N)
        g = F.silu(self.gate(xg))
        dd = self.time_decay + torch.tanh(xw @ self.time_decay_w1) @ self.time_decay_w2
        logw = -torch.exp(dd).view(B, T, H, N)
        if chunk:
            y, s = wkv6_chunked(r, k, v, logw, self.time_faaaa, s0, chunk)
        else:
            y, s = wkv6_loop(r, k, v, logw, self.time_faaaa, s0)
        y = self.ln_x(y.reshape(B * T, C)).view(B, T, C)
        return self.output(y * g), x[:, -1], s


class ChannelMix(nn.Module):
    def __init__(self, C, Fd):
        super().__init__()
        self.time_maa_k = nn.Parameter(torch.zeros(1, 1, C))
        self.time_maa_r = nn.Parameter(torch.zeros(1, 1, C))
        self.key = nn.Linear(C, Fd, bias=False)
        self.receptance = nn.Linear(C, C, bias=False)
        self.value = nn.Linear(Fd, C, bias=False)

    def forward(self, x, prev):
        xprev = torch.cat([prev.unsqueeze(1), x[:, :-1]], 1)
        d = xprev - x
        xk = x + d * self.time_maa_k
        xr = x + d * self.time_maa_r
        kk = torch.relu(self.key(xk)) ** 2
        return torch.sigmoid(self.receptance(xr)) * self.value(kk), x[:, -1]


class Block(nn.Module):
    def __init__(self, i, C, H, Fd, Dm, Dd):
        super().__init__()
        self.ln1 = nn.LayerNorm(C, eps=LN_EPS)
        self.ln2 = nn.LayerNorm(C, eps=LN_EPS)
        if i == 0:
            self.ln0 = nn.LayerNorm(C, eps=LN_EPS)
        self.att = TimeMix(C, H, Dm, Dd)
        self.ffn = ChannelMix(C, Fd)

    def forward(self, x, st, chunk):
        att_prev, s, ffn_prev = st
        h, att_prev, s = self.att(self.ln1(x), att_prev, s, chunk)
        x = x + h
        h, ffn_prev = self.ffn(self.ln2(x), ffn_prev)
        return x + h, (att_prev, s, ffn_prev)


class RWKV6(nn.Module):
    def __init__(self, V, C, L, H, Fd=None, Dm=32, Dd=64):
        super().__init__()
        Fd = Fd or int(3.5 * C) // 32 * 32
        self.V, self.C, self.L, self.H, self.N, self.Fd, self.Dm, self.Dd = V, C, L, H, C // H, Fd, Dm, Dd
        self.emb = nn.Embedding(V, C)
        self.blocks = nn.ModuleList([Block(i, C, H, Fd, Dm, Dd) for i in range(L)])
        self.ln_out = nn.LayerNorm(C, eps=LN_EPS)
        self.head = nn.Linear(C, V, bias=False)

    @staticmethod
    def shape_from_state_dict(sd):
        V, C = sd["emb.weight"].shape
        L = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
        H = sd["blocks.0.att.time_faaaa"].shape[0]
        Fd = sd["blocks.0.ffn.key.weight"].shape[0]
        Dm = sd["blocks.0.att.time_maa_w2"].shape[1]
        Dd = sd["blocks.0.att.time_decay_w1"].shape[1]
        return dict(V=V, C=C, L=L, H=H, Fd=Fd, Dm=Dm, Dd=Dd)

    @classmethod
    def from_state_dict(cls, sd):
        m = cls(**cls.shape_from_state_dict(sd))
        m.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
        return m

    def init_state(self, B):
        z = lambda *s: self.emb.weight.new_zeros(*s)
        return [(z(B, self.C), z(B, self.H, self.N, self.N), z(B, self.C)) for _ in range(self.L)]

    def forward(self, idx, state=None, chunk=16):
        """idx: [B,T] int64. Returns logits [B,T,V] and the new state."""
        B, T = idx.shape
        if state is None:
            state = self.init_state(B)
        x = self.blocks[0].ln0(self.emb(idx))
        new = []
        for blk, st in zip(self.blocks, state):
            x, st = blk(x, st, chunk)
            new.append(st)
        return self.head(self.ln_out(x)), new

    @torch.no_grad()
    def init_weights(self):
        """Init after RWKV-LM's x060 scheme (described from memory, not copied)."""
        C, L, H, N = self.C, self.L, self.H, self.N
        nn.init.uniform_(self.emb.weight, -1e-4, 1e-4)
        nn.init.orthogonal_(self.head.weight, gain=0.5 * math.sqrt(self.V / C))
        ddd = torch.arange(C, dtype=torch.float32) / C
        n01 = torch.arange(C, dtype=torch.float32) / (C - 1)
        for i, b in enumerate(self.blocks):
            r01 = i / max(L - 1, 1)  # 0 -> 1 over depth
            r10 = 1.0 - i / L  # 1 -> almost 0
            for ln in [b.ln1, b.ln2] + ([b.ln0] if i == 0 else []):
                ln.weight.fill_(1.0)
                ln.bias.zero_()
            a = b.att
            a.time_maa_x.copy_(1.0 - ddd**r10)
            a.time_maa_w.copy_(1.0 - ddd**r10)
            a.time_maa_k.copy_(1.0 - ddd**r10)
            a.time_maa_v.copy_(1.0 - (ddd**r10 + 0.3 * r01))
            a.time_maa_r.copy_(1.0 - ddd ** (0.5 * r10))
            a.time_maa_g.copy_(1.0 - ddd ** (0.5 * r10))
            nn.init.uniform_(a.time_maa_w1, -1e-4, 1e-4)
            nn.init.uniform_(a.time_maa_w2, -1e-2, 1e-2)
            # decays spread across channels: slow (d=-6, w~1) to fast (d=-1)
            a.time_decay.copy_(-6.0 + 5.0 * n01 ** (0.7 + 1.3 * r01))
            nn.init.uniform_(a.time_decay_w1, -1e-4, 1e-4)
            nn.init.uniform_(a.time_decay_w2, -1e-2, 1e-2)
            idx = torch.arange(C)
            u = r01 * (1.0 - n01) + ((idx + 1) % 3 - 1).float() * 0.1
            a.time_faaaa.copy_(u.view(H, N))
            nn.init.orthogonal_(a.receptance.weight, gain=1.0)
            nn.init.orthogonal_(a.key.weight, gain=0.1)
            nn.init.orthogonal_(a.value.weight, gain=1.0)
            nn.init.orthogonal_(a.gate.weight, gain=0.1)
            a.output.weight.zero_()
            a.ln_x.weight.fill_(((1 + i) / L) ** 0.7)
            a.ln_x.bias.zero_()
            f = b.ffn
            f.time_maa_k.copy_(1.0 - ddd**r10)
            f.time_maa_r.copy_(1.0 - ddd**r10)
            nn.init.orthogonal_(f.key.weight, gain=1.0)
            f.receptance.weight.zero_()
            f.value.weight.zero_()
        self.ln_out.weight.fill_(1.0)
        self.ln_out.bias.zero_()
