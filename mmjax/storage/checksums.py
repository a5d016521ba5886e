"""Checksums of arrays, the same whatever the sharding: a bundle records one per array when it
is saved and checks it when it is loaded, so bit rot in its files is an error, not NaNs.

The digest of an array is two 32-bit sums (mod 2**32) over its 32-bit words (1- and 2-byte
elements widened, 8-byte ones split), each word first mixed with its flat row-major position
by a murmur3-style finalizer: a sum is the same in any order and over any split, so every
process computes it with one jitted reduction over a sharded array, or numpy over a local
one (both give the same bits). It catches corruption (any changed, moved or swapped word,
with a chance of 2**-64 of a miss), not deliberate tampering.
"""

import jax
import jax.numpy as jnp
import numpy as np

ALGORITHM = "mmjax-mix64-v1"
_SEEDS = (0x9E3779B9, 0x7F4A7C15)
_HOST_MAX_ELEMENTS = 1 << 24  # larger (or not fully addressable) arrays sum where they lie


def _fmix(h, xp):
    h = h ^ (h >> xp.uint32(16))
    h = h * xp.uint32(0x85EBCA6B)
    h = h ^ (h >> xp.uint32(13))
    h = h * xp.uint32(0xC2B2AE35)
    return h ^ (h >> xp.uint32(16))


def _mix(words, index, xp) -> list:
    """The two lanes' per-word values; `words` and `index` are uint32 of one shape."""
    out = []
    for seed in _SEEDS:
        key = _fmix(index * xp.uint32(0xCC9E2D51) + xp.uint32(seed), xp)
        out.append(_fmix(words ^ key, xp))
    return out


def supported(dtype) -> bool:
    """Whether arrays of `dtype` get a checksum: booleans, and numbers whose bits fill their
    1, 2, 4 or 8 bytes (bfloat16 and float8 too; not 4-bit types, nor complex)."""
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        return True
    if dtype.itemsize not in (1, 2, 4, 8):
        return False
    if jnp.issubdtype(dtype, jnp.floating):
        return jnp.finfo(dtype).bits == 8 * dtype.itemsize
    if jnp.issubdtype(dtype, jnp.integer):
        return jnp.iinfo(dtype).bits == 8 * dtype.itemsize
    return False


def _host_words(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x).reshape(-1)
    size = x.dtype.itemsize
    if size == 8:
        return x.view(np.uint32)  # little-endian: low word first, as bitcast gives
    return x.view({1: np.uint8, 2: np.uint16, 4: np.uint32}[size]).astype(np.uint32)


def _host_digest(x: np.ndarray) -> str:
    words = _host_words(np.asarray(x))
    index = np.arange(words.size, dtype=np.uint32)
    with np.errstate(over="ignore"):
        lanes = [int(np.sum(v, dtype=np.uint64) & 0xFFFFFFFF) for v in _mix(words, index, np)]
    return "".join(f"{v:08x}" for v in lanes)


def _words(x):
    size = x.dtype.itemsize
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32)
    if size == 8:
        return jax.lax.bitcast_convert_type(x, jnp.uint32)  # [..., 2]
    narrow = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[size]
    return jax.lax.bitcast_convert_type(x, narrow).astype(jnp.uint32)


def _lanes(x):
    words = _words(x)
    index = jnp.zeros(words.shape, jnp.uint32)
    stride = 1
    for axis in reversed(range(words.ndim)):  # the flat row-major position, mod 2**32
        iota = jax.lax.broadcasted_iota(jnp.uint32, words.shape, axis)
        index = index + iota * jnp.uint32(stride & 0xFFFFFFFF)
        stride *= words.shape[axis]
    return jnp.stack([jnp.sum(v, dtype=jnp.uint32) for v in _mix(words, index, jnp)])


_device_lanes_many = jax.jit(lambda xs: [_lanes(x) for x in xs])


def _hex(lanes) -> str:
    return "".join(f"{int(v):08x}" for v in np.asarray(lanes))


def _on_host(x) -> bool:
    """numpy arrays, and small arrays on this host's CPU; the rest sums where it lies."""
    if not isinstance(x, jax.Array):
        return True
    cpu = all(d.platform == "cpu" for d in x.sharding.device_set)
    return x.is_fully_addressable and cpu and x.size <= _HOST_MAX_ELEMENTS


def _canonical(x):
    if isinstance(x, jax.Array):
        return x
    x = np.asarray(x)
    return x.astype(jax.dtypes.canonicalize_dtype(x.dtype), copy=False)


def digests(arrays) -> list[str]:
    """The checksum of each array (numpy or jax, sharded or not) as 16 hex digits, of its
    value in the dtype jax holds it in (a float64 numpy array is read back as float32 when
    64-bit types are off, and checked so). The arrays on accelerators, or spanning processes,
    are summed in one jitted call where they lie; every process must call it with the same
    arrays (it is a collective for arrays that span processes)."""
    arrays = [_canonical(x) for x in arrays]
    out = [_host_digest(np.asarray(jax.device_get(x))) if _on_host(x) else None for x in arrays]
    rest = [i for i, d in enumerate(out) if d is None]
    if rest:
        lanes = _device_lanes_many([arrays[i] for i in rest])
        for i, lane in zip(rest, lanes, strict=True):
            out[i] = _hex(lane.addressable_data(0))
    return out


def digest(x) -> str:
    """The checksum of one array (see `digests`)."""
    return digests([x])[0]
