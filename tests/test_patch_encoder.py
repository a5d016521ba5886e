"""The patch-local encoder: codes depend only on their own patch (checked by perturbing
pixels elsewhere), equal patches give equal codes across images, and the `encoder="patch"`
option of build_autoencoder."""

import functools

import jax
import numpy as np
import pytest

from mmjax.tokenizers.autoencoder import Autoencoder, build_autoencoder
from mmjax.tokenizers.patch_encoder import PatchEncoder

CONV_PATCH = {"type": "conv", "channels": 8, "channel_mult": (1, 2, 2), "num_res_blocks": 1,
              "attention": False, "z_channels": 4, "groups": 4, "encoder": "patch"}  # fmt: skip
FSQ = {"type": "fsq", "levels": (5, 5, 4, 4)}


def test_each_latent_depends_only_on_its_own_patch():
    enc = PatchEncoder(patch_size=4, width=16, depth=2, z_channels=3)
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, (1, 16, 16, 3)).astype(np.float32)
    params = enc.init(jax.random.key(0), x)
    z = np.asarray(enc.apply(params, x))
    y = x.copy()
    y[:, 4:8, 8:12] = rng.uniform(-1, 1, (1, 4, 4, 3))  # the patch at grid (1, 2)
    z2 = np.asarray(enc.apply(params, y))
    changed = np.abs(z2 - z).max(-1) > 0
    expected = np.zeros((1, 4, 4), bool)
    expected[0, 1, 2] = True
    np.testing.assert_array_equal(changed, expected)


def test_equal_patches_get_equal_tokens_in_any_image():
    ae = build_autoencoder(CONV_PATCH, FSQ, "rgb")
    assert ae.downsample_factor == 4
    rng = np.random.default_rng(2)
    x = rng.uniform(-1, 1, (3, 16, 16, 3)).astype(np.float32)
    x[:, :4, :4] = 0.25  # one uniform patch, in different surroundings
    variables = jax.jit(ae.init)(jax.random.key(0), x)
    tokens = np.asarray(
        jax.jit(functools.partial(ae.apply, method=Autoencoder.encode))(variables, x)
    )
    assert tokens.shape == (3, 4, 4)
    assert len(set(tokens[:, 0, 0].tolist())) == 1
    y, _ = jax.jit(ae.apply)(variables, x)
    assert y.shape == x.shape  # the conv decoder is unchanged


def test_unknown_encoder_is_refused():
    with pytest.raises(ValueError, match="conv encoder must be one of"):
        build_autoencoder({**CONV_PATCH, "encoder": "mlp"}, FSQ, "rgb")
