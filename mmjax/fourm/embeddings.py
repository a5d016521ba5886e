"""4M's modality adapters: input embeddings for the encoder and decoder, and output heads.

Every token of the masked batch is embedded as content + position + modality:
- content: encoder image tokens and sequences look up their modality's own token table
  [vocab_m, D] (named ('vocab', 'embed')); `pixels` patches go through that modality's patch
  embedding (a Dense over patch_size * patch_size * channels; input only), and
  `sequence_embedding` vectors through a Dense over their width (input only). Decoder targets of
  image modalities enter as one learned mask token; decoder targets of sequences enter as the
  embedding of `dec_input_tokens` (teacher forcing) from the same table as the encoder input;
  1D image tokens as that embedding too, or the mask token where the input is `MASK_INPUT`.
- position: fixed sin-cos, 2D over the grid for image tokens and pixels, 1D for sequences and
  1D image tokens (or a learned table for modalities with `learned_positions`). Residual
  image tokens (`depth` > 1, position cell * depth + level) repeat their cell's row per level
  and add the learned depth embedding `depth_emb_<name>` [depth, D] of their level.
- modality: one learned table [M, D] shared by encoder and decoder (unless `decoder_tables`).

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

from mmjax.fourm.modalities import IMAGE_TOKEN_KINDS, Registry
from mmjax.nn import dense, sincos_1d, sincos_2d
from mmjax.nn.mlp import DEFAULT_KERNEL_INIT, Dtype

TOKEN_KINDS = (*IMAGE_TOKEN_KINDS, "sequence")
ONE_D_KINDS = ("sequence", "sequence_embedding", "image_tokens_1d")  # 1D positions
PIXEL_NORMS = ("signed", "imagenet")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
EMBED_INIT = nn.initializers.normal(stddev=0.02)


def masked_logit(dtype) -> float:
    """The value of logits outside a modality's vocabulary: -1e9, or the dtype's floor."""
    return max(-1e9, float(jnp.finfo(dtype).min))


def modality_tables(registry: Registry) -> dict[str, np.ndarray]:
    """Per-modality-id constants [M] (numpy, static): vocab size, offsets into the concatenated
    token and position tables, token count, kind flags (is_causal: the decoder reads it left to
    right, see `ModalitySpec.is_causal`)."""
    vocab = np.array([s.vocab_size if s.kind in TOKEN_KINDS else 0 for s in registry], np.int32)
    num = np.array([s.num_tokens for s in registry], np.int32)
    return {
        "vocab": vocab,
        "tok_offset": (np.cumsum(vocab) - vocab).astype(np.int32),
        "num_tokens": num,
        "pos_offset": (np.cumsum(num) - num).astype(np.int32),
        "is_sequence": np.array([s.kind == "sequence" for s in registry]),
        "is_causal": np.array([s.is_causal for s in registry]),
        "is_target": np.array([s.is_target for s in registry]),
    }


def position_table(registry: Registry, width: int, layout: str = "row_major") -> np.ndarray:
    """[sum_m num_tokens_m, width] sin-cos positions of every modality, concatenated in
    modality-id order (2D grids in `layout`, see `mmjax.nn.sincos_2d`; 1D for sequences and
    1D image tokens)."""
    parts = [
        sincos_1d(np.arange(s.num_tokens), width)
        if s.kind in ONE_D_KINDS
        else np.repeat(sincos_2d(s.grid[0], s.grid[1], width, layout=layout), s.depth, axis=0)
        for s in registry
    ]
    return np.concatenate(parts, axis=0)


def patchify(pixels: jax.Array, patch_size: int) -> jax.Array:
    """[B, H, W, C] -> [B, (H/p) * (W/p), p * p * C], patches in row-major grid order."""
    b, h, w, c = pixels.shape
    p = patch_size
    x = pixels.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, (h // p) * (w // p), p * p * c)


def normalize_pixels(pixels: jax.Array, mode: str) -> jax.Array:
    """[0, 1] pixels -> the patch embedding's input: "signed" [-1, 1], or "imagenet"
    (x - mean) / std per channel, as ml-4m's data pipeline feeds rgb."""
    if mode == "signed":
        return 2.0 * pixels - 1.0
    return (pixels - jnp.asarray(IMAGENET_MEAN)) / jnp.asarray(IMAGENET_STD)


class Embeddings(nn.Module):
    """Input embeddings of both trunk halves; see the module docstring.

    Options (defaults: mmjax's own model; ml-4m checkpoints set them):
      decoder_tables: the decoder has its own token tables `dec_tok_emb_<name>` (every target
        token modality; image ones are unused by the forward pass, kept for a lossless round
        trip), its own modality table `dec_modality_emb` and learned positions
        `dec_pos_emb_<name>`, as ml-4m's separate decoder embedding modules.
      pixel_norm: "signed" ([0, 1] -> [-1, 1]) or "imagenet" (ImageNet mean / std).
      patch_bias: a bias on the pixel patch embedding (ml-4m's has none).
      sincos_layout: the 2D sin-cos layout, "row_major" or "ml4m" (see `mmjax.nn.sincos_2d`).
    """

    registry: Registry
    width: int
    param_dtype: jnp.dtype = jnp.float32
    decoder_tables: bool = False
    pixel_norm: str = "signed"
    patch_bias: bool = True
    sincos_layout: str = "row_major"

    def setup(self):
        if self.pixel_norm not in PIXEL_NORMS:
            raise ValueError(
                f"Embeddings: pixel_norm must be one of {PIXEL_NORMS}, got {self.pixel_norm!r}"
            )
        d, pd = self.width, self.param_dtype
        part = nn.with_logical_partitioning
        table = lambda name, shape, axes: self.param(name, part(EMBED_INIT, axes), shape, pd)
        self.token_tables = {
            s.name: table(f"tok_emb_{s.name}", (s.vocab_size, d), ("vocab", "embed"))
            for s in self.registry if s.kind in TOKEN_KINDS
        }  # fmt: skip
        if self.decoder_tables:
            self.dec_token_tables = {
                s.name: table(f"dec_tok_emb_{s.name}", (s.vocab_size, d), ("vocab", "embed"))
                for s in self.registry if s.kind in TOKEN_KINDS
            }  # fmt: skip
            self.dec_modality_emb = table(
                "dec_modality_emb", (len(self.registry), d), ("modality", "embed")
            )
        self.learned_positions = {
            s.name: table(f"pos_emb_{s.name}", (s.num_tokens, d), (None, "embed"))
            for s in self.registry if s.learned_positions
        }  # fmt: skip
        self.dec_learned_positions = {
            s.name: table(f"dec_pos_emb_{s.name}", (s.num_tokens, d), (None, "embed"))
            for s in self.registry if s.learned_positions and s.is_target and self.decoder_tables
        }  # fmt: skip
        self.patch_embed = {
            s.name: dense(d, (None, "embed"), use_bias=self.patch_bias, param_dtype=pd)
            for s in self.registry
            if s.kind == "pixels"
        }
        self.sequence_proj = {
            s.name: dense(d, (None, "embed"), param_dtype=pd)
            for s in self.registry
            if s.kind == "sequence_embedding"
        }
        self.depth_emb = {
            s.name: table(f"depth_emb_{s.name}", (s.depth, d), (None, "embed"))
            for s in self.registry if s.depth > 1
        }  # fmt: skip
        self.modality_emb = table("modality_emb", (len(self.registry), d), ("modality", "embed"))
        self.mask_token = self.param("mask_token", part(EMBED_INIT, ("embed",)), (d,), pd)

    def _ids(self, modality: jax.Array) -> jax.Array:
        return jnp.clip(modality, 0, len(self.registry) - 1)

    def _position_table(self, decoder: bool = False) -> jax.Array:
        """[sum_m num_tokens_m, D]: sin-cos rows, learned rows where a modality has them
        (the decoder's own learned rows with `decoder_tables`)."""
        fixed = position_table(self.registry, self.width, self.sincos_layout)
        learned = self.learned_positions
        if decoder and self.decoder_tables:
            learned = {**learned, **self.dec_learned_positions}
        if not learned:
            return jnp.asarray(fixed)
        tab = modality_tables(self.registry)
        parts = []
        for i, s in enumerate(self.registry):
            start, n = int(tab["pos_offset"][i]), s.num_tokens
            rows = learned.get(s.name)
            parts.append(jnp.asarray(fixed[start : start + n]) if rows is None else rows)
        return jnp.concatenate(parts, axis=0)

    def position_modality(
        self, modality: jax.Array, positions: jax.Array, decoder: bool = False
    ) -> jax.Array:
        """[B, N] modality ids and positions -> [B, N, D] position + modality embedding.
        Positions outside a modality's table are clipped (no value checks inside jit); masking
        never emits them: a sequence record holds at most max_length - 1 tokens, so its
        target's max_length decoder positions each have a row (`masking.masker.check_length`)."""
        tab = modality_tables(self.registry)
        m = self._ids(modality)
        pos = jnp.clip(positions, 0, jnp.asarray(tab["num_tokens"])[m] - 1)
        table = self._position_table(decoder)
        mod_table = self.dec_modality_emb if decoder and self.decoder_tables else self.modality_emb
        out = table[jnp.asarray(tab["pos_offset"])[m] + pos] + mod_table[m]
        for name, levels in self.depth_emb.items():  # residual tokens: + their level's row
            depth = levels[pos % self.registry[name].depth]
            out = out + jnp.where((m == self.registry.index(name))[..., None], depth, 0.0)
        return out

    def tokens(self, tokens: jax.Array, modality: jax.Array, decoder: bool = False) -> jax.Array:
        """[B, N] token ids of token modalities -> [B, N, D] (zeros for other kinds)."""
        tab = modality_tables(self.registry)
        m = self._ids(modality)
        tables = self.dec_token_tables if decoder and self.decoder_tables else self.token_tables
        table = jnp.concatenate(list(tables.values()), axis=0)  # [sum V_m, D]
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
            pixels = normalize_pixels(batch[f"pixels_{name}"], self.pixel_norm)
            patches = patchify(pixels, spec.patch_size)
            idx = jnp.clip(pos, 0, spec.num_tokens - 1)
            picked = jnp.take_along_axis(patches, idx[..., None], axis=1)  # [B, E, p*p*C]
            is_m = (mod == self.registry.index(name))[..., None]
            x = jnp.where(is_m, embed(picked.astype(self.param_dtype)), x)
        for name, proj in self.sequence_proj.items():
            if f"embeddings_{name}" not in batch:  # optional: no input of this modality
                continue
            vectors = batch[f"embeddings_{name}"]  # [B, L, embed_dim]
            idx = jnp.clip(batch["enc_tokens"], 0, vectors.shape[1] - 1)
            picked = jnp.take_along_axis(vectors, idx[..., None], axis=1)  # [B, E, embed_dim]
            is_m = (mod == self.registry.index(name))[..., None]
            x = jnp.where(is_m, proj(picked.astype(self.param_dtype)), x)
        pos_mod = self.position_modality(mod, pos)
        return x + pos_mod, pos_mod

    def decoder(self, tokens: jax.Array, modality: jax.Array, positions: jax.Array) -> jax.Array:
        """Decoder inputs [B, T] -> [B, T, D]: sequences and 1D image tokens embed `tokens`
        (the previous target token; MASK_INPUT < 0 reads as the mask token), image modalities
        use the mask token; plus position and modality."""
        causal = jnp.asarray(modality_tables(self.registry)["is_causal"])[self._ids(modality)]
        content = jnp.where(
            (causal & (tokens >= 0))[..., None],
            self.tokens(tokens, modality, decoder=True),
            self.mask_token,
        )
        return content + self.position_modality(modality, positions, decoder=True)


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
