"""Cross-check the exported checkpoint with the official `rwkv` package (0.8.32, 'cpu fp32').

Converts the f16 safetensors file to an f32 .pth in a temporary directory, runs the held-out
text through the package's sequence mode in windows of 256 tokens carrying the state, and
prints the bits per byte (to compare with the number export.py wrote into the metadata).

    /work/venv/bin/python tools/train/check_export_official.py \
        assets/models/kjv-rwkv6.safetensors tests/fixtures/heldout/kjv-genesis-50.txt
"""
import math
import os
import sys
import tempfile

os.environ["RWKV_JIT_ON"] = "0"
os.environ["RWKV_CUDA_ON"] = "0"
os.environ["RWKV_V7_ON"] = "0"

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from rwkv.model import RWKV  # noqa: E402

model_path, text_path = sys.argv[1], sys.argv[2]
torch.set_num_threads(2)
with tempfile.TemporaryDirectory() as d:
    torch.save({k: v.float() for k, v in load_file(model_path).items()}, os.path.join(d, "m.pth"))
    model = RWKV(model=os.path.join(d, "m"), strategy="cpu fp32")
ids = [b + 1 for b in open(text_path, "rb").read()]
inputs, targets = ids[:-1], torch.tensor(ids[1:])
state, tot = None, 0.0
with torch.no_grad():
    for s in range(0, len(inputs), 256):
        logits, state = model.forward(inputs[s : s + 256], state, full_output=True)
        tot += F.cross_entropy(logits.double(), targets[s : s + 256], reduction="sum").item()
bpb = tot / len(targets) / math.log(2)
with safe_open(model_path, "pt") as f:
    recorded = float(f.metadata()["heldout_fixture_bits_per_byte"])
print(f"official rwkv package: {bpb:.6f} bits/byte; recorded by export.py: {recorded:.6f}; "
      f"rel. diff {abs(bpb - recorded) / recorded:.1e}")
