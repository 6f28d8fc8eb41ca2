"""Deterministic safetensors writer.

safetensors.torch.save_file stores the metadata dict in hash-map order, so two
runs that produce identical tensors still give files that differ byte for
byte. This writer emits the header JSON with sorted keys (tensors sorted by
name, data laid out in that order), so regenerating a fixture from the same
command gives the identical file and git sees no change.

File layout (https://github.com/huggingface/safetensors, format section):
  u64 little-endian header length N, N bytes of JSON header (padded with
  spaces to a multiple of 8), then the raw little-endian tensor data.
"""

import json
import struct

import numpy as np
import torch

# numpy dtype -> safetensors dtype name
_DTYPES = {
    np.dtype("float32"): "F32",
    np.dtype("float64"): "F64",
    np.dtype("int64"): "I64",
    np.dtype("int32"): "I32",
}


def write_safetensors(path, tensors, metadata=None):
    """Write a dict name -> torch.Tensor / numpy array; metadata is str -> str."""
    arrays = {}
    for name, t in tensors.items():
        if isinstance(t, torch.Tensor):
            t = t.detach().cpu().contiguous().numpy()
        a = np.ascontiguousarray(t)
        if a.dtype not in _DTYPES:
            raise ValueError(f"{name}: unsupported dtype {a.dtype}")
        # safetensors data is little-endian
        arrays[name] = a.astype(a.dtype.newbyteorder("<"), copy=False)

    header = {}
    if metadata:
        for k, v in metadata.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise ValueError("safetensors metadata must be str -> str")
        header["__metadata__"] = dict(sorted(metadata.items()))
    offset = 0
    for name in sorted(arrays):
        a = arrays[name]
        header[name] = {
            "dtype": _DTYPES[a.dtype.newbyteorder("=")],
            "shape": list(a.shape),
            "data_offsets": [offset, offset + a.nbytes],
        }
        offset += a.nbytes

    blob = json.dumps(header, separators=(",", ":"), sort_keys=True).encode("utf-8")
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for name in sorted(arrays):
            f.write(arrays[name].tobytes(order="C"))
