"""Per-modality codecs: how a modality's values become autoencoder inputs, which loss the
reconstruction gets, and how decoder outputs become modality values again.

Every codec works on batches (a leading batch axis) and exposes
  name, in_channels, out_channels, value_range (min, max of valid values),
  preprocess(batch) -> model input [B, H, W, in_channels] float32,
  loss(y, target_batch) -> (scalar, {term: scalar}),
  postprocess(y) -> modality values,
  validate(batch) -> raises ValueError naming the modality on a wrong rank, channel count,
    dtype or value range.
"""

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import optax


def _fail(name: str, what: str) -> None:
    raise ValueError(f"modality {name!r}: {what}")


def _check_rank(name: str, x, rank: int, layout: str) -> None:
    if np.ndim(x) != rank:
        _fail(name, f"expected a batch {layout} (rank {rank}), got shape {np.shape(x)}")


def _check_finite_range(name: str, x, low: float, high: float, tol: float = 1e-6) -> None:
    x = np.asarray(x)
    if not np.all(np.isfinite(x)):
        _fail(name, "values must be finite")
    if x.size and (x.min() < low - tol or x.max() > high + tol):
        _fail(name, f"values must lie in [{low}, {high}], got [{x.min():.4g}, {x.max():.4g}]")


@dataclasses.dataclass(frozen=True)
class RGB:
    """Images [B, H, W, 3] in [0, 1]; model space [-1, 1]; loss L1 + L2 in model space."""

    name: str = "rgb"
    in_channels: int = 3
    out_channels: int = 3
    value_range: tuple[float, float] = (0.0, 1.0)

    def preprocess(self, x) -> jax.Array:
        return jnp.asarray(x, jnp.float32) * 2.0 - 1.0

    def loss(self, y, target) -> tuple[jax.Array, dict]:
        err = y.astype(jnp.float32) - self.preprocess(target)
        l1, l2 = jnp.mean(jnp.abs(err)), jnp.mean(jnp.square(err))
        return l1 + l2, {"l1": l1, "l2": l2}

    def postprocess(self, y) -> jax.Array:
        return jnp.clip((y.astype(jnp.float32) + 1.0) / 2.0, 0.0, 1.0)

    def validate(self, x) -> None:
        _check_rank(self.name, x, 4, "[B, H, W, 3]")
        if np.shape(x)[-1] != 3:
            _fail(self.name, f"expected 3 channels, got shape {np.shape(x)}")
        _check_finite_range(self.name, x, *self.value_range)


@dataclasses.dataclass(frozen=True)
class Depth:
    """Metric depth [B, H, W], 0 = no hit, in [0, max_depth].

    Model space: n = 2 * log1p(d) / log1p(max_depth) - 1 in [-1, 1] (log spacing gives near
    surfaces more resolution), and no hit (d = 0) at n = +1: the far plane, as the sky is. Then
    the decoder's blur across a horizon mixes far floor with "farther", not with "0 m", so no
    rim of phantom near surfaces appears where the sky meets the ground. Loss: L1 on n.
    Postprocess: clip n to [-1, 1], invert, and snap depths at or beyond `no_hit_above`
    (default 0.9 max_depth) to 0 (no hit). Keep both above your farthest real surface (the
    scenes' is ~16 m).
    """

    # 2: no hit at n = +1 (the far plane); version 1 put it at n = -1
    encoding_version: ClassVar[int] = 2
    max_depth: float = 20.0
    no_hit_above: float | None = None
    name: str = "depth"
    in_channels: int = 1
    out_channels: int = 1

    @property
    def value_range(self) -> tuple[float, float]:
        return (0.0, float(self.max_depth))

    def preprocess(self, d) -> jax.Array:
        d = jnp.asarray(d, jnp.float32)
        n = 2.0 * jnp.log1p(d) / np.log1p(self.max_depth) - 1.0
        return jnp.where(d > 0, n, 1.0)[..., None]

    def loss(self, y, target) -> tuple[jax.Array, dict]:
        l1 = jnp.mean(jnp.abs(y.astype(jnp.float32) - self.preprocess(target)))
        return l1, {"l1": l1}

    def postprocess(self, y) -> jax.Array:
        n = jnp.clip(y.astype(jnp.float32)[..., 0], -1.0, 1.0)
        d = jnp.expm1((n + 1.0) / 2.0 * np.log1p(self.max_depth))
        limit = 0.9 * self.max_depth if self.no_hit_above is None else self.no_hit_above
        return jnp.where(d >= limit, 0.0, d)

    def validate(self, d) -> None:
        _check_rank(self.name, d, 3, "[B, H, W]")
        _check_finite_range(self.name, d, *self.value_range)


@dataclasses.dataclass(frozen=True)
class Normals:
    """Unit normals [B, H, W, 3], exactly 0 where nothing was hit. Model space: the vectors.

    Loss: L1 on every pixel (it also learns the no-hit zeros) + angular (1 - cos) between
    the prediction and the target on valid pixels (|target| > 0.5). Postprocess: unit
    vectors where |y| >= 0.5, else 0 (no hit).
    """

    angular_weight: float = 1.0
    name: str = "normals"
    in_channels: int = 3
    out_channels: int = 3
    value_range: tuple[float, float] = (-1.0, 1.0)

    def preprocess(self, x) -> jax.Array:
        return jnp.asarray(x, jnp.float32)

    def loss(self, y, target) -> tuple[jax.Array, dict]:
        y, t = y.astype(jnp.float32), self.preprocess(target)
        l1 = jnp.mean(jnp.abs(y - t))
        valid = (jnp.linalg.norm(t, axis=-1) > 0.5).astype(jnp.float32)
        cos = jnp.sum(y * t, -1) / jnp.maximum(jnp.linalg.norm(y, axis=-1), 1e-6)
        angular = jnp.sum((1.0 - cos) * valid) / jnp.maximum(jnp.sum(valid), 1.0)
        return l1 + self.angular_weight * angular, {"l1": l1, "angular": angular}

    def postprocess(self, y) -> jax.Array:
        y = y.astype(jnp.float32)
        norm = jnp.linalg.norm(y, axis=-1, keepdims=True)
        return jnp.where(norm >= 0.5, y / jnp.maximum(norm, 1e-6), 0.0)

    def validate(self, x) -> None:
        _check_rank(self.name, x, 4, "[B, H, W, 3]")
        if np.shape(x)[-1] != 3:
            _fail(self.name, f"expected 3 channels, got shape {np.shape(x)}")
        _check_finite_range(self.name, x, *self.value_range)
        norm = np.linalg.norm(np.asarray(x, np.float32), axis=-1)
        if np.any((np.abs(norm - 1.0) > 1e-2) & (norm > 1e-6)):
            _fail(self.name, "vectors must be unit length (or exactly 0 where nothing was hit)")


@dataclasses.dataclass(frozen=True)
class Semseg:
    """Class maps [B, H, W] of ints in [0, num_classes). Model input: one-hot; output:
    num_classes logits; loss: mean softmax cross-entropy; postprocess: argmax (int32)."""

    num_classes: int = 5
    name: str = "semseg"

    @property
    def in_channels(self) -> int:
        return self.num_classes

    @property
    def out_channels(self) -> int:
        return self.num_classes

    @property
    def value_range(self) -> tuple[int, int]:
        return (0, self.num_classes - 1)

    def preprocess(self, labels) -> jax.Array:
        return jax.nn.one_hot(jnp.asarray(labels), self.num_classes, dtype=jnp.float32)

    def loss(self, y, target) -> tuple[jax.Array, dict]:
        ce = optax.softmax_cross_entropy_with_integer_labels(
            y.astype(jnp.float32), jnp.asarray(target, jnp.int32)
        ).mean()
        return ce, {"cross_entropy": ce}

    def postprocess(self, y) -> jax.Array:
        return jnp.argmax(y, axis=-1).astype(jnp.int32)

    def validate(self, labels) -> None:
        _check_rank(self.name, labels, 3, "[B, H, W]")
        labels = np.asarray(labels)
        if not np.issubdtype(labels.dtype, np.integer):
            _fail(self.name, f"expected integer class ids, got dtype {labels.dtype}")
        if labels.size and (labels.min() < 0 or labels.max() >= self.num_classes):
            _fail(
                self.name,
                f"class ids must lie in [0, {self.num_classes}), "
                f"got [{labels.min()}, {labels.max()}]",
            )


@dataclasses.dataclass(frozen=True)
class FeatureMap:
    """Dense feature maps [B, h, w, channels] (e.g. CLIP, DINOv2, ImageBind patch features),
    any finite values. Model space: the features; loss: smooth L1 (Huber, delta 1), as ml-4m
    trains its feature-map tokenizers; postprocess: the decoder output."""

    channels: int = 768
    name: str = "features"

    @property
    def in_channels(self) -> int:
        return self.channels

    @property
    def out_channels(self) -> int:
        return self.channels

    @property
    def value_range(self) -> tuple[float, float]:
        return (float("-inf"), float("inf"))

    def preprocess(self, x) -> jax.Array:
        return jnp.asarray(x, jnp.float32)

    def loss(self, y, target) -> tuple[jax.Array, dict]:
        err = y.astype(jnp.float32) - self.preprocess(target)
        smooth_l1 = jnp.mean(optax.huber_loss(err, delta=1.0))
        return smooth_l1, {"smooth_l1": smooth_l1}

    def postprocess(self, y) -> jax.Array:
        return y.astype(jnp.float32)

    def validate(self, x) -> None:
        _check_rank(self.name, x, 4, f"[B, h, w, {self.channels}]")
        if np.shape(x)[-1] != self.channels:
            _fail(self.name, f"expected {self.channels} channels, got shape {np.shape(x)}")
        if not np.all(np.isfinite(np.asarray(x))):
            _fail(self.name, "values must be finite")


MODALITIES = {
    "rgb": RGB(),
    "depth": Depth(),
    "normals": Normals(),
    "semseg": Semseg(),
    "features": FeatureMap(),
}


def get_modality(modality, **overrides):
    """A codec by name (e.g. "depth") or a codec instance passed through; `overrides`
    replace fields (e.g. num_classes=7 for semseg, max_depth=50.0 for depth)."""
    if isinstance(modality, str):
        if modality not in MODALITIES:
            raise ValueError(f"unknown modality {modality!r}; expected one of {tuple(MODALITIES)}")
        modality = MODALITIES[modality]
    if not overrides:
        return modality
    try:
        return dataclasses.replace(modality, **overrides)
    except TypeError as err:
        raise ValueError(f"modality {modality.name!r}: bad override(s) {overrides}: {err}") from err
