"""Modality codecs, hinge/adaptive GAN helpers, discriminator and perceptual loss against
numpy references."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.tokenizers.discriminator import (
    PatchDiscriminator,
    adaptive_weight,
    adaptive_weight_from_grads,
    d_hinge_loss,
    g_hinge_loss,
    gan_start_step,
)
from mmjax.tokenizers.modalities import MODALITIES, get_modality
from mmjax.tokenizers.perceptual import (
    PerceptualLoss,
    expected_shapes,
    load_perceptual_weights,
    perceptual_loss,
)

RNG = np.random.default_rng(0)


def _unit_normals(b=2, h=4, w=4):
    v = RNG.normal(size=(b, h, w, 3))
    v /= np.linalg.norm(v, axis=-1, keepdims=True)
    v[:, 0, :] = 0.0  # no hit on the first row
    return v.astype(np.float32)


def test_rgb_loss_and_roundtrip():
    rgb = MODALITIES["rgb"]
    x = (RNG.integers(0, 256, (2, 4, 4, 3)) / 255.0).astype(np.float32)
    y = RNG.normal(size=(2, 4, 4, 3)).astype(np.float32)
    loss, terms = rgb.loss(jnp.asarray(y), x)
    err = y.astype(np.float64) - (2 * x - 1)
    assert float(loss) == pytest.approx(np.abs(err).mean() + (err**2).mean(), rel=1e-5)
    assert float(terms["l1"]) == pytest.approx(np.abs(err).mean(), rel=1e-5)
    back = np.asarray(rgb.postprocess(rgb.preprocess(x)))
    np.testing.assert_array_equal(np.round(back * 255), np.round(x * 255))
    np.testing.assert_allclose(back, x, atol=1e-7)
    assert np.asarray(rgb.postprocess(jnp.asarray(y))).min() >= 0.0  # clipped
    assert rgb.value_range == (0.0, 1.0)


def test_depth_loss_and_roundtrip():
    depth = MODALITIES["depth"]
    d = RNG.uniform(0.0, 17.0, (2, 4, 4)).astype(np.float32)
    d[:, 0] = 0.0  # no hit
    n = np.where(d > 0, 2 * np.log1p(d.astype(np.float64)) / np.log1p(20.0) - 1, 1.0)
    pre = np.asarray(depth.preprocess(d))
    assert pre.shape == (2, 4, 4, 1)
    np.testing.assert_allclose(pre[..., 0], n, atol=1e-6)
    assert np.all(pre[:, 0] == 1.0)  # no hit -> the far plane
    y = RNG.normal(size=(2, 4, 4, 1)).astype(np.float32)
    loss, _ = depth.loss(jnp.asarray(y), d)
    assert float(loss) == pytest.approx(np.abs(y[..., 0] - n).mean(), rel=1e-5)
    back = np.asarray(depth.postprocess(jnp.asarray(pre)))
    np.testing.assert_allclose(back, d, rtol=1e-5, atol=1e-5)
    # a blur between far floor (15 m) and sky decodes to far floor or to no hit, never near
    blur = np.linspace(pre[0, 0, 0, 0], depth.preprocess(np.float32(15.0))[..., 0], 7)
    decoded = np.asarray(depth.postprocess(jnp.asarray(blur, jnp.float32)[:, None]))
    assert np.all((decoded == 0.0) | (decoded >= 15.0 - 1e-3)), decoded
    snapped = np.asarray(depth.postprocess(depth.preprocess(np.float32([0.0, 17.9, 18.0, 19.5]))))
    np.testing.assert_allclose(snapped, [0.0, 17.9, 0.0, 0.0], rtol=1e-4)
    far = get_modality("depth", max_depth=50.0)  # snaps from 45 m on
    back = far.postprocess(far.preprocess(np.float32([30.0, 44.0, 46.0, 0.0])))
    np.testing.assert_allclose(np.asarray(back), [30.0, 44.0, 0.0, 0.0], rtol=1e-4)
    near = get_modality("depth", no_hit_above=10.0).postprocess(
        depth.preprocess(np.float32([11.0]))
    )
    np.testing.assert_allclose(np.asarray(near), [0.0])
    assert depth.value_range == (0.0, 20.0)
    assert get_modality("depth", max_depth=50.0).value_range == (0.0, 50.0)


def test_normals_loss_and_roundtrip():
    normals = MODALITIES["normals"]
    t = _unit_normals()
    y = RNG.normal(size=t.shape).astype(np.float32)
    loss, terms = normals.loss(jnp.asarray(y), t)
    l1 = np.abs(y - t).mean()
    valid = np.linalg.norm(t, axis=-1) > 0.5
    cos = (y * t).sum(-1) / np.linalg.norm(y, axis=-1)
    ang = (1 - cos)[valid].mean()
    assert float(terms["angular"]) == pytest.approx(ang, rel=1e-5)
    assert float(loss) == pytest.approx(l1 + ang, rel=1e-5)
    back = np.asarray(normals.postprocess(normals.preprocess(t)))
    np.testing.assert_allclose(np.linalg.norm(back[valid], axis=-1), 1.0, atol=1e-6)
    np.testing.assert_allclose(back, t, atol=1e-6)
    assert np.all(back[~valid] == 0.0)
    scaled = np.asarray(normals.postprocess(jnp.asarray(3.0 * t)))  # any length -> unit
    np.testing.assert_allclose(scaled, t, atol=1e-6)


def test_semseg_loss_and_roundtrip():
    semseg = MODALITIES["semseg"]
    labels = RNG.integers(0, 5, (2, 4, 4))
    onehot = np.asarray(semseg.preprocess(labels))
    np.testing.assert_array_equal(onehot, np.eye(5)[labels])
    np.testing.assert_array_equal(np.asarray(semseg.postprocess(jnp.asarray(onehot))), labels)
    y = RNG.normal(size=(2, 4, 4, 5)).astype(np.float64)
    logp = y - np.log(np.exp(y).sum(-1, keepdims=True))
    ce = -np.take_along_axis(logp, labels[..., None], -1).mean()
    loss, _ = semseg.loss(jnp.asarray(y, jnp.float32), labels)
    assert float(loss) == pytest.approx(ce, rel=1e-5)
    assert (semseg.in_channels, semseg.out_channels, semseg.value_range) == (5, 5, (0, 4))


@pytest.mark.parametrize(
    ("name", "bad", "match"),
    [
        ("rgb", np.zeros((4, 4, 3)), "rank 4"),
        ("rgb", np.zeros((1, 4, 4, 4)), "3 channels"),
        ("rgb", np.full((1, 4, 4, 3), 1.5), r"\[0.0, 1.0\]"),
        ("rgb", np.full((1, 4, 4, 3), np.nan), "finite"),
        ("depth", np.zeros((1, 4, 4, 1)), "rank 3"),
        ("depth", np.full((1, 4, 4), -1.0), r"\[0.0, 20.0\]"),
        ("normals", np.full((1, 4, 4, 3), 0.5), "unit length"),
        ("normals", np.zeros((1, 4, 4, 2)), "3 channels"),
        ("semseg", np.full((1, 4, 4), 5), r"\[0, 5\)"),
        ("semseg", np.full((1, 4, 4), -1), r"\[0, 5\)"),
        ("semseg", np.zeros((1, 4, 4), np.float32), "integer"),
        ("semseg", np.zeros((4, 4), np.int32), "rank 3"),
    ],
)
def test_validate_raises_naming_the_modality(name, bad, match):
    with pytest.raises(ValueError, match=f"'{name}'.*{match}"):
        MODALITIES[name].validate(bad)


def test_validate_accepts_good_batches():
    MODALITIES["rgb"].validate(RNG.uniform(size=(1, 4, 4, 3)))
    MODALITIES["depth"].validate(np.array([[[0.0, 3.0], [19.9, 20.0]]]))
    MODALITIES["normals"].validate(_unit_normals())
    MODALITIES["semseg"].validate(RNG.integers(0, 5, (1, 4, 4)))
    with pytest.raises(ValueError, match="'lidar'"):
        get_modality("lidar")


def test_hinge_losses_and_adaptive_weight():
    real, fake = RNG.normal(size=(3, 2, 2, 1)), RNG.normal(size=(3, 2, 2, 1))
    expected = 0.5 * (np.maximum(0, 1 - real).mean() + np.maximum(0, 1 + fake).mean())
    assert float(d_hinge_loss(jnp.asarray(real), jnp.asarray(fake))) == pytest.approx(expected)
    assert float(g_hinge_loss(jnp.asarray(fake))) == pytest.approx(-fake.mean())
    assert float(adaptive_weight(2.0, 0.5)) == pytest.approx(2.0 / (0.5 + 1e-4), rel=1e-6)
    assert float(adaptive_weight(1.0, 0.0)) == pytest.approx(1e4)
    assert float(adaptive_weight(1.0, 0.0, max_weight=10.0)) == 10.0
    rec = {"kernel": RNG.normal(size=(3, 3)), "bias": RNG.normal(size=3)}
    gan = {"kernel": RNG.normal(size=(3, 3)), "bias": RNG.normal(size=3)}

    def norm(t):
        return np.sqrt(sum((v**2).sum() for v in t.values()))

    assert float(adaptive_weight_from_grads(rec, gan)) == pytest.approx(
        norm(rec) / (norm(gan) + 1e-4), rel=1e-5
    )
    # the weight is a constant for the optimizer
    g = jax.grad(lambda a: adaptive_weight(a, 1.0) * a)(2.0)
    assert float(g) == pytest.approx(float(adaptive_weight(2.0, 1.0)))
    steps = jnp.arange(6)
    np.testing.assert_array_equal(
        np.asarray(jax.vmap(lambda s: gan_start_step(s, 3, 0.8))(steps)),
        np.array([0, 0, 0, 0.8, 0.8, 0.8], np.float32),
    )


def test_patch_discriminator_shapes_gradients_and_axes():
    disc = PatchDiscriminator(channels=8, num_layers=2, groups=4)
    x = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
    variables = jax.jit(disc.init)(jax.random.key(1), x)
    logits = disc.apply(variables, x)
    assert logits.shape == (2, 4, 4, 1)
    # no batch statistics: changing image 0 changes only image 0's logits
    x2 = x.at[0, :2, :2].add(5.0)
    diff = np.abs(np.asarray(disc.apply(variables, x2) - logits))
    assert diff[0].max() > 1e-4 and diff[1].max() == 0.0
    leaves = jax.tree.leaves(
        variables["params"], is_leaf=lambda t: isinstance(t, nn.LogicallyPartitioned)
    )
    assert all(isinstance(t, nn.LogicallyPartitioned) for t in leaves)
    grads = jax.grad(lambda p: g_hinge_loss(disc.apply({"params": p}, x)))(
        nn.meta.unbox(variables["params"])
    )
    assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads))


def _np_conv_same(x, k, b):
    """3x3 SAME conv by explicit shifts: [B, H, W, Ci] x [3, 3, Ci, Co]."""
    pad = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    h, w = x.shape[1:3]
    out = np.zeros((*x.shape[:3], k.shape[-1]))
    for di in range(3):
        for dj in range(3):
            out += pad[:, di : di + h, dj : dj + w] @ k[di, dj]
    return out + b


def test_perceptual_loss_matches_numpy(tmp_path):
    channels = ((4, 4), (6,))
    weights = {
        name: RNG.normal(scale=0.5, size=shape).astype(np.float32)
        for name, shape in expected_shapes(channels).items()
    }
    weights["mean"] = np.array([0.1, 0.0, -0.1], np.float32)
    weights["std"] = np.array([0.5, 0.6, 0.7], np.float32)
    path = tmp_path / "feat.npz"
    np.savez(path, **weights)
    x = RNG.uniform(-1, 1, (2, 8, 8, 3)).astype(np.float32)
    y = RNG.uniform(-1, 1, (2, 8, 8, 3)).astype(np.float32)

    def feats(img):
        h = (img.astype(np.float64) - weights["mean"]) / weights["std"]
        h = np.maximum(
            _np_conv_same(h, weights["stage0_conv0_kernel"], weights["stage0_conv0_bias"]), 0
        )
        f0 = h = np.maximum(
            _np_conv_same(h, weights["stage0_conv1_kernel"], weights["stage0_conv1_bias"]), 0
        )
        h = h.reshape(2, 4, 2, 4, 2, -1).mean(axis=(2, 4))
        f1 = np.maximum(
            _np_conv_same(h, weights["stage1_conv0_kernel"], weights["stage1_conv0_bias"]), 0
        )
        return [f0, f1]

    ref = 0.0
    for fx, fy in zip(feats(x), feats(y), strict=True):
        fx = fx / (np.linalg.norm(fx, axis=-1, keepdims=True) + 1e-10)
        fy = fy / (np.linalg.norm(fy, axis=-1, keepdims=True) + 1e-10)
        ref += ((fx - fy) ** 2).sum(-1).mean()
    loss_fn = PerceptualLoss.from_file(path, channels)
    assert float(loss_fn(jnp.asarray(x), jnp.asarray(y))) == pytest.approx(ref, rel=1e-4)
    assert float(loss_fn(jnp.asarray(x), jnp.asarray(x))) == pytest.approx(0.0, abs=1e-6)
    loaded = load_perceptual_weights(path, channels)
    assert float(perceptual_loss(loaded, jnp.asarray(x), jnp.asarray(y))) == pytest.approx(
        ref, rel=1e-4
    )

    with pytest.raises(FileNotFoundError, match=r"missing\.npz"):
        PerceptualLoss.from_file(tmp_path / "missing.npz", channels)
    bad = dict(weights, stage1_conv0_kernel=np.zeros((3, 3, 4, 5), np.float32))
    np.savez(tmp_path / "bad.npz", **bad)
    with pytest.raises(ValueError, match=r"stage1_conv0_kernel has shape \(3, 3, 4, 5\), expected"):
        load_perceptual_weights(tmp_path / "bad.npz", channels)
    with pytest.raises(ValueError, match="missing"):
        load_perceptual_weights(path, ((4, 4), (6, 6)))
