#!/usr/bin/env python3
"""Writes the v6-a and v7-a fixture models as llama.cpp GGUF files.

The BlinkDL tensors of tests/fixtures/<v>-a/model.safetensors are renamed to the Hugging Face
names llama.cpp's converter reads (RWKV-6: `rwkv.blocks.N.attention.*`, RWKV-7 after the
converter's own renaming: `model.layers.N.attention.*`), mapped to GGUF names with gguf-py's
TensorNameMap, and changed the way convert_hf_to_gguf.py's Rwkv6Model / Rwkv7Model change them:
fused token-shift vectors, transposed low-rank matrices, squeezed vectors, flattened r_k,
RWKV-7 block 0's copies of a0/a1/a2 as v0/v1/v2, RWKV-6's rescale of att.output and ffn.value
by 2^(block // rescale_every). Storage types follow the converter's rules for --outtype
f16/bf16 (vectors, norms, time_mix_first, w1/w2, decay_w1/w2 and lerp_fused stay F32).

The metadata is the converter's, except that the LoRA sizes are the fixture's real ones (the
converter writes 32/64 for RWKV-6 models of width other than 4096, which llama.cpp's loader
would then refuse for these small models). The tokenizer section is the converter's RWKV World
one cut to the fixture's 128 tokens.

Usage:
    make_gguf.py [REPO_ROOT]       writes tests/fixtures/formats/gguf/*.gguf and the GGUF seeds
                                   of fuzz/seeds/model_load/
    make_gguf.py IN.safetensors OUT.gguf [f32|f16|bf16] [RESCALE_EVERY]
                                   converts one BlinkDL RWKV-6/7 safetensors file
"""

import ast
import sys
from pathlib import Path

import gguf
import numpy as np
from safetensors.numpy import load_file

F32 = gguf.GGMLQuantizationType.F32

# The converter keeps these tensor kinds in F32 whatever the output type.
ALWAYS_F32 = (
    gguf.MODEL_TENSOR.TIME_MIX_FIRST,
    gguf.MODEL_TENSOR.TIME_MIX_W1,
    gguf.MODEL_TENSOR.TIME_MIX_W2,
    gguf.MODEL_TENSOR.TIME_MIX_DECAY_W1,
    gguf.MODEL_TENSOR.TIME_MIX_DECAY_W2,
    gguf.MODEL_TENSOR.TIME_MIX_LERP_FUSED,
)


def hf_name_v6(name: str) -> str:
    """BlinkDL → Hugging Face RWKV-6 (Rwkv6ForCausalLM) names."""
    if name == "emb.weight":
        return "rwkv.embeddings.weight"
    if name.startswith("blocks.0.ln0."):
        return "rwkv.blocks.0.pre_ln." + name.rsplit(".", 1)[1]
    if name.startswith("ln_out."):
        return "rwkv." + name
    if name == "head.weight":
        return name
    name = name.replace(".att.", ".attention.").replace(".ffn.", ".feed_forward.")
    return "rwkv." + name


def hf_name_v7(name: str) -> str:
    """BlinkDL → the RWKV-7 names convert_hf_to_gguf.py works with after its own renaming."""
    if name == "emb.weight":
        return "model.embeddings.weight"
    if name.startswith("blocks.0.ln0."):
        return "model.layers.0.pre_norm." + name.rsplit(".", 1)[1]
    if name.startswith("ln_out."):
        return "model." + name
    if name == "head.weight":
        return "lm_head.weight"
    name = name.replace("blocks.", "layers.", 1)
    name = name.replace(".att.", ".attention.").replace(".ffn.", ".feed_forward.")
    return "model." + name


def gguf_name(tmap, hf: str) -> str:
    new = tmap.get_name(hf, try_suffixes=(".weight", ".bias"))
    if new is None:
        raise KeyError(hf)
    if not (new.endswith(".weight") or new.endswith(".bias")):
        new += ".weight"
    return new


def v6_tensors(st, n_layer, rescale_every):
    """The GGUF tensors of a BlinkDL RWKV-6 model, as Rwkv6Model.modify_tensors makes them."""
    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH.RWKV6, n_layer)
    out = []
    lerp = {}
    for name in st:
        data = st[name]
        bid = int(name.split(".")[1]) if name.startswith("blocks.") else None
        new = gguf_name(tmap, hf_name_v6(name))
        if new.endswith(("time_mix_w1.weight", "time_mix_decay_w1.weight", "time_mix_decay_w2.weight")):
            data = data.T
        if new.endswith("time_mix_w2.weight"):
            data = data.transpose(0, 2, 1)
        if new.endswith("time_mix_decay.weight") or "lerp" in new:
            data = data.squeeze()
        if rescale_every > 0 and new.endswith(("time_mix_output.weight", "channel_mix_value.weight")):
            data = data / np.float32(2 ** (bid // rescale_every))
        if bid is not None and "time_mix_lerp" in new and "time_mix_lerp_x" not in new:
            lerp.setdefault(bid, {})[new] = data
            keys = [f"blk.{bid}.time_mix_lerp_{s}.weight" for s in "wkvrg"]
            if all(k in lerp[bid] for k in keys):
                fused = np.stack([lerp[bid][k][None] for k in keys])[:, None]
                out.append((f"blk.{bid}.time_mix_lerp_fused.weight", fused))
            continue
        out.append((new, data))
    return out, tmap


def v7_tensors(st, n_layer):
    """The GGUF tensors of a BlinkDL RWKV-7 model, as Rwkv7Model.modify_tensors makes them."""
    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH.RWKV7, n_layer)
    out = []
    lerp = {}
    order = "rwkvag"
    for name in st:
        data = st[name]
        hf = hf_name_v7(name)
        bid = int(name.split(".")[1]) if name.startswith("blocks.") else None
        if bid == 0 and ".attention.v" in hf and "value" not in hf:
            continue  # block 0's v0/v1/v2 are dropped and replaced by copies of a0/a1/a2
        if bid is not None and ".attention.x_" in hf:
            lerp.setdefault(bid, {})[hf[-1]] = data
            if all(s in lerp[bid] for s in order):
                out.append((f"blk.{bid}.time_mix_lerp_fused.weight", np.stack([lerp[bid][s] for s in order])))
            continue
        data = data.squeeze()
        new = gguf_name(tmap, hf)
        if any(new.endswith(f"time_mix_{p}{i}.weight") for p in "wavg" for i in "12"):
            data = data.T
        if "r_k" in new:
            data = data.reshape(-1)
        if bid == 0 and "time_mix_a" in new:
            out.append((new.replace("time_mix_a", "time_mix_v"), data))
        out.append((new, data))
    return out, tmap


def storage_type(tmap, name, data, outtype):
    """The converter's choice of storage type for one tensor."""
    if outtype == F32 or data.ndim <= 1 or name.endswith("_norm.weight") or not name.endswith(".weight"):
        return F32
    stem = name[: -len(".weight")].split(".")[-1]
    if stem in {gguf.TENSOR_NAMES[kind].split(".")[-1] for kind in ALWAYS_F32}:
        return F32
    return outtype


def vocab(vocab_path: Path, n: int):
    """The converter's RWKV World token list and types, cut to n tokens."""
    tokens, types = [b"<s>"], [gguf.TokenType.CONTROL]
    for line in vocab_path.read_text(encoding="utf-8").splitlines():
        if len(tokens) == n:
            break
        parts = line.split(" ")
        token = ast.literal_eval(" ".join(parts[1:-1]))
        token = token.encode("utf-8") if isinstance(token, str) else token
        assert len(token) == int(parts[-1])
        tokens.append(repr(token)[2:-1].encode("utf-8"))
        types.append(gguf.TokenType.NORMAL)
    return tokens, types


def write(src: Path, path: Path, outtype, rescale_every: int = 0):
    st = load_file(str(src))
    version = "v7" if "blocks.0.att.r_k" in st else "v6"
    n_layer = 1 + max(int(k.split(".")[1]) for k in st if k.startswith("blocks."))
    vocab_size, c = st["emb.weight"].shape
    ffn = st["blocks.0.ffn.key.weight"].shape[0]
    if version == "v6":
        arch = gguf.MODEL_ARCH.RWKV6
        tensors, tmap = v6_tensors(st, n_layer, rescale_every)
        head_size = st["blocks.0.att.time_faaaa"].shape[1]
    else:
        arch = gguf.MODEL_ARCH.RWKV7
        tensors, tmap = v7_tensors(st, n_layer)
        head_size = st["blocks.0.att.r_k"].shape[1]

    w = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[arch])
    w.add_name(f"tokenshift {src.parent.name}/{src.stem}")
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_context_length(1048576)
    w.add_embedding_length(c)
    w.add_block_count(n_layer)
    w.add_layer_norm_eps(1e-5)
    w.add_wkv_head_size(head_size)
    w.add_feed_forward_length(ffn)
    ftype = {
        gguf.GGMLQuantizationType.F32: gguf.LlamaFileType.ALL_F32,
        gguf.GGMLQuantizationType.F16: gguf.LlamaFileType.MOSTLY_F16,
        gguf.GGMLQuantizationType.BF16: gguf.LlamaFileType.MOSTLY_BF16,
    }[outtype]
    w.add_file_type(ftype)
    if version == "v6":
        w.add_rescale_every_n_layers(rescale_every)
        w.add_time_mix_extra_dim(st["blocks.0.att.time_maa_w1"].shape[1] // 5)
        w.add_time_decay_extra_dim(st["blocks.0.att.time_decay_w1"].shape[1])
    else:
        w.add_decay_lora_rank(st["blocks.0.att.w1"].shape[1])
        w.add_iclr_lora_rank(st["blocks.0.att.a1"].shape[1])
        w.add_value_residual_mix_lora_rank(st[f"blocks.{min(n_layer - 1, 1)}.att.v1"].shape[1])
        w.add_gate_lora_rank(st["blocks.0.att.g1"].shape[1])
    w.add_head_count(0)
    tokens, types = vocab(Path(__file__).resolve().parents[2] / "assets/vocab/rwkv_vocab_v20230424.txt", vocab_size)
    w.add_tokenizer_model("rwkv")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_chat_template("rwkv-world")

    for name, data in tensors:
        data = np.ascontiguousarray(data, dtype=np.float32)
        qtype = storage_type(tmap, name, data, outtype)
        if qtype == F32:
            w.add_tensor(name, data)
        else:
            w.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"{path}: {path.stat().st_size} bytes, {len(tensors)} tensors")


def main():
    q = gguf.GGMLQuantizationType
    if len(sys.argv) >= 3:
        outtype = {"f32": q.F32, "f16": q.F16, "bf16": q.BF16}[sys.argv[3] if len(sys.argv) > 3 else "f32"]
        rescale = int(sys.argv[4]) if len(sys.argv) > 4 else 0
        write(Path(sys.argv[1]), Path(sys.argv[2]), outtype, rescale)
        return
    root = Path(sys.argv[1] if len(sys.argv) > 1 else ".").resolve()
    out = root / "tests/fixtures/formats/gguf"
    out.mkdir(parents=True, exist_ok=True)
    fixture = lambda v: root / f"tests/fixtures/{v}-a/model.safetensors"
    # rescale_every_n_layers = 1 so that the 2-block v6-a model has a rescaled block.
    write(fixture("v6"), out / "v6-a.f32.gguf", q.F32, rescale_every=1)
    write(fixture("v7"), out / "v7-a.f32.gguf", q.F32)
    write(fixture("v6"), out / "v6-a.f16.gguf", q.F16, rescale_every=1)
    write(fixture("v7"), out / "v7-a.bf16.gguf", q.BF16)
    seeds = root / "fuzz/seeds/model_load"
    write(seeds / "v6-f32.safetensors", seeds / "v6-f16.gguf", q.F16, rescale_every=1)
    write(seeds / "v7-f32.safetensors", seeds / "v7-f32.gguf", q.F32)


if __name__ == "__main__":
    main()
