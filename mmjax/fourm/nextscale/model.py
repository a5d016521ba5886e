"""`NextScale`: the next-scale prediction transformer (VAR, Tian et al. 2024) on the 4M
trunk's pre-LN self-attention blocks, and `build_nextscale(config, ...)`.

The sequence is [condition tokens][scale 1][scale 2]... (`mmjax.fourm.nextscale.layout`)
under the block-causal mask, so a forward pass over the first k scales gives the logits of
all their tokens at once. A condition token is a text token embedding plus a learned position;
a scale token is the projected teacher-forcing input (the accumulated codes of the earlier
scales, downsampled to its scale; the first scale gets a learned start embedding instead),
plus a learned position and a learned scale embedding, as in VAR. The head predicts the
codebook index of every scale token.

The codes of the tokenizer (`codes` collection, `table` [levels, K, D]: the code each index
decodes to, per codebook) are copied from its bundle (`code_table`) and never trained: the
model turns ground-truth or sampled indices into its own inputs with them.
"""

import dataclasses
from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.fourm.blocks import EncoderBlock
from mmjax.fourm.embeddings import EMBED_INIT
from mmjax.fourm.nextscale.layout import (
    block_causal_mask,
    check_scales,
    code_maps,
    next_scale_inputs,
    scale_ids,
    scale_offsets,
)
from mmjax.nn import layer_norm
from mmjax.nn.mlp import Dtype, dense

CODES = "codes"  # the variable collection of the tokenizer's code table

PRESETS = {
    "tiny": dict(width=128, depth=4, num_heads=4, mlp_dim=384),
    "small": dict(width=384, depth=8, num_heads=6, mlp_dim=1024),
    # VAR-d16's trunk shape (width 1024, 16 blocks, 16 heads)
    "base": dict(width=1024, depth=16, num_heads=16, mlp_dim=2816),
}


class NextScale(nn.Module):
    """Next-scale prediction over a scale pyramid of `codebook_size` codes.

    Attributes:
      scales: the token maps' sides, coarse to fine (the tokenizer's).
      codebook_size: K, the vocabulary of every scale token.
      code_dim, code_levels: the code table's width D and its number of codebooks (1 when
        the scales share one, as VAR).
      upsample: how codes are upsampled to the finest scale (the tokenizer's quantizer's).
      cond_vocab, cond_length: the condition's vocabulary and most tokens.
      width, depth, num_heads, mlp_dim: the trunk.
      qk_norm, attention_impl, dtype, param_dtype, sharding_rules: as `FourM`'s.
    """

    scales: tuple[int, ...]
    codebook_size: int
    code_dim: int
    code_levels: int = 1
    upsample: str = "linear"
    cond_vocab: int = 1
    cond_length: int = 1
    width: int = 128
    depth: int = 4
    num_heads: int = 4
    mlp_dim: int = 384
    qk_norm: bool = False
    attention_impl: str | None = None
    dtype: Dtype = None
    param_dtype: jnp.dtype = jnp.float32
    sharding_rules: tuple | None = None

    @property
    def num_tokens(self) -> int:
        return int(scale_offsets(self.scales)[-1])

    def setup(self):
        owner = type(self).__name__
        check_scales(owner, self.scales)
        for name in ("codebook_size", "code_dim", "code_levels", "cond_vocab", "cond_length"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{owner}: {name} must be >= 1, got {getattr(self, name)}")
        if self.code_levels not in (1, len(self.scales)):
            raise ValueError(
                f"{owner}: code_levels must be 1 (a shared codebook) or {len(self.scales)} (one "
                f"per scale), got {self.code_levels}"
            )
        if self.width % self.num_heads:
            raise ValueError(f"{owner}: width {self.width} must divide by {self.num_heads} heads")
        d, pd, part = self.width, self.param_dtype, nn.with_logical_partitioning
        table = lambda name, shape, axes: self.param(name, part(EMBED_INIT, axes), shape, pd)
        self.codes = self.variable(
            CODES, "table", jnp.zeros, (self.code_levels, self.codebook_size, self.code_dim)
        )
        self.cond_emb = table("cond_emb", (self.cond_vocab, d), ("vocab", "embed"))
        self.cond_pos = table("cond_pos", (self.cond_length, d), (None, "embed"))
        self.start = table("start", (d,), ("embed",))
        self.scale_pos = table("scale_pos", (self.num_tokens, d), (None, "embed"))
        self.scale_emb = table("scale_emb", (len(self.scales), d), (None, "embed"))
        self.input_proj = dense(d, (None, "embed"), param_dtype=pd, dtype=self.dtype)
        block = dict(
            qk_norm=self.qk_norm,
            attention_impl=self.attention_impl,
            dtype=self.dtype,
            param_dtype=pd,
            sharding_rules=self.sharding_rules,
        )
        self.blocks = [
            EncoderBlock(d, self.num_heads, self.mlp_dim, **block) for _ in range(self.depth)
        ]
        self.norm = layer_norm(dtype=self.dtype, param_dtype=pd)
        self.head = dense(self.codebook_size, ("embed", "vocab"), dtype=self.dtype, param_dtype=pd)

    def code_table(self) -> jax.Array:
        """[levels, K, D] float32: the code of every index (the tokenizer's)."""
        return self.codes.value.astype(jnp.float32)

    def inputs(self, indices: jax.Array) -> jax.Array:
        """indices int [B, N] (a whole pyramid) -> teacher-forcing inputs [B, N, D]."""
        if indices.ndim != 2 or indices.shape[1] != self.num_tokens:
            raise ValueError(
                f"{type(self).__name__}: indices must be [B, {self.num_tokens}] (scales "
                f"{self.scales}), got shape {indices.shape}"
            )
        maps = code_maps(self.code_table(), indices, self.scales)
        return next_scale_inputs(maps, self.scales, self.upsample)

    def logits(self, cond: jax.Array, cond_mask: jax.Array, inputs: jax.Array) -> jax.Array:
        """cond int [B, L] (L <= cond_length), cond_mask bool [B, L] (False: padding or a
        dropped condition), inputs [B, n, D] of the first n scale tokens -> float32 logits
        [B, n, K]. n must end a scale; later scales' inputs never reach earlier logits."""
        owner, n = type(self).__name__, inputs.shape[1]
        if n not in scale_offsets(self.scales)[1:]:
            raise ValueError(
                f"{owner}: inputs must cover whole scales, {list(scale_offsets(self.scales)[1:])}"
                f" tokens, got {n}"
            )
        if cond.ndim != 2 or cond.shape != cond_mask.shape or cond.shape[1] > self.cond_length:
            raise ValueError(
                f"{owner}: cond and cond_mask must be [B, L] with L <= {self.cond_length}, got "
                f"{cond.shape} and {cond_mask.shape}"
            )
        length = cond.shape[1]
        x_cond = jnp.take(self.cond_emb, jnp.clip(cond, 0, self.cond_vocab - 1), axis=0)
        x_cond = x_cond + self.cond_pos[:length]
        first = self.scales[0] ** 2
        proj = self.input_proj(inputs.astype(self.dtype or jnp.float32))
        start = jnp.broadcast_to(self.start, (inputs.shape[0], first, self.width))
        x_scale = jnp.concatenate([start.astype(proj.dtype), proj[:, first:]], axis=1)
        ids = jnp.asarray(scale_ids(self.scales)[:n])
        x_scale = x_scale + self.scale_pos[:n] + jnp.take(self.scale_emb, ids, axis=0)
        x = jnp.concatenate([x_cond.astype(x_scale.dtype), x_scale], axis=1)
        if self.dtype is not None:
            x = x.astype(self.dtype)
        mask = block_causal_mask(cond_mask, self.scales, n)
        for block in self.blocks:
            x = block(x, mask)
        return self.head(self.norm(x[:, length:])).astype(jnp.float32)

    def __call__(self, cond: jax.Array, cond_mask: jax.Array, indices: jax.Array) -> jax.Array:
        """Teacher forcing: logits [B, N, K] of every token of the pyramids `indices` [B, N]."""
        return self.logits(cond, cond_mask, self.inputs(indices))


def build_nextscale(model_config, **layout) -> NextScale:
    """NextScale from a config mapping (an optional `size`, a PRESETS name, plus NextScale
    trunk fields that override it; dtype strings such as "bfloat16"; attention_impl ""
    = jax picks) and the `layout` fields the data fixes (scales, codebook_size, code_dim,
    code_levels, upsample, cond_vocab, cond_length)."""
    cfg = model_config.to_dict() if hasattr(model_config, "to_dict") else model_config
    if not isinstance(cfg, Mapping):
        raise TypeError(f"build_nextscale: config must be a mapping, got {type(cfg)}")
    cfg = dict(cfg)
    size = cfg.pop("size", None)
    if size is not None:
        if size not in PRESETS:
            raise ValueError(f"build_nextscale: size must be one of {tuple(PRESETS)}, got {size!r}")
        cfg = {**PRESETS[size], **cfg}
    fields = {f.name for f in dataclasses.fields(NextScale) if f.init} - {"parent", "name"}
    unknown = sorted(set(cfg) - fields)
    if unknown:
        raise ValueError(
            f"build_nextscale: unknown key(s) {unknown}; expected 'size' or some of "
            f"{sorted(fields)}"
        )
    dtypes = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
    for key in ("dtype", "param_dtype"):
        if isinstance(cfg.get(key), str):
            if cfg[key] not in dtypes:
                raise ValueError(f"build_nextscale: {key} must be one of {sorted(dtypes)}")
            cfg[key] = dtypes[cfg[key]]
    if cfg.get("attention_impl") == "":
        cfg["attention_impl"] = None
    if cfg.get("sharding_rules") is not None:
        cfg["sharding_rules"] = tuple(
            (n, tuple(a) if isinstance(a, list | tuple) else a) for n, a in cfg["sharding_rules"]
        )
    layout = dict(layout, scales=tuple(int(s) for s in layout["scales"]))
    return NextScale(**layout, **cfg)
