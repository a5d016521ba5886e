"""The tokenizer objective: VQGAN's adaptive GAN weight from one forward pass equals the
gradients of the two losses taken separately; the discriminator step and its start; the
perceptual term; bfloat16 compute with float32 parameters."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.configs import tokenizer_depth, tokenizer_rgb
from mmjax.data import ScenesSource
from mmjax.quantizers import STATS
from mmjax.tokenizers import (
    MODALITIES,
    PatchDiscriminator,
    PerceptualLoss,
    build_autoencoder,
    d_hinge_loss,
    g_hinge_loss,
    perceptual_loss,
)
from mmjax.tokenizers.perceptual import expected_shapes
from mmjax.train.tokenizer_objective import TokenizerObjective


def _setup(arg="quick", **loss):
    config = tokenizer_rgb.get_config(arg)
    config.loss.update(loss)
    # a two-level conv autoencoder far below conv-tiny: the objective, not the model, is tested
    config.model.update(dict(channels=8, channel_mult=(1, 2), groups=4))
    codec = MODALITIES["rgb"]
    model = build_autoencoder(config.model, config.quantizer, "rgb")
    source = ScenesSource("train", 32, 2)
    raw = jnp.asarray(np.stack([source[i]["rgb"] for i in range(2)]))
    variables = jax.jit(model.init)(jax.random.key(0), codec.preprocess(raw))
    params = variables["params"]
    stats = {k: v for k, v in variables.items() if k != "params"}
    return config, codec, model, TokenizerObjective(model, codec, config), params, stats, raw


def _separate_losses(model, codec, params, stats, raw, key, disc, disc_params):
    """Second code path: the two generator losses as plain functions of params."""

    def forward(p):
        (y, q), _ = model.apply(
            {"params": p, **stats},
            codec.preprocess(raw),
            train=True,
            rngs={"quantizer": key},
            mutable=list(stats) or [STATS],
        )
        return y.astype(jnp.float32), q

    def rec(p):
        y, q = forward(p)
        return codec.loss(y, raw)[0] + q.loss

    def gan(p):
        return g_hinge_loss(disc.apply({"params": disc_params}, forward(p)[0]))

    return jax.jit(lambda p: (jax.grad(rec)(p), jax.grad(gan)(p), rec(p), gan(p)))(params)


@pytest.mark.slow  # a minute of training or compiling: CI's slow step
def test_adaptive_gan_weight_matches_separate_gradients():
    config, codec, model, obj, params, stats, raw = _setup("gan,quick")
    assert obj.uses_gan and config.loss.gan_start == 20
    disc_params, _ = obj.init_disc(jax.random.key(1), codec.preprocess(raw))
    key = jax.random.key(2)
    g_rec, g_gan, rec, gan = _separate_losses(
        model, codec, params, stats, raw, key, obj.disc, disc_params
    )

    def last(t):
        return np.concatenate([np.ravel(x) for x in jax.tree.leaves(t["decoder"]["conv_out"])])

    step_fn = jax.jit(obj.generator_grads)
    for step in (19, 20):  # the GAN term switches on at gan_start
        loss, grads, (terms, *_rest) = step_fn(params, stats, raw, key, step, disc_params)
        lam = np.linalg.norm(last(g_rec)) / (np.linalg.norm(last(g_gan)) + 1e-4)
        lam = lam * config.loss.gan_weight if step >= config.loss.gan_start else 0.0
        np.testing.assert_allclose(float(terms["gan/adaptive_weight"]), lam, rtol=1e-4)
        np.testing.assert_allclose(float(loss), float(rec) + lam * float(gan), rtol=1e-5)
        jax.tree.map(
            lambda a, r, g, lam=lam: np.testing.assert_allclose(
                a, r + lam * g, rtol=1e-4, atol=1e-6
            ),
            grads,
            g_rec,
            g_gan,
        )


def test_discriminator_step_starts_at_gan_start():
    config, codec, _model, obj, _params, _stats, raw = _setup("gan,quick")
    real = codec.preprocess(raw)
    fake = real[::-1] * 0.5
    dp, opt = obj.init_disc(jax.random.key(1), real)
    before = obj.disc_update(dp, opt, real, fake, config.loss.gan_start - 1)
    jax.tree.map(np.testing.assert_array_equal, before[0], dp)
    new_dp, _, d_loss, _ = obj.disc_update(dp, opt, real, fake, config.loss.gan_start)
    disc = PatchDiscriminator(channels=32, num_layers=2)
    want = d_hinge_loss(disc.apply({"params": dp}, real), disc.apply({"params": dp}, fake))
    np.testing.assert_allclose(float(d_loss), float(want), rtol=1e-6)
    after = d_hinge_loss(disc.apply({"params": new_dp}, real), disc.apply({"params": new_dp}, fake))
    assert float(after) < float(want)  # one Adam step lowers the hinge loss on this batch


def test_perceptual_term_is_added_with_its_weight(tmp_path):
    rng = np.random.default_rng(0)
    channels = ((4,), (8,))
    weights = {
        k: rng.normal(0, 0.3, s).astype(np.float32) for k, s in expected_shapes(channels).items()
    }
    np.savez(tmp_path / "feat.npz", **weights)
    pl = PerceptualLoss.from_file(tmp_path / "feat.npz", channels)
    config, codec, model, _, params, stats, raw = _setup("quick")
    plain = TokenizerObjective(model, codec, config)
    obj = TokenizerObjective(model, codec, config)
    obj.perceptual, obj.perceptual_weight = pl, 0.5
    key = jax.random.key(3)
    l0, _, _ = jax.jit(plain.generator_grads)(params, stats, raw, key, 0)
    l1, _, (terms, _, _, y) = jax.jit(obj.generator_grads)(params, stats, raw, key, 0)
    want = perceptual_loss(
        {k: jnp.asarray(v) for k, v in weights.items()}, codec.preprocess(raw), y
    )
    np.testing.assert_allclose(float(terms["perceptual"]), float(want), rtol=1e-5)
    np.testing.assert_allclose(float(l1), float(l0) + 0.5 * float(want), rtol=1e-5)


def test_bfloat16_compute_keeps_float32_params_and_tracks_float32():
    _config, codec, model, obj32, params, stats, raw = _setup("quick")
    config16, *_ = _setup("bf16,quick")
    obj16 = TokenizerObjective(model, codec, config16)
    key = jax.random.key(4)
    l32, g32, _ = jax.jit(obj32.generator_grads)(params, stats, raw, key, 0)
    l16, g16, (_, _q16, _, y16) = jax.jit(obj16.generator_grads)(params, stats, raw, key, 0)
    assert y16.dtype == jnp.float32
    assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(g16))
    np.testing.assert_allclose(float(l16), float(l32), rtol=0.05)
    # The gradients point the same way (cosine similarity close to 1).
    a = np.concatenate([np.ravel(x) for x in jax.tree.leaves(g32)])
    b = np.concatenate([np.ravel(x) for x in jax.tree.leaves(g16)])
    assert a @ b / (np.linalg.norm(a) * np.linalg.norm(b)) > 0.95


def test_bad_loss_configs_are_named(tmp_path):
    with pytest.raises(ValueError, match=r"unknown config variant\(s\) \['gan'\]"):
        tokenizer_depth.get_config("gan")  # the GAN term is for rgb
    config = tokenizer_rgb.get_config("quick")
    config.loss.perceptual_weight = 0.1
    model = build_autoencoder(config.model, config.quantizer, "rgb")
    with pytest.raises(ValueError, match="perceptual_path"):
        TokenizerObjective(model, MODALITIES["rgb"], config)
    config.loss.perceptual_path = str(tmp_path / "missing.npz")
    with pytest.raises(FileNotFoundError, match=r"missing\.npz"):
        TokenizerObjective(model, MODALITIES["rgb"], config)
    depth = tokenizer_depth.get_config("quick")
    depth.loss = dict(gan_weight=0.1)
    with pytest.raises(ValueError, match="rgb tokenizers only"):
        TokenizerObjective(model, MODALITIES["depth"], depth)
    config = tokenizer_rgb.get_config("quick")
    config.model.compute_dtype = "float16"
    with pytest.raises(ValueError, match="compute_dtype"):
        TokenizerObjective(model, MODALITIES["rgb"], config)
