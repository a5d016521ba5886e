"""The `Tokenizer` bundle: a trained autoencoder packaged for pre-tokenization, generation
and colabs. A directory with `tokenizer.json` (modality, configs, resolution, token grid,
codebook size, expected value range) and `variables.msgpack` (the weights and quantizer
statistics); written atomically, so a half-written bundle is never loaded."""

import jax
import jax.numpy as jnp
import numpy as np

from mmjax.storage.bundle_files import load_bundle, save_bundle
from mmjax.tokenizers.autoencoder import build_autoencoder
from mmjax.tokenizers.modalities import MODALITIES

FORMAT = "mmjax-tokenizer-v1"


class Tokenizer:
    """`encode(images) -> int32 tokens` and `decode(tokens) -> images`, jitted and batched.

    images are modality values (rgb float [B, R, R, 3] in [0, 1], depth [B, R, R] metric,
    normals [B, R, R, 3] unit vectors, semseg int [B, R, R]); `value_range` says what
    the modality expects, so nobody has to guess the normalization.
    """

    def __init__(self, meta: dict, variables: dict):
        self.meta = meta
        self.modality = meta["modality"]
        self.codec = MODALITIES[self.modality]
        version = getattr(self.codec, "encoding_version", 1)
        if meta.get("encoding_version", 1) != version:
            raise ValueError(
                f"Tokenizer: this {self.modality} bundle was trained with encoding version "
                f"{meta.get('encoding_version', 1)} of the {self.modality} codec, this mmjax "
                f"has version {version} (see mmjax.tokenizers.modalities); retrain it"
            )
        self.model = build_autoencoder(meta["model"], meta["quantizer"], self.modality)
        self.variables = variables
        self.resolution = meta["resolution"]
        self.grid_shape = tuple(meta["grid_shape"])
        self.codebook_size = meta["codebook_size"]
        self.value_range = meta["value_range"]
        self._encode = jax.jit(
            lambda v, x: self.model.apply(v, self.codec.preprocess(x), method="encode")
        )
        self._decode = jax.jit(
            lambda v, t: self.codec.postprocess(self.model.apply(v, t, method="decode"))
        )

    def encode(self, images) -> jax.Array:
        images = np.asarray(images)
        self.codec.validate(images)
        if images.shape[1:3] != (self.resolution, self.resolution):
            raise ValueError(
                f"Tokenizer[{self.modality}]: images must be "
                f"{self.resolution}x{self.resolution}, got {images.shape}"
            )
        return self._encode(self.variables, jnp.asarray(images))

    def decode(self, tokens) -> jax.Array:
        tokens = jnp.asarray(tokens)
        if not jnp.issubdtype(tokens.dtype, jnp.integer):
            raise TypeError(
                f"Tokenizer[{self.modality}]: tokens must be integers, got {tokens.dtype}"
            )
        if tuple(tokens.shape[1:3]) != self.grid_shape:
            raise ValueError(
                f"Tokenizer[{self.modality}]: tokens must have grid "
                f"{self.grid_shape}, got shape {tokens.shape}"
            )
        return self._decode(self.variables, tokens)

    @staticmethod
    def save(path: str, *, modality, model_config, quantizer_config, resolution, variables):
        """Writes a bundle to `path` (a directory; replaced atomically if it exists).

        In a multi-process run every process calls it (the weights may be sharded across
        processes); process 0 writes, and all return once the bundle is in place."""
        model = build_autoencoder(model_config, quantizer_config, modality)
        meta = {
            "format": FORMAT,
            "modality": modality,
            "model": model_config,
            "quantizer": quantizer_config,
            "resolution": int(resolution),
            "grid_shape": list(model.grid_shape(int(resolution))),
            "codebook_size": int(model.quantizer.codebook_size),
            "value_range": list(MODALITIES[modality].value_range),
            "encoding_version": getattr(MODALITIES[modality], "encoding_version", 1),
        }
        return save_bundle(path, meta, "tokenizer.json", variables, "variables.msgpack")

    @classmethod
    def load(cls, path: str) -> "Tokenizer":
        """Loads a bundle directory, or a trainer workdir holding one in `tokenizer/`."""
        meta, variables = load_bundle(
            path, "tokenizer.json", "variables.msgpack", FORMAT, "Tokenizer.load", "tokenizer"
        )
        return cls(meta, variables)
