"""The `Tokenizer` bundle: a trained autoencoder packaged for pre-tokenization, generation
and colabs. A directory (local or gs://) with `tokenizer.json` (modality, configs,
resolution, token grid, codebook size, expected value range, the training data and its
preprocessing, versions) and an Orbax checkpoint of the weights and quantizer statistics,
written by every process and restored onto any mesh (see `mmjax.storage.bundles`); a
half-written bundle is never loaded."""

import jax
import jax.numpy as jnp
import numpy as np

from mmjax.parallel import batch_sharding, rules_from_config
from mmjax.quantizers.validation import check_index_range
from mmjax.storage.bundles import bundle_rules, load_bundle, save_bundle
from mmjax.tokenizers.autoencoder import build_autoencoder
from mmjax.tokenizers.flex1d_autoencoder import Flex1DAutoencoder
from mmjax.tokenizers.modalities import MODALITIES, get_modality

FORMAT = "mmjax-tokenizer-v1"
META = "tokenizer.json"


_FIELDS = ("modality", "model", "quantizer", "resolution", "grid_shape", "codebook_size")


def codec_of(meta: dict):
    """The modality codec of a bundle: its `modality`, with the optional
    `modality_options` (e.g. {"num_classes": 134} for semseg, {"channels": 768} for
    features) applied."""
    return get_modality(meta["modality"], **dict(meta.get("modality_options") or {}))


def _field_of(meta: dict, keys: tuple) -> str:
    """The metadata field that defines the variable at `keys` (named in load errors)."""
    return "quantizer" if any("quantizer" in k for k in keys) else "model"


def _check_meta(meta: dict):
    """Raises ValueError naming the metadata field that is missing, names an unknown
    modality, or disagrees with what the model and quantizer configs imply."""
    missing = [f for f in _FIELDS if f not in meta]
    if missing:
        raise ValueError(f"no {', '.join(repr(f) for f in missing)} field(s)")
    if meta["modality"] not in MODALITIES:
        raise ValueError(
            f"field 'modality' is {meta['modality']!r}, expected one of {tuple(MODALITIES)}"
        )
    model = build_autoencoder(meta["model"], meta["quantizer"], codec_of(meta))
    implied = {
        "grid_shape": list(model.grid_shape(int(meta["resolution"]))),
        "codebook_size": int(model.quantizer.codebook_size),
    }
    for field, want in implied.items():
        got = list(meta[field]) if field == "grid_shape" else meta[field]
        if got != want:
            raise ValueError(
                f"field {field!r} is {got}, but the 'model', 'quantizer' and 'resolution' "
                f"fields give {want} (quantizer {meta['quantizer']})"
            )


class Tokenizer:
    """`encode(images) -> int32 tokens` and `decode(tokens) -> images`, jitted and batched.

    images are modality values (rgb float [B, R, R, 3] in [0, 1], depth [B, R, R] metric,
    normals [B, R, R, 3] unit vectors, semseg int [B, R, R]); `value_range` says what
    the modality expects, so nobody has to guess the normalization. Integer images are
    never guessed: uint8 is read as x / 255 for modalities valued in [0, 1] (rgb); any
    other integer or bool dtype of a float-valued modality is refused (semseg takes ints).
    Tokens outside [0, codebook_size) are refused by `decode`.

    A 1D tokenizer (model type "flex1d") turns an image into up to K = `max_tokens` tokens,
    ordered coarse to fine: `encode(images, num_tokens=k)` gives [B, k], `decode` takes any
    prefix [B, k], 1 <= k <= K, and `grid_shape` is (K,). 2D tokenizers have max_tokens None.

    A multi-scale tokenizer (quantizer "msrvq", VAR) quantizes its (h, w) = `grid_shape`
    latent grid as a pyramid of square token maps, `scales` (e.g. (1, 2, 4, 8)): `encode`
    gives a flat int32 [B, sum(s * s)] sequence, scale by scale coarse to fine, each map
    row-major (`MultiScaleResidualQuantizer.split_indices` cuts it), and `decode` takes that
    sequence. Other tokenizers have scales None.

    With a `mesh`, the variables are sharded by `rules` (see `Tokenizer.load`) and each
    batch is split over the data axes (replicated when its size does not divide over them).
    """

    def __init__(self, meta: dict, variables: dict, mesh=None, rules=None):
        self.meta = meta
        self.mesh, self.rules = mesh, rules_from_config(rules)
        self.modality = meta["modality"]
        self.codec = codec_of(meta)
        version = getattr(self.codec, "encoding_version", 1)
        if meta.get("encoding_version", 1) != version:
            raise ValueError(
                f"Tokenizer: this {self.modality} bundle was trained with encoding version "
                f"{meta.get('encoding_version', 1)} of the {self.modality} codec, this mmjax "
                f"has version {version} (see mmjax.tokenizers.modalities); retrain it"
            )
        self.model = build_autoencoder(meta["model"], meta["quantizer"], self.codec)
        self.variables = variables
        self.resolution = meta["resolution"]
        self.grid_shape = tuple(meta["grid_shape"])
        self.codebook_size = meta["codebook_size"]
        self.value_range = meta["value_range"]
        self.data = meta.get("data")  # what it was trained on, when recorded
        self.source = meta.get("source")  # where converted weights came from, when recorded
        one_d = isinstance(self.model, Flex1DAutoencoder)
        self.max_tokens = self.model.num_registers if one_d else None
        scales = getattr(self.model.quantizer, "scales", None)
        self.scales = None if one_d or scales is None else tuple(int(s) for s in scales)

        def encode(variables, x, num_tokens):  # num_tokens: None for 2D tokenizers
            kw = {} if num_tokens is None else {"num_tokens": num_tokens}
            return self.model.apply(variables, self.codec.preprocess(x), method="encode", **kw)

        self._encode = jax.jit(encode, static_argnums=2)
        self._decode = jax.jit(
            lambda v, t: self.codec.postprocess(self.model.apply(v, t, method="decode"))
        )

    def _place(self, batch) -> jax.Array:
        """The batch where the variables are: on the mesh, split over the data axes, or on
        their device (arrays committed elsewhere would not mix with them in one jit)."""
        if self.mesh is None:
            leaves = jax.tree.leaves(self.variables)
            devices = leaves[0].devices() if leaves and isinstance(leaves[0], jax.Array) else ()
            if len(devices) != 1:
                return jnp.asarray(batch)
            return jax.device_put(batch, next(iter(devices)))
        return jax.device_put(batch, batch_sharding(self.mesh, np.shape(batch), self.rules))

    def _modality_values(self, images) -> np.ndarray:
        """images as the codec's values: the integer-image rule of the class docstring."""
        images = np.asarray(images)
        low, high = self.codec.value_range
        float_valued = not (isinstance(low, int) and isinstance(high, int))
        if not float_valued or np.issubdtype(images.dtype, np.floating):
            return images
        if images.dtype == np.uint8 and (float(low), float(high)) == (0.0, 1.0):
            return images.astype(np.float32) / 255.0
        uint8 = " (uint8 is read as x / 255 only for values in [0, 1])"
        raise TypeError(
            f"Tokenizer[{self.modality}]: images must be float values in [{low}, {high}], "
            f"got dtype {images.dtype}{uint8 if images.dtype == np.uint8 else ''}; convert "
            f"them to float in that range first"
        )

    def _check_num_tokens(self, num_tokens) -> int | None:
        if self.max_tokens is None:
            if num_tokens is not None:
                raise ValueError(
                    f"Tokenizer[{self.modality}]: num_tokens={num_tokens!r} applies to 1D "
                    f"tokenizers only; this one has a {self.grid_shape} token grid"
                )
            return None
        return self.model.check_num_tokens(num_tokens)

    def encode(self, images, num_tokens: int | None = None) -> jax.Array:
        """images [B, R, R, ...] (see the class docstring) -> int32 tokens [B, h, w, ...];
        1D tokenizers: [B, num_tokens] (default: all K), num_tokens in 1..K; multi-scale:
        [B, sum(s * s) over `scales`]."""
        num_tokens = self._check_num_tokens(num_tokens)
        images = self._modality_values(images)
        self.codec.validate(images)
        if images.shape[1:3] != (self.resolution, self.resolution):
            raise ValueError(
                f"Tokenizer[{self.modality}]: images must be "
                f"{self.resolution}x{self.resolution}, got {images.shape}"
            )
        return self._encode(self.variables, self._place(images), num_tokens)

    def decode(self, tokens) -> jax.Array:
        """int tokens [B, h, w, ...] (1D: [B, k], 1 <= k <= K; multi-scale: [B, sum(s * s)])
        in [0, codebook_size) -> modality values; tokens outside that range raise a
        ValueError naming it."""
        tokens = tokens if isinstance(tokens, jax.Array) else np.asarray(tokens)
        if not jnp.issubdtype(tokens.dtype, jnp.integer):
            raise TypeError(
                f"Tokenizer[{self.modality}]: tokens must be integers, got {tokens.dtype}"
            )
        if self.max_tokens is not None:
            if tokens.ndim < 2 or not 1 <= tokens.shape[1] <= self.max_tokens:
                length = tokens.shape[1] if tokens.ndim >= 2 else None
                raise ValueError(
                    f"Tokenizer[{self.modality}]: tokens must be [B, k] with k in "
                    f"1..{self.max_tokens}, got k={length} (shape {tokens.shape})"
                )
        elif self.scales is not None:
            n = sum(s * s for s in self.scales)
            if tokens.ndim != 2 or tokens.shape[1] != n:
                raise ValueError(
                    f"Tokenizer[{self.modality}]: tokens must be [B, {n}] (the scales "
                    f"{self.scales} flattened), got shape {tokens.shape}"
                )
        elif tuple(tokens.shape[1:3]) != self.grid_shape:
            raise ValueError(
                f"Tokenizer[{self.modality}]: tokens must have grid "
                f"{self.grid_shape}, got shape {tokens.shape}"
            )
        check_index_range(
            f"Tokenizer[{self.modality}].decode", "tokens", tokens, self.codebook_size
        )
        return self._decode(self.variables, self._place(tokens))

    @staticmethod
    def save(
        path,
        *,
        modality,
        model_config,
        quantizer_config,
        resolution,
        variables,
        sharding_rules=None,
        data=None,
        modality_options=None,
        source=None,
    ):
        """Writes a bundle to `path` (a directory, local or gs://; an existing bundle there
        is replaced once the new one is complete). `sharding_rules`: the logical rules the
        weights were trained with, the default of `load(path, mesh)`; `data`: what it was
        trained on (`mmjax.data.describe_source`: source, path or TFDS name and split,
        resolution, crop policy), kept as `Tokenizer.data`; `modality_options`: overrides of
        the modality codec's fields (see `codec_of`); `source`: a JSON-able dict saying where
        converted weights came from (format, original config), kept as `Tokenizer.source`.

        In a multi-process run every process calls it (the weights may be sharded across
        processes); each writes its own shards, and all return once the bundle is in place."""
        options = dict(modality_options or {})
        codec = get_modality(modality, **options)
        model = build_autoencoder(model_config, quantizer_config, codec)
        meta = {
            "format": FORMAT,
            "modality": modality,
            "model": model_config,
            "quantizer": quantizer_config,
            "resolution": int(resolution),
            "grid_shape": list(model.grid_shape(int(resolution))),
            "codebook_size": int(model.quantizer.codebook_size),
            "value_range": list(codec.value_range),
            "encoding_version": getattr(codec, "encoding_version", 1),
        }
        if options:
            meta["modality_options"] = options
        if source is not None:
            meta["source"] = dict(source)
        if data is not None:
            meta["data"] = dict(data)
        if sharding_rules is not None:
            meta["sharding_rules"] = [list(r) for r in rules_from_config(sharding_rules)]
        return save_bundle(path, meta, META, variables)

    @classmethod
    def load(cls, path, mesh=None, rules=None) -> "Tokenizer":
        """Loads a bundle directory, or a trainer workdir holding one in `tokenizer/`.

        mesh: restore the variables sharded over it, each parameter as `rules` say for its
        logical axes (default: the rules the bundle was trained with, else DEFAULT_RULES);
        None: onto one device."""

        def abstract(meta):
            _check_meta(meta)
            codec = codec_of(meta)
            model = build_autoencoder(meta["model"], meta["quantizer"], codec)
            channels = codec.in_channels
            x = jax.ShapeDtypeStruct((1, meta["resolution"], meta["resolution"], channels), "f4")
            return jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)

        meta, variables = load_bundle(
            path, META, FORMAT, "Tokenizer.load", "tokenizer", mesh=mesh, rules=rules,
            abstract=abstract, field_of=_field_of,
        )  # fmt: skip
        return cls(meta, variables, mesh=mesh, rules=bundle_rules(meta, rules))
