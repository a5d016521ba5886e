"""The `Tokenizer` bundle: a trained autoencoder packaged for pre-tokenization, generation
and colabs. A directory with `tokenizer.json` (modality, configs, resolution, token grid,
codebook size, expected value range) and `variables.msgpack` (the weights and quantizer
statistics); written atomically, so a half-written bundle is never loaded."""

import json
import os
import shutil

import flax.linen as nn
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np

from mmjax.parallel.distributed import barrier, is_primary, to_host
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
        }
        variables = to_host(nn.unbox(variables))  # a collective when sharded over processes
        if is_primary():
            tmp = path.rstrip("/") + ".tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            os.makedirs(tmp)
            with open(os.path.join(tmp, "tokenizer.json"), "w") as f:
                json.dump(meta, f, indent=1, default=lambda o: list(o))
            with open(os.path.join(tmp, "variables.msgpack"), "wb") as f:
                f.write(flax.serialization.msgpack_serialize(variables))
            old = path.rstrip("/") + ".old"
            if os.path.exists(path):
                os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        barrier("mmjax.Tokenizer.save")
        return path

    @classmethod
    def load(cls, path: str) -> "Tokenizer":
        """Loads a bundle directory, or a trainer workdir holding one in `tokenizer/`."""
        if os.path.isdir(os.path.join(path, "tokenizer")):
            path = os.path.join(path, "tokenizer")
        meta_path = os.path.join(path, "tokenizer.json")
        weights = os.path.join(path, "variables.msgpack")
        for p in (meta_path, weights):
            if not os.path.exists(p):
                raise FileNotFoundError(
                    f"Tokenizer.load: {p} not found (is {path} a tokenizer "
                    f"bundle or a finished tokenizer workdir?)"
                )
        try:
            with open(meta_path) as f:
                meta = json.load(f)
            with open(weights, "rb") as f:
                variables = flax.serialization.msgpack_restore(f.read())
        except (ValueError, OSError) as e:
            raise ValueError(f"Tokenizer.load: {path} is unreadable ({e})") from e
        if meta.get("format") != FORMAT:
            raise ValueError(
                f"Tokenizer.load: {meta_path} has format {meta.get('format')!r}, "
                f"expected {FORMAT!r}"
            )
        return cls(meta, jax.tree.map(jnp.asarray, variables))
