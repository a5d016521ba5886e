"""Conditioning -> static encoder arrays for generation.

Users hand `generate` a dict of whole modalities (image tokens [B, h*w] or [B, h, w];
residual ones [B, h*w*depth] or [B, h, w, depth]; 1D image tokens [B, K],
sequences [B, n] padded with 0 or lists of token lists, pixels [B, H, W, C] in [0, 1]).
`normalize_conditioning` checks them and brings them to one form (int32 [B, h*w]; int32
[B, max_length] padded with 0; float32 pixels). `condition_blocks` lays the conditioning out
as the encoder half of the masked-batch contract (`mmjax.fourm.modalities`): one fixed block
of slots per modality, in registry order (image tokens: every grid position; sequences:
max_length slots, padding masked; pixels: every patch). Because each block has a static
length, removing a modality for classifier-free guidance is a mask change (`variant_masks`),
never a reshape, and one compiled step serves every guidance variant.
"""

from collections.abc import Mapping, Sequence

import jax.numpy as jnp
import numpy as np

from mmjax.fourm.modalities import Registry

PAD_ID = 0  # sequences are padded with 0 (the text vocabulary's [PAD]; see mmjax.text)


def _as_array(name: str, value, ragged: bool) -> np.ndarray:
    """`value` as an array; lists of token lists of different lengths are padded with PAD_ID
    only where `ragged` (sequences): an image-token or pixel row is never padded."""
    if ragged and isinstance(value, list | tuple) and value and not np.isscalar(value[0]):
        rows = [np.asarray(r).reshape(-1) for r in value]  # ragged token lists
        width = max((len(r) for r in rows), default=0)
        out = np.full((len(rows), width), PAD_ID, np.int64)
        for i, r in enumerate(rows):
            if r.size and not np.issubdtype(r.dtype, np.integer):
                raise ValueError(f"conditioning {name!r}: row {i} must hold integer token ids")
            out[i, : len(r)] = r
        return out
    try:
        x = np.asarray(value)
    except ValueError:  # rows of different lengths
        lengths = [np.size(r) for r in value]
        raise ValueError(
            f"conditioning {name!r}: rows of different sizes {lengths}; every row of a "
            "non-sequence modality must be whole"
        ) from None
    if x.dtype.kind in "USO":
        raise ValueError(
            f"conditioning {name!r}: expected token ids or pixels, got {x.dtype} values "
            "(text must be encoded with the TextTokenizer first)"
        )
    return x


def _check_tokens(name: str, x: np.ndarray, vocab: int) -> None:
    if not np.issubdtype(x.dtype, np.integer):
        raise ValueError(f"conditioning {name!r}: token ids must be integers, got dtype {x.dtype}")
    if x.size and (x.min() < 0 or x.max() >= vocab):
        raise ValueError(
            f"conditioning {name!r}: token ids must lie in [0, {vocab}), got [{x.min()}, {x.max()}]"
        )


def normalize_conditioning(
    registry: Registry, conditioning: Mapping, batch_size: int | None = None
) -> tuple[dict[str, jnp.ndarray], int]:
    """Checks every conditioning array against its modality and returns (name -> array in
    the canonical form of the module docstring, batch size). Raises ValueError naming the
    modality for an unknown name, a wrong shape, dtype or value range, or a batch mismatch."""
    if batch_size is not None and (not isinstance(batch_size, int | np.integer) or batch_size < 1):
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    out, b = {}, batch_size
    for name, value in conditioning.items():
        if name not in registry:
            raise ValueError(
                f"conditioning {name!r} is not a modality of the registry {list(registry.names)}"
            )
        spec = registry[name]
        x = _as_array(name, value, ragged=spec.kind == "sequence")
        if spec.kind == "pixels":
            want = (*spec.image_size, spec.channels)
            if x.ndim != 4 or x.shape[1:] != want:
                dims = ", ".join(map(str, want))
                raise ValueError(
                    f"conditioning {name!r}: pixels must have shape [B, {dims}], got {x.shape}"
                )
            if x.dtype == np.uint8:
                x = x.astype(np.float32) / 255.0
            if not np.issubdtype(x.dtype, np.floating):
                raise ValueError(f"conditioning {name!r}: pixels must be float, got {x.dtype}")
            if not (x.min() >= 0 and x.max() <= 1):  # also catches NaN
                raise ValueError(
                    f"conditioning {name!r}: pixels must lie in [0, 1], got [{x.min()}, {x.max()}]"
                )
            x = x.astype(np.float32)
        elif spec.kind == "image_tokens":  # [B, h, w] or residual [B, h, w, depth]
            x = spec.flatten_tokens(x, batched=True, what=f"conditioning {name!r}")
            _check_tokens(name, x, spec.vocab_size)
            x = x.astype(np.int32)
        elif spec.kind == "image_tokens_1d":
            if x.ndim != 2 or x.shape[1] != spec.num_tokens:
                raise ValueError(
                    f"conditioning {name!r}: 1D image tokens must have shape "
                    f"[B, {spec.num_tokens}], got {x.shape}"
                )
            _check_tokens(name, x, spec.vocab_size)
            x = x.astype(np.int32)
        else:
            if x.ndim != 2 or x.shape[1] > spec.max_length:
                raise ValueError(
                    f"conditioning {name!r}: a sequence must have shape [B, n] with n <= "
                    f"max_length {spec.max_length}, got {x.shape}"
                )
            _check_tokens(name, x, spec.vocab_size)
            x = np.pad(x, ((0, 0), (0, spec.max_length - x.shape[1]))).astype(np.int32)
        if b is None:
            b = x.shape[0]
            if b < 1:
                raise ValueError(f"conditioning {name!r} has batch size 0; expected >= 1 rows")
        if x.shape[0] != b:
            raise ValueError(f"conditioning {name!r} has batch size {x.shape[0]}, expected {b}")
        out[name] = jnp.asarray(x)
    if b is None:
        raise ValueError("generate: no conditioning to take the batch size from; pass batch_size")
    return out, int(b)


def sequence_mask(tokens: jnp.ndarray) -> jnp.ndarray:
    """bool [B, L]: slots up to the last non-pad token (a sequence ends at its trailing
    padding; pad ids inside it are not padding)."""
    length = jnp.max(jnp.where(tokens != PAD_ID, jnp.arange(tokens.shape[1]) + 1, 0), axis=1)
    return jnp.arange(tokens.shape[1])[None, :] < length[:, None]


def condition_blocks(
    registry: Registry, conditioning: Mapping, names: Sequence[str], batch_size: int
) -> dict:
    """The encoder inputs of `names` (a subset of `conditioning`, in this order): enc_tokens,
    enc_modality, enc_positions [B, Ec] int32, enc_mask [B, Ec] bool, `block` [Ec] int32 (the
    index in `names` of each slot; -1 for the dummy slot), and pixels_<name> for every pixels
    modality of the registry (zeros where not conditioned on: the model always reads them).
    With no conditioning at all there is one masked dummy slot, so shapes never reach 0."""
    b = batch_size
    toks, mods, poss, masks, block = [], [], [], [], []
    for i, name in enumerate(names):
        spec, x = registry[name], conditioning[name]
        n = spec.num_tokens
        if spec.kind == "pixels":
            tok, mask = jnp.zeros((b, n), jnp.int32), jnp.ones((b, n), bool)
        elif spec.kind == "sequence":
            tok, mask = x, sequence_mask(x)
        else:
            tok, mask = x, jnp.ones((b, n), bool)
        toks.append(tok)
        masks.append(mask)
        mods.append(jnp.full((b, n), registry.index(name), jnp.int32))
        poss.append(jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (b, n)))
        block.append(np.full(n, i, np.int32))
    if not names:
        zeros = jnp.zeros((b, 1), jnp.int32)
        toks, mods, poss, masks = [zeros], [zeros], [zeros], [jnp.zeros((b, 1), bool)]
        block = [np.full(1, -1, np.int32)]
    out = {
        "enc_tokens": jnp.concatenate(toks, 1),
        "enc_modality": jnp.concatenate(mods, 1),
        "enc_positions": jnp.concatenate(poss, 1),
        "enc_mask": jnp.concatenate(masks, 1),
        "block": jnp.asarray(np.concatenate(block)),
    }
    for spec in registry:
        if spec.kind == "pixels":
            given = conditioning.get(spec.name) if spec.name in names else None
            shape = (b, *spec.image_size, spec.channels)
            out[f"pixels_{spec.name}"] = given if given is not None else jnp.zeros(shape)
    return out


def variant_masks(
    enc_mask: jnp.ndarray, block: jnp.ndarray, names: Sequence[str], variants
) -> jnp.ndarray:
    """bool [K, B, Ec]: the encoder mask of each guidance variant (a tuple of the condition
    names it keeps); the slots of the other modalities are masked out."""
    rows = []
    for keep in variants:
        kept = np.array([n in keep for n in names] + [False])  # index -1: the dummy slot
        rows.append(enc_mask & jnp.asarray(kept)[block][None, :])
    return jnp.stack(rows)


def sentinel_variants(
    enc_tokens: jnp.ndarray, masks: jnp.ndarray, block, names: Sequence[str], variants,
    sequences: Sequence[str], sentinel_id: int,
) -> tuple[jnp.ndarray, jnp.ndarray]:  # fmt: skip
    """(tokens [K, B, Ec], masks [K, B, Ec]) where every sequence condition (a name in
    `sequences`) that a variant drops reads as one sentinel at its position 0 instead of
    nothing: ml-4m's empty text input for classifier-free guidance."""
    block = np.asarray(block)
    toks, out = [], []
    for keep, mask in zip(variants, masks, strict=True):
        first = np.zeros(block.shape, bool)  # the first slot of each dropped sequence
        for i, name in enumerate(names):
            if name in sequences and name not in keep:
                first[np.argmax(block == i)] = True
        first = jnp.asarray(first)[None, :]
        toks.append(jnp.where(first, jnp.int32(sentinel_id), enc_tokens))
        out.append(mask | first)
    return jnp.stack(toks), jnp.stack(out)
