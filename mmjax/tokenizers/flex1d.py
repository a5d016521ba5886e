"""The parts of a flexible-length 1D image tokenizer (TiTok, Yu et al. 2024; FlexTok, Bachmann
et al. 2025; One-D-Piece, Miwa et al. 2025): a ViT encoder whose K learned register tokens,
appended after the image patches, become a 1D sequence of K codes, the nested-dropout
lengths that teach the sequence to be ordered coarse to fine, and a ViT decoder that rebuilds
the image from the first k codes (the rest read as a learned mask embedding) and learned
per-patch queries.

With causal registers, patches attend to patches only and register i to every patch and to
registers 0..i, so the first k codes do not depend on the registers after them: an image
encoded to k tokens gets the first k tokens of its K-token encoding.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mmjax.nn import TransformerBlock, dense, layer_norm, sincos_2d
from mmjax.tokenizers.vit import patchify, unpatchify

# How many codes nested dropout keeps per training example, uniformly over: "pow2" the
# powers of two below K and K itself (FlexTok), "uniform" 1..K (One-D-Piece), "none" K only.
KEEP_DISTRIBUTIONS = ("pow2", "uniform", "none")
NESTED_DROPOUT = "nested_dropout"  # the rng stream the kept lengths are drawn from


def _learned(scope: nn.Module, name: str, shape: tuple, axes: tuple) -> jax.Array:
    init = nn.with_logical_partitioning(nn.initializers.normal(0.02), axes)
    return scope.param(name, init, shape)


def kept_length_support(num_registers: int, keep: str) -> np.ndarray:
    """The kept lengths nested dropout draws from (each equally likely), ascending."""
    if keep == "pow2":
        powers = [2**i for i in range(num_registers.bit_length()) if 2**i < num_registers]
        return np.asarray([*powers, num_registers], np.int32)
    if keep == "uniform":
        return np.arange(1, num_registers + 1, dtype=np.int32)
    if keep == "none":
        return np.asarray([num_registers], np.int32)
    raise ValueError(f"nested dropout: keep must be one of {KEEP_DISTRIBUTIONS}, got {keep!r}")


def sample_kept_lengths(key: jax.Array, batch: int, num_registers: int, keep: str) -> jax.Array:
    """int32 [batch]: per example, how many leading codes the decoder sees."""
    support = jnp.asarray(kept_length_support(num_registers, keep))
    return jax.random.choice(key, support, (batch,)).astype(jnp.int32)


def register_mask(num_patches: int, num_registers: int) -> np.ndarray:
    """bool [N + K, N + K], True = may attend: patches see patches; register i sees every
    patch and registers 0..i."""
    n, total = num_patches, num_patches + num_registers
    row, col = np.arange(total)[:, None], np.arange(total)[None, :]
    return (col < n) | ((row >= n) & (col <= row))


def check_codes(owner: str, codes: jax.Array, kept: jax.Array, num_registers: int) -> None:
    """A decoder's input: codes [B, K, D] and kept [B, K], else a ValueError naming both."""
    k = num_registers
    if codes.ndim != 3 or codes.shape[1] != k or kept.shape != codes.shape[:2]:
        raise ValueError(
            f"{owner}: codes must be [B, {k}, D] with kept [B, {k}], got {codes.shape} and "
            f"{kept.shape}"
        )


class _Blocks(nn.Module):
    """LayerNorm, `depth` pre-LN transformer blocks and a final LayerNorm over [B, T, width]."""

    depth: int
    heads: int
    mlp_dim: int

    @nn.compact
    def __call__(self, t: jax.Array, mask: np.ndarray | None = None) -> jax.Array:
        # every token starts at unit scale: small learned registers, mask tokens and queries
        # are not drowned by the patch embeddings
        t = layer_norm(name="norm_in")(t)
        for i in range(self.depth):
            t = TransformerBlock(self.heads, self.mlp_dim, name=f"block_{i}")(t, mask=mask)
        return layer_norm(name="norm_out")(t)


class Flex1DEncoder(nn.Module):
    """[B, H, W, C] -> [B, k, z_dim]: the outputs of the first k of `num_registers` learned
    register tokens run with the image's patches (fixed 2D sin-cos positions; each register
    is its own learned position), projected to z_dim.

    With causal_registers only the first k registers are run (the rest cannot change them);
    without, all K are run (registers and patches attend to everything) and k kept.
    """

    patch_size: int = 4
    width: int = 128
    depth: int = 2
    heads: int = 4
    mlp_dim: int = 512
    z_dim: int = 32
    num_registers: int = 32
    causal_registers: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, num_tokens: int | None = None) -> jax.Array:
        k = self.num_registers if num_tokens is None else int(num_tokens)
        run = k if self.causal_registers else self.num_registers
        h = dense(self.width, (None, "embed"), name="patch_embed")(patchify(x, self.patch_size))
        b, gh, gw, d = h.shape
        patches = h.reshape(b, gh * gw, d) + jnp.asarray(sincos_2d(gh, gw, d), h.dtype)[None]
        registers = _learned(self, "registers", (self.num_registers, d), (None, "embed"))
        registers = jnp.broadcast_to(registers[:run].astype(h.dtype)[None], (b, run, d))
        t = jnp.concatenate([patches, registers], axis=1)  # [B, N + run, width]
        mask = register_mask(gh * gw, run) if self.causal_registers else None
        t = _Blocks(self.depth, self.heads, self.mlp_dim, name="trunk")(t, mask)
        z = dense(self.z_dim, ("embed", None), name="to_z")(t[:, gh * gw : gh * gw + k])
        return z  # [B, k, z_dim]


class Flex1DDecoder(nn.Module):
    """([B, K, z_dim] codes, bool [B, K] kept) -> [B, image_size, image_size, out_channels].

    Kept codes are projected to `width`; the others are replaced by the learned `mask_token`;
    each position then gets its learned `token_pos`. One learned query per output patch
    (plus fixed 2D sin-cos positions) attends with them; the queries' outputs become pixels.
    """

    image_size: int = 32
    patch_size: int = 4
    width: int = 128
    depth: int = 2
    heads: int = 4
    mlp_dim: int = 512
    out_channels: int = 3
    num_registers: int = 32

    @nn.compact
    def __call__(self, codes: jax.Array, kept: jax.Array) -> jax.Array:
        b, k, d = codes.shape[0], self.num_registers, self.width
        check_codes("Flex1DDecoder", codes, kept, k)
        tokens = dense(d, (None, "embed"), name="from_z")(codes)  # [B, K, width]
        mask_token = _learned(self, "mask_token", (d,), ("embed",)).astype(tokens.dtype)
        tokens = jnp.where(kept[..., None], tokens, mask_token)
        tokens = tokens + _learned(self, "token_pos", (k, d), (None, "embed")).astype(tokens.dtype)
        g = self.image_size // self.patch_size
        queries = _learned(self, "patch_queries", (g * g, d), (None, "embed"))
        queries = (queries + jnp.asarray(sincos_2d(g, g, d))).astype(tokens.dtype)
        t = jnp.concatenate([tokens, jnp.broadcast_to(queries[None], (b, g * g, d))], axis=1)
        t = _Blocks(self.depth, self.heads, self.mlp_dim, name="trunk")(t)
        p = self.patch_size
        out = dense(p * p * self.out_channels, ("embed", None), name="to_patches")(t[:, k:])
        return unpatchify(out.reshape(b, g, g, -1), p, self.out_channels).astype(jnp.float32)
