"""The flexible-length 1D autoencoder: encoder registers -> quantizer -> nested dropout ->
decoder (parts in `mmjax.tokenizers.flex1d`), with the Autoencoder's contract: `__call__`
returns (reconstruction, QuantizerOutput), `encode` int32 tokens, `decode` images. Tokens are
[B, k] for any k in 1..K (`num_tokens`); `decode` takes any such prefix."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mmjax.quantizers import QuantizerOutput
from mmjax.tokenizers.flex1d import (
    KEEP_DISTRIBUTIONS,
    NESTED_DROPOUT,
    Flex1DDecoder,
    Flex1DEncoder,
    sample_kept_lengths,
)
from mmjax.tokenizers.flex1d_mlp import Flex1DMlpDecoder, Flex1DMlpEncoder

FLEX1D_PRESETS = {
    # 32 px, patch 4: 64 patches -> 32 tokens
    "tiny": dict(
        patch_size=4, width=128, depth=2, heads=4, mlp_dim=512, z_dim=32, num_registers=32
    ),
    "small": dict(
        patch_size=8, width=384, depth=6, heads=6, mlp_dim=1536, z_dim=32, num_registers=64
    ),
    # TiTok-B's trunk (12 x 768, patch 16) with 128 tokens
    "base": dict(
        patch_size=16, width=768, depth=12, heads=12, mlp_dim=3072, z_dim=32, num_registers=128
    ),
}
# Options beyond the presets' fields; `image_size` is required (the decoder's output size),
# `decoder` overrides the decoder's width, depth, heads, mlp_dim where they differ, `trunk`
# is "vit" (registers in a ViT, mmjax.tokenizers.flex1d) or "mlp" (mmjax.tokenizers.flex1d_mlp:
# patch_size, width, mlp_dim, z_dim and num_registers apply).
FLEX1D_OPTIONS = ("image_size", "causal_registers", "keep", "decoder", "trunk")
FLEX1D_TRUNKS = ("vit", "mlp")
FLEX1D_DECODER_KEYS = ("width", "depth", "heads", "mlp_dim")


class Flex1DAutoencoder(nn.Module):
    """encoder -> quantizer -> nested dropout -> decoder over a 1D sequence of K codes.

    Attributes:
      encoder: Flex1DEncoder or Flex1DMlpEncoder ([B, H, W, C_in] -> [B, k, D]).
      decoder: Flex1DDecoder or Flex1DMlpDecoder (K codes and which are kept -> [B, H, W,
        C_out]).
      quantizer: any per-vector mmjax quantizer over D.
      in_channels: C_in, checked on every input (None: not checked).
      keep: the nested-dropout distribution of kept lengths in training (KEEP_DISTRIBUTIONS),
        drawn from the `nested_dropout` rng stream.
    """

    encoder: nn.Module
    decoder: nn.Module
    quantizer: nn.Module
    in_channels: int | None = None
    keep: str = "pow2"

    @property
    def num_registers(self) -> int:
        return int(self.encoder.num_registers)

    @property
    def image_size(self) -> int:
        return int(self.decoder.image_size)

    @property
    def codebook_size(self) -> int:
        return int(self.quantizer.codebook_size)

    def grid_shape(self, image_size) -> tuple[int]:
        """(K,): the most tokens an image becomes; image_size must be the model's."""
        hw = (image_size, image_size) if np.ndim(image_size) == 0 else tuple(image_size)
        if len(hw) != 2 or any(int(s) != self.image_size for s in hw):
            raise ValueError(
                f"Flex1DAutoencoder: image size {image_size} must be the model's image_size "
                f"{self.image_size}"
            )
        return (self.num_registers,)

    def check_num_tokens(self, num_tokens) -> int:
        """num_tokens (None: K) as an int in 1..K, else a ValueError naming it."""
        k = self.num_registers
        if num_tokens is None:
            return k
        if isinstance(num_tokens, bool) or not isinstance(num_tokens, (int, np.integer)):
            raise ValueError(f"num_tokens must be an int in 1..{k}, got {num_tokens!r}")
        if not 1 <= int(num_tokens) <= k:
            raise ValueError(
                f"num_tokens={int(num_tokens)} is outside 1..{k} (this tokenizer's token count)"
            )
        return int(num_tokens)

    def _check_input(self, x: jax.Array) -> None:
        if x.ndim != 4:
            raise ValueError(f"Flex1DAutoencoder: input must be [B, H, W, C], got {x.shape}")
        if self.in_channels is not None and x.shape[-1] != self.in_channels:
            raise ValueError(
                f"Flex1DAutoencoder: input must have {self.in_channels} channels, got {x.shape}"
            )
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise ValueError(f"Flex1DAutoencoder: input must be floating point, got {x.dtype}")
        self.grid_shape(x.shape[1:3])

    def _kept_lengths(self, batch: int, k: int, train: bool, fixed: bool) -> jax.Array:
        if not train or fixed or self.keep == "none":
            return jnp.full((batch,), k, jnp.int32)
        if not self.has_rng(NESTED_DROPOUT):
            raise ValueError(
                f"Flex1DAutoencoder: training with keep={self.keep!r} needs a "
                f"{NESTED_DROPOUT!r} rng (apply(..., rngs={{{NESTED_DROPOUT!r}: key}}))"
            )
        return sample_kept_lengths(self.make_rng(NESTED_DROPOUT), batch, k, self.keep)

    def __call__(
        self, x: jax.Array, train: bool = False, num_tokens: int | None = None
    ) -> tuple[jax.Array, QuantizerOutput]:
        """x [B, H, W, C_in] -> (y [B, H, W, C_out] from the first k codes, QuantizerOutput
        of those k). In training without num_tokens, k is drawn per example (`keep`)."""
        self._check_input(x)
        k = self.check_num_tokens(num_tokens)
        q = self.quantizer(self.encoder(x, k), train=train)
        kept = self._kept_lengths(x.shape[0], k, train, num_tokens is not None)
        if not self.is_initializing():
            self.sow("intermediates", "num_kept", kept)
        return self.decode_codes(q.quantized, kept), q

    def decode_codes(self, codes: jax.Array, num_kept: jax.Array) -> jax.Array:
        """codes [B, k, D] (k <= K), int [B] kept lengths -> y; code j of an example is seen
        only if j < its kept length, the other positions read as the mask embedding."""
        k = codes.shape[1]
        codes = jnp.pad(codes, ((0, 0), (0, self.num_registers - k), (0, 0)))
        kept = jnp.arange(self.num_registers)[None, :] < jnp.asarray(num_kept)[:, None]
        return self.decoder(codes, kept)

    def encode(self, x: jax.Array, num_tokens: int | None = None) -> jax.Array:
        """x [B, H, W, C_in] -> int32 tokens [B, k] (k = num_tokens, default K)."""
        self._check_input(x)
        k = self.check_num_tokens(num_tokens)
        return self.quantizer(self.encoder(x, k), train=False).indices

    def decode(self, tokens: jax.Array) -> jax.Array:
        """int tokens [B, k], any k in 1..K (a prefix of `encode`'s) -> y [B, H, W, C_out]."""
        if not jnp.issubdtype(tokens.dtype, jnp.integer):
            raise ValueError(
                f"Flex1DAutoencoder.decode: tokens must be integers, got {tokens.dtype}"
            )
        if tokens.ndim < 2:
            raise ValueError(f"Flex1DAutoencoder.decode: tokens must be [B, k], got {tokens.shape}")
        if not 1 <= tokens.shape[1] <= self.num_registers:
            raise ValueError(
                f"Flex1DAutoencoder.decode: {tokens.shape[1]} tokens per image (shape "
                f"{tokens.shape}) is outside 1..{self.num_registers}"
            )
        codes = self.quantizer.decode_indices(tokens)
        if codes.ndim != 3:
            raise ValueError(
                f"Flex1DAutoencoder.decode: tokens of shape {tokens.shape} are not a [B, k] "
                f"sequence for this quantizer"
            )
        kept = jnp.full((tokens.shape[0],), tokens.shape[1])
        return self.decode_codes(codes.astype(jnp.float32), kept)


def flex1d_parts(fields: dict, out_channels: int) -> tuple:
    """(encoder, decoder, keep) from a preset updated with the model config's fields."""
    fields = dict(fields)
    if "image_size" not in fields:
        raise ValueError(
            "build_autoencoder: type='flex1d' needs model.image_size (the images' side in "
            "pixels, e.g. the data resolution)"
        )
    image_size, keep = fields.pop("image_size"), fields.pop("keep", "pow2")
    trunk = fields.pop("trunk", "vit")
    if trunk not in FLEX1D_TRUNKS:
        raise ValueError(
            f"build_autoencoder: flex1d trunk must be one of {FLEX1D_TRUNKS}, got {trunk!r}"
        )
    if keep not in KEEP_DISTRIBUTIONS:
        raise ValueError(
            f"build_autoencoder: flex1d keep must be one of {KEEP_DISTRIBUTIONS}, got {keep!r}"
        )
    dec_over = dict(fields.pop("decoder", None) or {})
    bad = sorted(set(dec_over) - set(FLEX1D_DECODER_KEYS))
    if bad:
        raise ValueError(
            f"build_autoencoder: unknown flex1d decoder key(s) {bad}; expected some of "
            f"{list(FLEX1D_DECODER_KEYS)}"
        )
    p, k = fields["patch_size"], fields["num_registers"]
    if not (isinstance(k, int) and k >= 1):
        raise ValueError(f"build_autoencoder: flex1d num_registers must be >= 1, got {k!r}")
    if image_size < p or image_size % p:
        raise ValueError(
            f"build_autoencoder: flex1d image_size {image_size} must be a positive multiple "
            f"of patch_size {p}"
        )
    shared = {key: fields[key] for key in ("patch_size", *FLEX1D_DECODER_KEYS, "num_registers")}
    shared.update(dec_over)
    if trunk == "mlp":  # no attention heads nor sin-cos positions to divide the width
        enc = {key: fields[key] for key in ("patch_size", "mlp_dim", "z_dim", "num_registers")}
        dec = {key: shared[key] for key in ("patch_size", "width", "mlp_dim", "num_registers")}
        encoder = Flex1DMlpEncoder(**enc)
        decoder = Flex1DMlpDecoder(**dec, image_size=image_size, out_channels=out_channels)
        return encoder, decoder, keep
    for part in (fields, shared):
        if part["width"] % 4 or part["width"] % part["heads"]:
            raise ValueError(
                f"build_autoencoder: flex1d width {part['width']} must be divisible by "
                f"heads={part['heads']} and by 4 (sin-cos positions)"
            )
    encoder = Flex1DEncoder(**fields)
    decoder = Flex1DDecoder(**shared, image_size=image_size, out_channels=out_channels)
    return encoder, decoder, keep
