"""Writes the "-a" fixture models as Hugging Face folders under tests/fixtures/formats/hf/.

    /work/pyenv/bin/python tools/formats/make_hf.py

* v4-a   -> transformers `RwkvForCausalLM` folder, written by transformers itself
            (`save_pretrained` with a small `max_shard_size`: several shards plus
            `model.safetensors.index.json`). The script then reloads the folder with
            `from_pretrained` and checks that transformers' own forward gives the official
            logits of tests/fixtures/v4-a/expected.safetensors.
* v5.2-a -> the RWKV organisation's RWKV-5 `-HF` names (remote code `modeling_rwkv5.py`),
            one `model.safetensors`.
* v6-a   -> the RWKV-6 `-HF` names (remote code `modeling_rwkv6.py`, `time_maa_*` spelling),
            written as two shards plus an index by this script.
* v7-a   -> flash-linear-attention's RWKV-7 names (`fla/models/rwkv7`, as fla-hub's rwkv7
            repositories use), one `model.safetensors`, with the value transforms (LoRA factors
            stored as `nn.Linear` weights, i.e. transposed; w0/a0/v0 as the LoRA output biases).

The name maps are the tables below; src/weights/names.rs maps them back.
"""

import json
import os
import shutil
import sys

import numpy as np
import torch
from safetensors.numpy import load_file, save_file

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
FIX = os.path.join(ROOT, "tests", "fixtures")
OUT = os.path.join(FIX, "formats", "hf")


def blinkdl(name):
    return load_file(os.path.join(FIX, name, "model.safetensors"))


def n_layers(sd):
    return 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))


def fresh(dirname):
    path = os.path.join(OUT, dirname)
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    return path


def write_config(path, config):
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
        f.write("\n")


# ---------------------------------------------------------------------------------------------
# transformers / RWKV-org HF names for RWKV-4, 5 and 6: a prefix and a few suffix renames.

V4_SUFFIX = {
    "att.time_mix_k": "attention.time_mix_key",
    "att.time_mix_v": "attention.time_mix_value",
    "att.time_mix_r": "attention.time_mix_receptance",
    "att.time_mix_g": "attention.time_mix_gate",
    "ffn.time_mix_k": "feed_forward.time_mix_key",
    "ffn.time_mix_r": "feed_forward.time_mix_receptance",
}


def hf_rwkv_name(name):
    """BlinkDL name -> transformers (RWKV-4) / RWKV-5 / RWKV-6 -HF name."""
    if name == "emb.weight":
        return "rwkv.embeddings.weight"
    if name == "head.weight":
        return "head.weight"
    if name.startswith("ln_out."):
        return "rwkv." + name
    parts = name.split(".")
    layer, rest = parts[1], ".".join(parts[2:])
    if rest.startswith("ln0."):
        rest = "pre_ln." + rest[4:]
    for old, new in V4_SUFFIX.items():
        if rest == old:
            rest = new
            break
    else:
        if rest.startswith("att."):
            rest = "attention." + rest[4:]
        elif rest.startswith("ffn."):
            rest = "feed_forward." + rest[4:]
    return f"rwkv.blocks.{layer}.{rest}"


# ---------------------------------------------------------------------------------------------
# flash-linear-attention RWKV-7 names.

FLA_PLAIN = {
    "att.x_r": "attn.x_r", "att.x_w": "attn.x_w", "att.x_k": "attn.x_k",
    "att.x_v": "attn.x_v", "att.x_a": "attn.x_a", "att.x_g": "attn.x_g",
    "att.k_k": "attn.k_k", "att.k_a": "attn.k_a", "att.r_k": "attn.r_k",
    "att.receptance.weight": "attn.r_proj.weight",
    "att.key.weight": "attn.k_proj.weight",
    "att.value.weight": "attn.v_proj.weight",
    "att.output.weight": "attn.o_proj.weight",
    "att.ln_x.weight": "attn.g_norm.weight", "att.ln_x.bias": "attn.g_norm.bias",
    "ln0.weight": "pre_norm.weight", "ln0.bias": "pre_norm.bias",
    "ln1.weight": "attn_norm.weight", "ln1.bias": "attn_norm.bias",
    "ln2.weight": "ffn_norm.weight", "ln2.bias": "ffn_norm.bias",
    "ffn.x_k": "ffn.x_k", "ffn.key.weight": "ffn.key.weight", "ffn.value.weight": "ffn.value.weight",
}
# BlinkDL LoRA (x @ M, stored [in, out]) -> fla LoRA (nn.Linear, stored [out, in]): transposed.
FLA_LORA = {"w": "w_lora", "a": "a_lora", "v": "v_lora", "g": "g_lora"}


def fla_tensors(sd):
    out = {}
    for name, t in sd.items():
        if name == "emb.weight":
            out["model.embeddings.weight"] = t
            continue
        if name == "head.weight":
            out["lm_head.weight"] = t
            continue
        if name.startswith("ln_out."):
            out["model.norm." + name.split(".")[1]] = t
            continue
        parts = name.split(".")
        layer, rest = int(parts[1]), ".".join(parts[2:])
        pre = f"model.layers.{layer}."
        if rest in FLA_PLAIN:
            value = t
            if rest in ("att.k_k", "att.k_a", "ffn.x_k"):
                value = t.reshape(-1)  # fla stores these as [C]
            out[pre + FLA_PLAIN[rest]] = value
            continue
        kind, idx = rest[len("att."):][0], rest[len("att."):][1:]
        lora = FLA_LORA[kind]
        if layer == 0 and kind == "v":
            continue  # fla has no v_lora in layer 0 (the official model never uses it)
        if idx == "1":
            out[pre + f"attn.{lora}.lora.0.weight"] = np.ascontiguousarray(t.T)
        elif idx == "2":
            out[pre + f"attn.{lora}.lora.2.weight"] = np.ascontiguousarray(t.T)
        elif idx == "0":
            out[pre + f"attn.{lora}.lora.2.bias"] = t.reshape(-1)
        else:
            raise SystemExit(f"no fla name for {name}")
    return out


# ---------------------------------------------------------------------------------------------


def shard(path, tensors, n_shards):
    """Writes `tensors` as n_shards safetensors files plus the index, as transformers names them."""
    names = sorted(tensors)
    per = (len(names) + n_shards - 1) // n_shards
    weight_map = {}
    total = 0
    for i in range(n_shards):
        part = names[i * per:(i + 1) * per]
        file = f"model-{i + 1:05d}-of-{n_shards:05d}.safetensors"
        save_file({k: tensors[k] for k in part}, os.path.join(path, file), metadata={"format": "pt"})
        for k in part:
            weight_map[k] = file
            total += tensors[k].nbytes
    with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2, sort_keys=True)
        f.write("\n")


def make_v4():
    from transformers import RwkvConfig, RwkvForCausalLM

    sd = blinkdl("v4-a")
    vocab, c = sd["emb.weight"].shape
    config = RwkvConfig(
        vocab_size=vocab,
        hidden_size=c,
        num_hidden_layers=n_layers(sd),
        attention_hidden_size=c,
        intermediate_size=sd["blocks.0.ffn.key.weight"].shape[0],
        layer_norm_epsilon=1e-5,
        rescale_every=6,
        tie_word_embeddings=False,
        context_length=1024,
    )
    model = RwkvForCausalLM(config).eval()
    state = {hf_rwkv_name(k): torch.from_numpy(v.copy()) for k, v in sd.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    path = fresh("v4-a")
    # Saved before any forward: transformers divides the output weights in place when it runs
    # in eval mode with rescale_every > 0 (a no-op here, with 2 layers and rescale_every 6).
    model.save_pretrained(path, max_shard_size="200KB", safe_serialization=True)
    shards = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
    assert len(shards) >= 2 and os.path.exists(os.path.join(path, "model.safetensors.index.json")), shards
    for extra in ("generation_config.json",):
        p = os.path.join(path, extra)
        if os.path.exists(p):
            os.remove(p)

    # transformers' own forward on the folder it wrote, against the official logits.
    reloaded = RwkvForCausalLM.from_pretrained(path, torch_dtype=torch.float32).eval()
    expected = load_file(os.path.join(FIX, "v4-a", "expected.safetensors"))
    tokens = torch.from_numpy(expected["tokens"].astype(np.int64))[None, :]
    with torch.no_grad():
        logits = reloaded(tokens).logits[0].numpy()
    delta = float(np.abs(logits - expected["logits_seq"]).max())
    print(f"v4-a: transformers RwkvForCausalLM vs official logits: max |d| = {delta:.3e} ({len(shards)} shards)")
    assert delta <= 1e-4, delta


def make_v5_v6():
    for fixture, model_type, arch, n_shards in (
        ("v5.2-a", "rwkv5", "Rwkv5ForCausalLM", 1),
        ("v6-a", "rwkv6", "Rwkv6ForCausalLM", 2),
    ):
        sd = blinkdl(fixture)
        vocab, c = sd["emb.weight"].shape
        heads, head_size = sd["blocks.0.att.time_faaaa"].shape
        tensors = {hf_rwkv_name(k): v for k, v in sd.items()}
        path = fresh(fixture)
        if n_shards == 1:
            save_file(tensors, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
        else:
            shard(path, tensors, n_shards)
        write_config(path, {
            "architectures": [arch],
            "model_type": model_type,
            "vocab_size": int(vocab),
            "hidden_size": int(c),
            "num_hidden_layers": n_layers(sd),
            "attention_hidden_size": int(c),
            "head_size": int(head_size),
            "head_size_divisor": 8,
            "intermediate_size": int(sd["blocks.0.ffn.key.weight"].shape[0]),
            "layer_norm_epsilon": 1e-05,
            "rescale_every": 6,
            "tie_word_embeddings": False,
            "torch_dtype": "float32",
        })
        print(f"{fixture}: {len(tensors)} tensors, {n_shards} file(s)")


def make_v7():
    sd = blinkdl("v7-a")
    vocab, c = sd["emb.weight"].shape
    heads, head_dim = sd["blocks.0.att.r_k"].shape
    tensors = fla_tensors(sd)
    path = fresh("v7-a")
    save_file(tensors, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    layers = n_layers(sd)
    write_config(path, {
        "architectures": ["RWKV7ForCausalLM"],
        "model_type": "rwkv7",
        "vocab_size": int(vocab),
        "hidden_size": int(c),
        "num_hidden_layers": layers,
        "head_dim": int(head_dim),
        "num_heads": int(heads),
        "decay_low_rank_dim": int(sd["blocks.0.att.w1"].shape[1]),
        "a_low_rank_dim": int(sd["blocks.0.att.a1"].shape[1]),
        "v_low_rank_dim": int(sd["blocks.1.att.v1"].shape[1]),
        "gate_low_rank_dim": int(sd["blocks.0.att.g1"].shape[1]),
        "hidden_ratio": 4,
        "intermediate_size": int(sd["blocks.0.ffn.key.weight"].shape[0]),
        "hidden_act": "sqrelu",
        "norm_first": True,
        "norm_bias": True,
        "norm_eps": 1e-05,
        "fuse_norm": True,
        "value_dim": [int(c)] * layers,
        "attn": None,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
    })
    print(f"v7-a: {len(tensors)} tensors (fla names)")


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    make_v4()
    make_v5_v6()
    make_v7()
    sys.exit(0)
