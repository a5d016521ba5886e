"""What a next-scale model takes from its multi-scale Tokenizer bundle: the layout of the
token pyramid and the code table (the code every index decodes to, per codebook)."""

import jax.numpy as jnp
import numpy as np


def _multiscale(tokenizer):
    if getattr(tokenizer, "scales", None) is None:
        raise ValueError(
            f"the {tokenizer.modality} tokenizer (grid {tokenizer.grid_shape}) is not a "
            "multi-scale one: next-scale models need a tokenizer trained with quantizer msrvq "
            "(configs/tokenizer_rgb.py:quantizer=msrvq)"
        )
    return tokenizer.model.quantizer


def tokenizer_layout(tokenizer) -> dict:
    """The `build_nextscale` layout fields a multi-scale Tokenizer fixes: scales,
    codebook_size, code_dim, code_levels, upsample."""
    q = _multiscale(tokenizer)
    return dict(
        scales=tuple(int(s) for s in q.scales),
        codebook_size=int(q.codebook_size),
        code_dim=int(code_table(tokenizer).shape[-1]),
        code_levels=1 if q.shared_codebook else len(q.scales),
        upsample=str(q.upsample),
    )


def code_table(tokenizer) -> np.ndarray:
    """float32 [levels, K, D]: `decode_indices` of every index 0..K-1 for each codebook of
    the tokenizer's multi-scale quantizer (one level when the scales share it)."""
    q = _multiscale(tokenizer)
    levels = 1 if q.shared_codebook else len(q.scales)
    every = jnp.arange(q.codebook_size, dtype=jnp.int32)

    def decode(model):
        ms = model.quantizer
        return jnp.stack([ms.level(i).decode_indices(every) for i in range(levels)])

    table = tokenizer.model.apply(tokenizer.variables, method=decode)
    return np.asarray(table, np.float32)
