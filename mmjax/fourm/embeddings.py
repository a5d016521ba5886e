"""4M's modality adapters: input embeddings for the encoder and decoder, and output heads.

Every token of the masked batch is embedded as content + position + modality:
- content: encoder image tokens and sequences look up their modality's own token table
  [vocab_m, D] (named ('vocab', 'embed')); `pixels` patches go through that modality's patch
  embedding (a Dense over patch_size * patch_size * channels; input only). Decoder targets of
  image modalities enter as one learned mask token; decoder targets of sequences enter as the
  embedding of `dec_input_tokens` (teacher forcing) from the same table as the encoder input.
- position: fixed sin-cos, 2D over the grid for image tokens and pixels, 1D for sequences.
- modality: one learned table [M, D] shared by encoder and decoder.

All per-modality choices are `where`s over modality ids with static shapes (no dynamic
slicing), so any mix of modalities in a batch row compiles to one program. Token tables are
concatenated at run time into one [sum vocab_m, D] table and read with one gather at
offset[modality] + token.

Heads are untied per target modality (kernel [D, vocab_m], named ('embed', 'vocab'), no
bias). `Heads` returns logits [B, T, V_max] with entries beyond a token's modality vocabulary
(and every entry of a token whose modality is not a target) set to `masked_logit`. Two
implementations, the same logits:
- `dense` (default): x @ W_m for every target modality on every token, keeping the row of the
  token's modality: T * D * sum_m(vocab_m) FLOPs (about M times one head) and one [B, T, V_m]
  temporary at a time; no [T, D, V] gathers, every shape follows the batch, so it shards like
  any Dense (data over B, tensor over vocab).
- `grouped`: the B*T tokens are sorted by modality into chunks of `head_chunk` tokens of one
  modality each (each modality's run padded to whole chunks), every chunk is multiplied by its
  own modality's kernel (padded to V_max) and the rows are put back in order:
  (B*T + M * head_chunk) * D * V_max FLOPs, e.g. 4.9x fewer than `dense` for the scenes' seven
  target heads at 32 x 64 tokens. The sort is over the whole batch, so it is meant for one
  device (CPU and single-accelerator runs, where small models spend most of their time in the
  heads; timings in benchmarks/RESULTS.md);
  on a sharded mesh keep `dense`.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mmjax.fourm.modalities import Registry
from mmjax.nn import dense, sincos_1d, sincos_2d
from mmjax.nn.mlp import DEFAULT_KERNEL_INIT, Dtype

TOKEN_KINDS = ("image_tokens", "sequence")
EMBED_INIT = nn.initializers.normal(stddev=0.02)


def masked_logit(dtype) -> float:
    """The value of logits outside a modality's vocabulary: -1e9, or the dtype's floor."""
    return max(-1e9, float(jnp.finfo(dtype).min))


def modality_tables(registry: Registry) -> dict[str, np.ndarray]:
    """Per-modality-id constants [M] (numpy, static): vocab size, offsets into the concatenated
    token and position tables, token count, kind flags."""
    vocab = np.array([s.vocab_size if s.kind in TOKEN_KINDS else 0 for s in registry], np.int32)
    num = np.array([s.num_tokens for s in registry], np.int32)
    return {
        "vocab": vocab,
        "tok_offset": (np.cumsum(vocab) - vocab).astype(np.int32),
        "num_tokens": num,
        "pos_offset": (np.cumsum(num) - num).astype(np.int32),
        "is_sequence": np.array([s.kind == "sequence" for s in registry]),
        "is_target": np.array([s.is_target for s in registry]),
    }


def position_table(registry: Registry, width: int) -> np.ndarray:
    """[sum_m num_tokens_m, width] sin-cos positions of every modality, concatenated in
    modality-id order (row-major grids; 1D for sequences)."""
    parts = [
        sincos_1d(np.arange(s.max_length), width)
        if s.kind == "sequence"
        else sincos_2d(s.grid[0], s.grid[1], width)
        for s in registry
    ]
    return np.concatenate(parts, axis=0)


def patchify(pixels: jax.Array, patch_size: int) -> jax.Array:
    """[B, H, W, C] -> [B, (H/p) * (W/p), p * p * C], patches in row-major grid order."""
    b, h, w, c = pixels.shape
    p = patch_size
    x = pixels.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, (h // p) * (w // p), p * p * c)


class Embeddings(nn.Module):
    """Input embeddings of both trunk halves; see the module docstring."""

    registry: Registry
    width: int
    param_dtype: jnp.dtype = jnp.float32

    def setup(self):
        d, pd = self.width, self.param_dtype
        part = nn.with_logical_partitioning
        self.token_tables = {
            s.name: self.param(f"tok_emb_{s.name}", part(EMBED_INIT, ("vocab", "embed")),
                               (s.vocab_size, d), pd)
            for s in self.registry if s.kind in TOKEN_KINDS
        }  # fmt: skip
        self.patch_embed = {
            s.name: dense(d, (None, "embed"), param_dtype=pd)
            for s in self.registry
            if s.kind == "pixels"
        }
        self.modality_emb = self.param(
            "modality_emb", part(EMBED_INIT, ("modality", "embed")), (len(self.registry), d), pd
        )
        self.mask_token = self.param("mask_token", part(EMBED_INIT, ("embed",)), (d,), pd)

    def _ids(self, modality: jax.Array) -> jax.Array:
        return jnp.clip(modality, 0, len(self.registry) - 1)

    def position_modality(self, modality: jax.Array, positions: jax.Array) -> jax.Array:
        """[B, N] modality ids and positions -> [B, N, D] sin-cos position + modality embedding.
        Positions outside a modality's table are clipped (no value checks inside jit); masking
        never emits them: a sequence record holds at most max_length - 1 tokens, so its
        target's max_length decoder positions each have a row (`masking.masker.check_length`)."""
        tab = modality_tables(self.registry)
        m = self._ids(modality)
        pos = jnp.clip(positions, 0, jnp.asarray(tab["num_tokens"])[m] - 1)
        table = jnp.asarray(position_table(self.registry, self.width))
        return table[jnp.asarray(tab["pos_offset"])[m] + pos] + self.modality_emb[m]

    def tokens(self, tokens: jax.Array, modality: jax.Array) -> jax.Array:
        """[B, N] token ids of token modalities -> [B, N, D] (zeros for other kinds)."""
        tab = modality_tables(self.registry)
        m = self._ids(modality)
        table = jnp.concatenate(list(self.token_tables.values()), axis=0)  # [sum V_m, D]
        tok = jnp.clip(tokens, 0, jnp.maximum(jnp.asarray(tab["vocab"])[m] - 1, 0))
        emb = table[jnp.asarray(tab["tok_offset"])[m] + tok]
        is_token = jnp.asarray(tab["vocab"] > 0)[m]
        return jnp.where(is_token[..., None], emb, 0.0)

    def encoder(self, batch) -> tuple[jax.Array, jax.Array]:
        """Encoder inputs -> (x [B, E, D] = content + position + modality, the position +
        modality part [B, E, D], which the decoder context reuses)."""
        mod, pos = batch["enc_modality"], batch["enc_positions"]
        x = self.tokens(batch["enc_tokens"], mod)
        for name, embed in self.patch_embed.items():
            spec = self.registry[name]
            patches = patchify(2.0 * batch[f"pixels_{name}"] - 1.0, spec.patch_size)
            idx = jnp.clip(pos, 0, spec.num_tokens - 1)
            picked = jnp.take_along_axis(patches, idx[..., None], axis=1)  # [B, E, p*p*C]
            is_m = (mod == self.registry.index(name))[..., None]
            x = jnp.where(is_m, embed(picked.astype(self.param_dtype)), x)
        pos_mod = self.position_modality(mod, pos)
        return x + pos_mod, pos_mod

    def decoder(self, tokens: jax.Array, modality: jax.Array, positions: jax.Array) -> jax.Array:
        """Decoder inputs [B, T] -> [B, T, D]: sequences embed `tokens` (the previous target
        token), image modalities use the mask token; plus position and modality."""
        is_seq = jnp.asarray(modality_tables(self.registry)["is_sequence"])[self._ids(modality)]
        content = jnp.where(is_seq[..., None], self.tokens(tokens, modality), self.mask_token)
        return content + self.position_modality(modality, positions)


HEAD_IMPLS = ("dense", "grouped")


class _HeadKernel(nn.Module):
    """One modality's output kernel [D, vocab] (the parameter tree of a bias-free Dense)."""

    features: int
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, width: int) -> jax.Array:
        init = nn.with_logical_partitioning(DEFAULT_KERNEL_INIT, ("embed", "vocab"))
        return self.param("kernel", init, (width, self.features), self.param_dtype)


class Heads(nn.Module):
    """Untied per-modality output heads -> logits [B, T, V_max] (see the module docstring)."""

    registry: Registry
    dtype: Dtype = None
    param_dtype: jnp.dtype = jnp.float32
    impl: str = "dense"
    chunk: int = 64

    def setup(self):
        if self.impl not in HEAD_IMPLS:
            raise ValueError(f"Heads: impl must be one of {HEAD_IMPLS}, got {self.impl!r}")
        if self.chunk < 1:
            raise ValueError(f"Heads: chunk must be >= 1, got {self.chunk}")
        self.head = {
            s.name: _HeadKernel(s.vocab_size, param_dtype=self.param_dtype)
            for s in self.registry if s.is_target
        }  # fmt: skip

    def __call__(self, x: jax.Array, modality: jax.Array) -> jax.Array:
        """x [B, T, D], modality [B, T] -> logits [B, T, V_max]."""
        dtype = self.dtype or jnp.result_type(x.dtype, self.param_dtype)
        kernels = {n: k(x.shape[-1]).astype(dtype) for n, k in self.head.items()}
        x = x.astype(dtype)
        if self.impl == "grouped":
            return self._grouped(x, jnp.asarray(modality), kernels)
        v_max = self.registry.max_vocab_size
        neg = masked_logit(dtype)
        out = jnp.full((*x.shape[:-1], v_max), neg, dtype)
        for name, kernel in kernels.items():
            logits = x @ kernel  # [B, T, V_m]
            logits = jnp.pad(logits, ((0, 0), (0, 0), (0, v_max - logits.shape[-1])),
                             constant_values=neg)  # fmt: skip
            out = jnp.where((modality == self.registry.index(name))[..., None], logits, out)
        return out

    def _grouped(self, x: jax.Array, modality: jax.Array, kernels: dict) -> jax.Array:
        registry, c = self.registry, self.chunk
        v_max, (*lead, d) = registry.max_vocab_size, x.shape
        n, g = int(np.prod(lead)), len(kernels)
        ids = np.array([registry.index(name) for name in kernels])
        group_of = np.zeros(len(registry), np.int32)  # non-targets join group 0, masked below
        group_of[ids] = np.arange(g)
        vocab = np.zeros(len(registry), np.int32)  # 0: every logit masked
        vocab[ids] = [k.shape[-1] for k in kernels.values()]
        modality = modality.reshape(n)
        group = jnp.asarray(group_of)[modality]
        # sort tokens by group; group j's run starts at a multiple of c in the padded layout
        order = jnp.argsort(group, stable=True)
        counts = jnp.bincount(group, length=g)
        padded = -(-counts // c) * c  # each group's run rounded up to whole chunks
        padded_end = jnp.cumsum(padded)
        padded_start = padded_end - padded
        rank = jnp.arange(n) - (jnp.cumsum(counts) - counts)[group[order]]
        slot = padded_start[group[order]] + rank  # padded row of the i-th sorted token
        num_chunks = -(-(n + g * (c - 1)) // c)
        rows = jnp.zeros((num_chunks * c, d), x.dtype).at[slot].set(x.reshape(n, d)[order])
        chunk_group = jnp.searchsorted(padded_end, jnp.arange(num_chunks) * c, side="right")
        w = jnp.stack([jnp.pad(k, ((0, 0), (0, v_max - k.shape[-1]))) for k in kernels.values()])
        w = w[jnp.minimum(chunk_group, g - 1)]  # [chunks, D, V_max]
        logits = jnp.einsum("kcd,kdv->kcv", rows.reshape(num_chunks, c, d), w)
        row_of_token = jnp.zeros(n, jnp.int32).at[order].set(slot.astype(jnp.int32))
        logits = logits.reshape(num_chunks * c, v_max)[row_of_token]
        keep = jnp.arange(v_max) < jnp.asarray(vocab)[modality][:, None]
        return jnp.where(keep, logits, masked_logit(x.dtype)).reshape(*lead, v_max)
