"""Conv and ViT autoencoders: token grids, decode(encode(x)) == forward, a tiny fit,
logical partitioning, named errors."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mmjax.quantizers import STATS
from mmjax.tokenizers.autoencoder import Autoencoder, build_autoencoder
from mmjax.tokenizers.conv import ConvDecoder, ConvEncoder
from mmjax.tokenizers.modalities import MODALITIES
from mmjax.tokenizers.vit import ViTEncoder, patchify, unpatchify

CONV = {"type": "conv", "channels": 8, "channel_mult": (1, 2, 2), "num_res_blocks": 1,
        "attention": True, "z_channels": 4, "groups": 4}  # fmt: skip
VIT = {"type": "vit", "patch_size": 4, "width": 16, "depth": 1, "heads": 2, "mlp_dim": 32,
       "z_dim": 4}  # fmt: skip
QUANTIZERS = {
    "fsq": {"type": "fsq", "levels": (5, 5, 4, 4)},
    "vq": {"type": "vq", "codebook_size": 16},
    "rvq": {"type": "rvq", "depth": 2, "base": {"type": "vq", "codebook_size": 8}},
}


def _images(b=2, size=16, c=3, seed=0):
    return jax.random.uniform(jax.random.key(seed), (b, size, size, c)) * 2 - 1


def _jit_apply(ae, method=None):
    return jax.jit(functools.partial(ae.apply, method=method))


@pytest.mark.parametrize(("model", "quant"), [(CONV, "fsq"), (CONV, "rvq"), (VIT, "vq")])
def test_decode_of_encode_equals_forward(model, quant):
    ae = build_autoencoder(model, QUANTIZERS[quant], "rgb")
    x = _images()
    variables = jax.jit(ae.init)(jax.random.key(0), x)
    y, q = _jit_apply(ae)(variables, x)
    tokens = _jit_apply(ae, Autoencoder.encode)(variables, x)
    assert ae.grid_shape(16) == (4, 4)  # conv: 2 ** (3 - 1); vit: patch 4
    expected = (2, 4, 4, 2) if quant == "rvq" else (2, 4, 4)
    assert tokens.shape == expected and tokens.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(tokens), np.asarray(q.indices))
    assert int(tokens.min()) >= 0 and int(tokens.max()) < ae.codebook_size
    decode = _jit_apply(ae, Autoencoder.decode)
    y2 = decode(variables, tokens)
    assert y.shape == (2, 16, 16, 3)
    np.testing.assert_allclose(np.asarray(y2), np.asarray(y), atol=1e-5)
    # tokens carry the information: other tokens decode to another image
    y3 = decode(variables, (tokens + 1) % ae.codebook_size)
    assert float(jnp.abs(y3 - y).max()) > 1e-3


@pytest.mark.parametrize(("mult", "factor"), [((1, 2), 2), ((1, 2, 2, 4), 8)])
def test_conv_downsampling_factor_gives_documented_grid(mult, factor):
    enc = ConvEncoder(channels=4, channel_mult=mult, z_channels=3, groups=2)
    x = jnp.ones((1, 32, 16, 3))
    z = jax.eval_shape(lambda: enc.init_with_output(jax.random.key(0), x)[0])
    assert enc.downsample_factor == factor
    assert z.shape == (1, 32 // factor, 16 // factor, 3)
    dec = ConvDecoder(channels=4, channel_mult=mult, out_channels=5, groups=2)
    y = jax.eval_shape(lambda: dec.init_with_output(jax.random.key(0), jnp.ones(z.shape))[0])
    assert y.shape == (1, 32, 16, 5)


def test_patchify_roundtrip_and_layout():
    x = np.arange(2 * 8 * 4 * 3, dtype=np.float32).reshape(2, 8, 4, 3)
    p = np.asarray(patchify(jnp.asarray(x), 2))
    assert p.shape == (2, 4, 2, 12)
    np.testing.assert_array_equal(p[1, 2, 1], x[1, 4:6, 2:4].reshape(-1))
    np.testing.assert_array_equal(np.asarray(unpatchify(jnp.asarray(p), 2, 3)), x)


def test_presets_token_grids_and_sizes():
    for kind, factor in (("conv", 8), ("vit", 8)):
        for size in ("tiny", "small", "base"):
            ae = build_autoencoder({"type": kind, "size": size}, {"type": "fsq", "bits": 10}, "rgb")
            f = factor if not (kind == "conv" and size == "base") else 16
            assert ae.grid_shape(64) == (64 // f, 64 // f)
    tiny = build_autoencoder({"type": "conv", "size": "tiny"}, {"type": "fsq", "bits": 10}, "rgb")
    shapes = jax.eval_shape(tiny.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
    n = sum(v.size for v in jax.tree.leaves(shapes["params"]))
    assert 1e6 < n < 5e6


def test_tiny_conv_fsq_fits_a_fixed_batch():
    ae = build_autoencoder(
        {"type": "conv", "channels": 8, "channel_mult": (1, 2), "num_res_blocks": 1,
         "attention": False, "z_channels": 4, "groups": 4},
        {"type": "fsq", "levels": (8, 8, 8, 8)},
        "rgb",
    )  # fmt: skip
    rgb = MODALITIES["rgb"]
    yy, xx = np.mgrid[0:16, 0:16] / 15.0
    imgs = np.stack(
        [np.stack([yy, xx, (yy + xx) / 2], -1), np.stack([xx, 1 - yy, yy * xx], -1),
         np.stack([1 - xx, yy, 0.5 + 0 * xx], -1), np.stack([yy * 0 + 0.2, xx, 1 - yy], -1)]
    ).astype(np.float32)  # fmt: skip
    x = rgb.preprocess(imgs)
    params = jax.jit(ae.init)(jax.random.key(0), x)["params"]
    tx = optax.adam(3e-3)
    opt = tx.init(params)

    def loss_fn(p):
        y, q = ae.apply({"params": p}, x, train=True)
        return rgb.loss(y, imgs)[0] + q.loss

    @jax.jit
    def step(p, o):
        loss, g = jax.value_and_grad(loss_fn)(p)
        updates, o = tx.update(g, o, p)
        return optax.apply_updates(p, updates), o, loss

    losses = []
    for _ in range(100):
        params, opt, loss = step(params, opt)
        losses.append(float(loss))
    assert np.isfinite(losses).all()
    assert np.mean(losses[-5:]) < 0.5 * losses[0], (losses[0], losses[-5:])


@pytest.mark.parametrize("model", [CONV, VIT])
def test_every_param_is_logically_partitioned(model):
    # FSQ without projection (z width == len(levels)) and EMA VQ have no unnamed params.
    for qcfg in (QUANTIZERS["fsq"], QUANTIZERS["vq"]):
        ae = build_autoencoder(model, qcfg, "normals")
        variables = jax.eval_shape(ae.init, jax.random.key(0), _images())
        leaves = jax.tree.leaves(
            variables["params"], is_leaf=lambda t: isinstance(t, nn.LogicallyPartitioned)
        )
        assert leaves and all(isinstance(t, nn.LogicallyPartitioned) for t in leaves)
        specs = jax.tree.leaves(
            nn.get_partition_spec(variables)["params"],
            is_leaf=lambda s: isinstance(s, jax.sharding.PartitionSpec),
        )
        assert len(specs) == len(leaves)
        assert all(len(s) == t.value.ndim for s, t in zip(specs, leaves, strict=True))
        assert any("embed" in tuple(s) for s in specs)
        if qcfg["type"] == "vq":  # EMA codebook state stays out of params
            assert "quantizer" in variables[STATS] and "quantizer" not in variables["params"]


def test_vit_positions_distinguish_patches():
    enc = ViTEncoder(patch_size=4, width=16, depth=1, heads=2, mlp_dim=16, z_dim=4)
    x = jnp.zeros((1, 16, 16, 3))  # identical patches: only positions tell them apart
    z, _ = enc.init_with_output(jax.random.key(0), x)
    z = np.asarray(z).reshape(16, 4)
    assert len({tuple(np.round(r, 4)) for r in z}) == 16


def test_bad_inputs_raise_named_errors():
    ae = build_autoencoder(CONV, QUANTIZERS["fsq"], "rgb")
    variables = jax.eval_shape(ae.init, jax.random.key(0), _images())
    apply = functools.partial(jax.eval_shape, ae.apply, variables)  # errors come at trace time
    with pytest.raises(ValueError, match="3 channels"):
        apply(jnp.zeros((1, 16, 16, 1)))
    with pytest.raises(ValueError, match="downsampling factor 4"):
        apply(jnp.zeros((1, 18, 16, 3)))
    with pytest.raises(ValueError, match=r"\[B, H, W, C\]"):
        apply(jnp.zeros((16, 16, 3)))
    with pytest.raises(ValueError, match="integers"):
        jax.eval_shape(_jit_apply(ae, Autoencoder.decode), variables, jnp.zeros((1, 4, 4)))
    with pytest.raises(ValueError, match="'transformer'"):
        build_autoencoder({"type": "transformer"}, QUANTIZERS["fsq"], "rgb")
    with pytest.raises(ValueError, match="'huge'"):
        build_autoencoder({"type": "conv", "size": "huge"}, QUANTIZERS["fsq"], "rgb")
    with pytest.raises(ValueError, match="'chanels'"):
        build_autoencoder({"type": "conv", "chanels": 8}, QUANTIZERS["fsq"], "rgb")
    with pytest.raises(ValueError, match="'lidar'"):
        build_autoencoder(CONV, QUANTIZERS["fsq"], "lidar")
    with pytest.raises(ValueError, match="dim=7"):
        build_autoencoder(CONV, {"type": "vq", "codebook_size": 4, "dim": 7}, "rgb")
    semseg = build_autoencoder(CONV, QUANTIZERS["fsq"], "semseg")
    assert semseg.in_channels == 5 and semseg.decoder.out_channels == 5
