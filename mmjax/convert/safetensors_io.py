"""Reading and writing safetensors files as numpy, with their `__metadata__` strings.

bfloat16 tensors (which numpy cannot hold) are widened to float32 on read.
"""

import json
import struct

import numpy as np
from etils import epath
from safetensors.numpy import save as save_bytes

_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32,
    "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}  # fmt: skip


def read_safetensors(path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """(tensors, metadata) of a safetensors file; a clear error for a file that is not one."""
    path = epath.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"safetensors file {path} does not exist")
    data = path.read_bytes()
    if len(data) < 8:
        raise ValueError(f"{path}: not a safetensors file (shorter than its 8-byte header size)")
    (n,) = struct.unpack("<Q", data[:8])
    try:
        header = json.loads(data[8 : 8 + n])
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a safetensors file (its header is not JSON: {e})") from e
    if not isinstance(header, dict):
        raise ValueError(f"{path}: not a safetensors file (its header is not a JSON object)")
    metadata = header.pop("__metadata__", None) or {}
    body = memoryview(data)[8 + n :]
    tensors = {}
    for name, entry in header.items():
        dtype, shape, (start, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
        raw = body[start:end]
        if dtype == "BF16":
            bits = np.frombuffer(raw, np.uint16).astype(np.uint32) << 16
            array = bits.view(np.float32)
        elif dtype in _DTYPES:
            array = np.frombuffer(raw, _DTYPES[dtype])
        else:
            raise ValueError(f"{path}: tensor {name!r} has dtype {dtype}, which is not supported")
        tensors[name] = array.reshape(shape).copy()
    return tensors, dict(metadata)


def write_safetensors(path, tensors: dict, metadata: dict | None = None) -> None:
    """Writes `tensors` (numpy) with string `metadata`; the file appears complete or not at
    all (written beside it, then renamed)."""
    path = epath.Path(path)
    arrays = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    data = save_bytes(arrays, metadata={k: str(v) for k, v in (metadata or {}).items()})
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f"{path.name}.tmp"
    tmp.write_bytes(data)
    tmp.replace(path)
