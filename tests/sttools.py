"""Minimal safetensors read/write with numpy (no safetensors package on Debian 12)."""
import json
import struct

import numpy as np

_DT = {"F32": np.float32, "F64": np.float64, "F16": np.float16, "I64": np.int64, "I32": np.int32,
       "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


def read(path):
    """Dict name -> numpy array (BF16 widened to float32)."""
    with open(path, "rb") as f:
        b = f.read()
    n = struct.unpack("<Q", b[:8])[0]
    hdr = json.loads(b[8:8 + n])
    out = {}
    for k, v in hdr.items():
        if k == "__metadata__":
            continue
        s, e = v["data_offsets"]
        raw = b[8 + n + s:8 + n + e]
        if v["dtype"] == "BF16":
            a = (np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)
        else:
            a = np.frombuffer(raw, dtype=_DT[v["dtype"]])
        out[k] = a.reshape(v["shape"])
    return out


def read_dir(d):
    """All tensors of an HF model dir (single file or index + shards)."""
    import os
    idx = os.path.join(d, "model.safetensors.index.json")
    if os.path.exists(idx):
        out = {}
        for shard in sorted(set(json.load(open(idx))["weight_map"].values())):
            out.update(read(os.path.join(d, shard)))
        return out
    return read(os.path.join(d, "model.safetensors"))


def write(path, tensors):
    """Write name -> numpy array (F32/I64/I32/U8...) as safetensors."""
    rev = {v: k for k, v in _DT.items()}
    hdr, blobs, off = {}, [], 0
    for k, v in tensors.items():
        v = np.ascontiguousarray(v)
        hdr[k] = {"dtype": rev[v.dtype.type], "shape": list(v.shape), "data_offsets": [off, off + v.nbytes]}
        off += v.nbytes
        blobs.append(v.tobytes())
    h = json.dumps(hdr).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def rel(a, ref):
    """norm(a - ref) / norm(ref) in float64."""
    a = np.asarray(a, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    d = np.linalg.norm((a - ref).ravel())
    n = np.linalg.norm(ref.ravel())
    return d / n if n > 0 else d
