"""`FourM`: the 4M masked multimodal encoder-decoder (Mizrahi et al. 2023; 4M-21).

The encoder reads the visible input tokens of all modalities (one sequence, `enc_mask` marks
padding); the decoder predicts the target tokens from their position + modality embeddings
(image tokens: a mask token; sequences: the previous target token, teacher forced; 1D image
tokens: either), attending to each other only within their own modality (causally by position
for sequences and 1D image tokens) and to the
encoder through cross-attention. The context the decoder reads is a Dense projection of the
encoder output plus the encoder tokens' position and modality embeddings.

Methods (all jittable, static shapes), called through `model.apply(variables, ..., method=...)`:
    __call__(batch, train=False) -> logits [B, T, V_max]
    encode(batch) -> (context [B, E, D], context_mask [B, E])
    decode(context, context_mask, dec_input_tokens, dec_modality, dec_positions, dec_mask)
        -> logits [B, T, V_max]
    init_cache(batch_size, max_length, context=None) -> cache pytree
    decode_step(context, context_mask, cache, token, position, modality_id, index)
        -> (logits [B, V_max], cache)
`batch` is the masked-batch contract of `mmjax.fourm.modalities` with a leading batch axis.
Activations carry logical constraints ('act_batch', 'act_len', 'act_embed' / 'act_vocab')
when `sharding_rules` is set; they take effect under `jax.set_mesh(mesh)`. (Do not use flax's
`nn.logical_axis_rules` context with this model: see `mmjax.parallel.constrain`.)
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mmjax.fourm.blocks import DecoderBlock, EncoderBlock
from mmjax.fourm.embeddings import Embeddings, Heads, modality_tables
from mmjax.fourm.modalities import Registry
from mmjax.nn import dense, layer_norm
from mmjax.nn.mlp import Dtype
from mmjax.parallel import LOGITS_AXES, constrain
from mmjax.parallel.constrain import KV_CACHE_AXES

ENC_KEYS = ("enc_tokens", "enc_modality", "enc_positions", "enc_mask")
DEC_KEYS = ("dec_input_tokens", "dec_modality", "dec_positions", "dec_mask")
EMPTY_CONTEXT = ("zero", "uniform")
MLP_TYPES = ("swiglu", "gelu")


def input_array_keys(registry: Registry) -> list[str]:
    """Batch keys of the per-modality input arrays: pixels_<name>, embeddings_<name>."""
    prefix = {"pixels": "pixels_", "sequence_embedding": "embeddings_"}
    return [prefix[s.kind] + s.name for s in registry if s.kind in prefix]


def _check_group(batch, keys: tuple, what: str, batch_size: int | None = None) -> tuple:
    missing = [k for k in keys if k not in batch]
    if missing:
        raise ValueError(
            f"FourM: batch is missing {missing}; {what} needs {list(keys)} "
            "(see the masked-batch contract in mmjax.fourm.modalities)"
        )
    shapes = {k: tuple(np.shape(batch[k])) for k in keys}
    first = shapes[keys[0]]
    if len(first) != 2 or any(s != first for s in shapes.values()):
        raise ValueError(f"FourM: {what} fields must share one [batch, length] shape, got {shapes}")
    if batch_size is not None and first[0] != batch_size:
        raise ValueError(f"FourM: {what} has batch size {first[0]}, expected {batch_size}")
    return first


def check_batch(batch, registry: Registry, encoder: bool = True, decoder: bool = True) -> None:
    """Raises a ValueError naming the missing key or the mismatched shape."""
    b = None
    if encoder:
        b = _check_group(batch, ENC_KEYS, "the encoder input")[0]
        for s in registry:
            if s.kind == "pixels":
                key, want, what = f"pixels_{s.name}", (b, *s.image_size, s.channels), "H, W, C"
            elif s.kind == "sequence_embedding" and f"embeddings_{s.name}" in batch:
                key, want, what = f"embeddings_{s.name}", (b, s.max_length, s.embed_dim), "L, E"
            else:  # a batch without embeddings_<name> has no input of that modality
                continue
            if key not in batch:
                raise ValueError(f"FourM: batch is missing {key!r} [B, {what}] = {want}")
            if tuple(np.shape(batch[key])) != want:
                raise ValueError(f"FourM: {key} must have shape {want}, got {np.shape(batch[key])}")
    if decoder:
        _check_group(batch, DEC_KEYS, "the decoder input", b)


def decoder_attention_mask(modality, positions, valid, is_causal: np.ndarray) -> jax.Array:
    """[B, T] decoder fields -> bool [B, T, T]: i may attend to j iff both valid, same
    modality, and (image modality: any j; sequence or 1D image tokens: positions[j] <=
    positions[i])."""
    same = modality[:, :, None] == modality[:, None, :]
    both = valid[:, :, None] & valid[:, None, :]
    seq = jnp.asarray(is_causal)[jnp.clip(modality, 0, len(is_causal) - 1)]
    causal = positions[:, None, :] <= positions[:, :, None]
    return both & same & (~seq[:, :, None] | causal)


class FourM(nn.Module):
    """4M encoder-decoder. See the module docstring; presets in `mmjax.fourm.presets`.

    Attributes:
      registry: the modalities (ids = registry order).
      width, encoder_depth, decoder_depth, num_heads: trunk shape (head_dim = width/heads).
      mlp_ratio: SwiGLU hidden = mlp_ratio * width * 2/3 (4M's choice: the same parameter
        count as a GELU MLP of ratio mlp_ratio), rounded up to `mlp_multiple_of`; `mlp_dim`
        overrides it.
      qk_norm: LayerNorm on queries and keys per head.
      dtype: compute dtype (e.g. jnp.bfloat16); param_dtype: parameter dtype (float32).
      remat: rematerialize each block in the backward pass (memory for FLOPs).
      attention_impl: `jax.nn.dot_product_attention` implementation (None, 'xla', 'cudnn').
      head_impl, head_chunk: the output heads' implementation, 'dense' (shards like any
        Dense) or 'grouped' (tokens sorted into chunks of `head_chunk` by modality; a few
        times fewer head FLOPs, for one device), see `mmjax.fourm.embeddings`.
      sharding_rules: logical axis rules (as `mmjax.parallel.DEFAULT_RULES`) for activation
        sharding constraints under `jax.set_mesh`; None: no constraints.

    Options that express ml-4m checkpoints exactly (defaults keep mmjax's own model):
      context_proj_bias: a bias on the decoder's context projection.
      mlp_type ("swiglu" or "gelu"), qkv_bias, proj_bias, mlp_bias, norm_bias: the trunk's
        MLP and biases (see `mmjax.fourm.blocks`); a "gelu" MLP's default hidden width is
        mlp_ratio * width.
      decoder_tables, pixel_norm, patch_bias, sincos_layout: see `Embeddings`.
      empty_context: "zero" or "uniform" (see `mmjax.fourm.blocks`); "uniform" also zeroes
        the encoder's padding inputs, as ml-4m does, so the padding it averages is the same.
      num_register_tokens: learned tokens `register_tokens` [R, D] put before the encoder
        input (no position or modality embedding); the context then has R + E entries.
    """

    registry: Registry
    width: int = 768
    encoder_depth: int = 12
    decoder_depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    mlp_dim: int | None = None
    mlp_multiple_of: int = 128
    qk_norm: bool = False
    dtype: Dtype = None
    param_dtype: jnp.dtype = jnp.float32
    remat: bool = False
    attention_impl: str | None = None
    head_impl: str = "dense"
    head_chunk: int = 64
    sharding_rules: tuple | None = None
    context_proj_bias: bool = False
    mlp_type: str = "swiglu"
    qkv_bias: bool = False
    proj_bias: bool = False
    mlp_bias: bool = False
    norm_bias: bool = False
    decoder_tables: bool = False
    pixel_norm: str = "signed"
    patch_bias: bool = True
    sincos_layout: str = "row_major"
    empty_context: str = "zero"
    num_register_tokens: int = 0

    @property
    def hidden_dim(self) -> int:
        if self.mlp_dim:
            return int(self.mlp_dim)
        if self.mlp_type == "gelu":
            return int(self.mlp_ratio * self.width)
        h, k = int(self.mlp_ratio * self.width * 2 / 3), self.mlp_multiple_of
        return -(-h // k) * k

    @property
    def head_dim(self) -> int:
        return self.width // self.num_heads

    def setup(self):
        if self.width % self.num_heads or self.width % 4:
            raise ValueError(
                f"FourM: width {self.width} must divide by num_heads {self.num_heads} and by 4 "
                "(2D sin-cos positions)"
            )
        if not any(s.is_target for s in self.registry):
            raise ValueError("FourM: the registry has no target modality (all are pixels)")
        if self.mlp_type not in MLP_TYPES:
            raise ValueError(f"FourM: mlp_type must be one of {MLP_TYPES}, got {self.mlp_type!r}")
        if self.empty_context not in EMPTY_CONTEXT:
            raise ValueError(
                f"FourM: empty_context must be one of {EMPTY_CONTEXT}, got {self.empty_context!r}"
            )
        if self.num_register_tokens < 0:
            raise ValueError(
                f"FourM: num_register_tokens must be >= 0, got {self.num_register_tokens}"
            )
        pd = self.param_dtype
        self.embeddings = Embeddings(
            self.registry, self.width, param_dtype=pd, decoder_tables=self.decoder_tables,
            pixel_norm=self.pixel_norm, patch_bias=self.patch_bias,
            sincos_layout=self.sincos_layout,
        )  # fmt: skip
        if self.num_register_tokens:
            self.register_tokens = self.param(
                "register_tokens",
                nn.with_logical_partitioning(nn.initializers.normal(0.02), (None, "embed")),
                (self.num_register_tokens, self.width),
                pd,
            )
        block_kw = dict(
            width=self.width, num_heads=self.num_heads, mlp_dim=self.hidden_dim,
            qk_norm=self.qk_norm, attention_impl=self.attention_impl, dtype=self.dtype,
            param_dtype=pd, sharding_rules=self.sharding_rules, empty_context=self.empty_context,
            mlp_type=self.mlp_type, qkv_bias=self.qkv_bias, proj_bias=self.proj_bias,
            mlp_bias=self.mlp_bias, norm_bias=self.norm_bias,
        )  # fmt: skip
        enc_cls = nn.remat(EncoderBlock) if self.remat else EncoderBlock
        dec_cls = nn.remat(DecoderBlock) if self.remat else DecoderBlock
        self.encoder_blocks = [enc_cls(**block_kw) for _ in range(self.encoder_depth)]
        self.decoder_blocks = [dec_cls(**block_kw) for _ in range(self.decoder_depth)]
        norm_kw = dict(dtype=self.dtype, use_bias=self.norm_bias, param_dtype=pd)
        self.encoder_norm = layer_norm(**norm_kw)
        self.decoder_norm = layer_norm(**norm_kw)
        self.context_proj = dense(
            self.width, ("mlp", "embed"), use_bias=self.context_proj_bias, dtype=self.dtype,
            param_dtype=pd,
        )  # fmt: skip
        self.heads = Heads(
            self.registry, dtype=self.dtype, param_dtype=pd, impl=self.head_impl,
            chunk=self.head_chunk,
        )  # fmt: skip

    def _cast(self, x):
        return constrain(x.astype(self.dtype or x.dtype), self.sharding_rules)

    def __call__(self, batch, train: bool = False) -> jax.Array:
        """Teacher-forced logits [B, T, V_max] for the masked batch (no dropout: `train` is
        accepted for the trainer's uniform call)."""
        del train
        check_batch(batch, self.registry)
        context, context_mask = self.encode(batch)
        return self.decode(context, context_mask, *(jnp.asarray(batch[k]) for k in DEC_KEYS))

    def encode(self, batch) -> tuple[jax.Array, jax.Array]:
        """Encoder inputs -> (context [B, R + E, D] for the decoder, context_mask bool
        [B, R + E]); R = num_register_tokens (0 by default)."""
        check_batch(batch, self.registry, decoder=False)
        keys = [k for k in (*ENC_KEYS, *input_array_keys(self.registry)) if k in batch]
        batch = {k: jnp.asarray(batch[k]) for k in keys}
        x, pos_mod = self.embeddings.encoder(batch)
        enc_mask = batch["enc_mask"].astype(bool)
        if self.empty_context == "uniform":  # ml-4m: padding enters the encoder as zeros
            x = jnp.where(enc_mask[..., None], x, 0.0)
            pos_mod = jnp.where(enc_mask[..., None], pos_mod, 0.0)
        if self.num_register_tokens:
            b, r = x.shape[0], self.num_register_tokens
            reg = jnp.broadcast_to(self.register_tokens.astype(x.dtype), (b, r, x.shape[-1]))
            x = jnp.concatenate([reg, x], axis=1)
            pos_mod = jnp.concatenate([jnp.zeros_like(reg), pos_mod], axis=1)
            enc_mask = jnp.concatenate([jnp.ones((b, r), bool), enc_mask], axis=1)
        x = self._cast(x)
        for block in self.encoder_blocks:
            x = block(x, enc_mask[:, None, None, :])
        x = self.encoder_norm(x)
        return self._cast(self.context_proj(x) + pos_mod.astype(x.dtype)), enc_mask

    def decode(
        self, context, context_mask, dec_input_tokens, dec_modality, dec_positions, dec_mask
    ) -> jax.Array:
        """context [B, E, D], context_mask [B, E], decoder fields [B, T] -> [B, T, V_max]."""
        dec_mask = jnp.asarray(dec_mask).astype(bool)
        x = self._cast(self.embeddings.decoder(dec_input_tokens, dec_modality, dec_positions))
        causal = modality_tables(self.registry)["is_causal"]
        mask = decoder_attention_mask(dec_modality, dec_positions, dec_mask, causal)[:, None]
        cmask = jnp.asarray(context_mask).astype(bool)[:, None, None, :]
        for block in self.decoder_blocks:
            x = block(x, mask, context, cmask)
        logits = self.heads(self.decoder_norm(x), dec_modality)
        return constrain(logits, self.sharding_rules, LOGITS_AXES)

    def init_cache(self, batch_size: int, max_length: int, context=None) -> dict:
        """An empty self-attention KV cache for decoding one sequence of up to `max_length`
        tokens: {'k', 'v'}: per decoder layer [B, L, N, H] zeros. With `context` [B, S, D]
        (needs bound params), also the cross-attention keys/values {'cross_k', 'cross_v'},
        computed once here instead of at every step. Under a mesh every entry is sharded
        like the activations (`KV_CACHE_AXES`: batch over the data axes, heads as the rules
        place the attention heads)."""
        shape = (batch_size, max_length, self.num_heads, self.head_dim)
        dtype = self.dtype or jnp.float32
        depth = self.decoder_depth
        zeros = lambda: self._constrain_kv(jnp.zeros(shape, dtype))
        cache = {"k": [zeros() for _ in range(depth)], "v": [zeros() for _ in range(depth)]}
        if context is not None:
            kv = [block.cross_kv(context) for block in self.decoder_blocks]
            cache["cross_k"] = [self._constrain_kv(k) for k, _ in kv]
            cache["cross_v"] = [self._constrain_kv(v) for _, v in kv]
        return cache

    def _constrain_kv(self, x):
        return constrain(x, self.sharding_rules, KV_CACHE_AXES)

    def decode_step(
        self, context, context_mask, cache, token, position, modality_id, index
    ) -> tuple[jax.Array, dict]:
        """One autoregressive step of one sequence (or 1D image-token) modality.

        token, position: [B] (or scalars): the previous target token (the decoder input) and
        the position being predicted; modality_id: int or [B]; index: scalar step number,
        the cache slot written (steps 0..index are attended). Returns the logits [B, V_max]
        of this position and the updated cache. Matches `decode` on the teacher-forced
        sequence whose i-th token has index i."""
        if isinstance(modality_id, int) and not (
            0 <= modality_id < len(self.registry) and self.registry.specs[modality_id].is_causal
        ):
            raise ValueError(
                f"FourM.decode_step: modality_id {modality_id} is not a sequence modality (nor "
                f"1D image tokens) of {list(self.registry.names)}"
            )
        b = context.shape[0]
        as_col = lambda a: jnp.broadcast_to(jnp.asarray(a, jnp.int32), (b,))[:, None]  # [B, 1]
        token, position, modality = as_col(token), as_col(position), as_col(modality_id)
        x = self._cast(self.embeddings.decoder(token, modality, position))  # [B, 1, D]
        cmask = jnp.asarray(context_mask).astype(bool)[:, None, None, :]
        new_k, new_v = [], []
        for i, block in enumerate(self.decoder_blocks):
            if "cross_k" in cache:
                ck, cv = cache["cross_k"][i], cache["cross_v"][i]
            else:
                ck, cv = block.cross_kv(context)
            x, k, v = block.step(x, cache["k"][i], cache["v"][i], index, ck, cv, cmask)
            new_k.append(self._constrain_kv(k))
            new_v.append(self._constrain_kv(v))
        logits = self.heads(self.decoder_norm(x), modality)[:, 0]  # [B, V_max]
        return logits, {**cache, "k": new_k, "v": new_v}


def example_batch(registry: Registry, batch_size: int = 1, enc_len: int = 8, dec_len: int = 8):
    """An all-zeros batch of the contract's shapes (for init and `jax.eval_shape`)."""
    zeros = lambda n, dtype=np.int32: np.zeros((batch_size, n), dtype)
    batch = {k: zeros(enc_len) for k in ENC_KEYS} | {k: zeros(dec_len) for k in DEC_KEYS}
    batch["enc_mask"] = np.ones((batch_size, enc_len), bool)
    batch["dec_mask"] = np.ones((batch_size, dec_len), bool)
    batch["dec_target_tokens"] = zeros(dec_len)
    for s in registry:
        if s.kind == "pixels":
            batch[f"pixels_{s.name}"] = np.zeros(
                (batch_size, *s.image_size, s.channels), np.float32
            )
        elif s.kind == "sequence_embedding":
            batch[f"embeddings_{s.name}"] = np.zeros(
                (batch_size, s.max_length, s.embed_dim), np.float32
            )
    return batch


@functools.lru_cache(maxsize=16)
def abstract_variables(model: FourM):
    """The boxed (logically annotated) variable shapes of `model`, via jax.eval_shape; the key
    is made inside the trace, so nothing touches a device (AOT topologies included)."""
    batch = example_batch(model.registry, batch_size=1, enc_len=4, dec_len=4)
    return jax.eval_shape(lambda: model.init(jax.random.key(0), batch))
