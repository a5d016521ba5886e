"""The tokenizer trainer end to end on the embedded scenes: smoke runs per modality, exact
resume after a kill, sharded == single-device step, the exported Tokenizer bundle."""

import json

import jax
import numpy as np
import pytest

from mmjax.configs import load
from mmjax.tokenizers import Tokenizer, build_autoencoder
from mmjax.train import tokenizer_trainer
from mmjax.train.tokenizer_trainer import TokenizerTrainer, train_tokenizer


def quick(modality, quantizer="fsq", steps=12, **overrides):
    c = load(f"tokenizer_{modality}", f"quantizer={quantizer},quick")
    c.total_steps = steps
    c.log_every = 2
    c.eval.every = steps
    c.checkpoint.every = steps
    c.checkpoint.async_save = False
    c.data.batch_size = 8
    for key, value in overrides.items():
        node = c
        *path, last = key.split(".")
        for p in path:
            node = node[p]
        node[last] = value
    return c


def _losses(workdir):
    with open(workdir / "metrics.jsonl") as f:
        rows = [json.loads(line) for line in f]
    return [r["loss"] for r in rows if "loss" in r]


@pytest.mark.parametrize(
    "modality",
    ["rgb"] + [pytest.param(m, marks=pytest.mark.slow) for m in ("depth", "normals", "semseg")],
)
def test_quick_run_learns_and_exports_a_tokenizer(tmp_path, modality, random_lpips_weights):
    small = {"data.resolution": 32}  # conv-tiny downsamples 8x: 4 x 4 tokens
    if modality == "rgb":
        small["eval.lpips_weights"] = random_lpips_weights
    final = train_tokenizer(
        quick(modality, steps=16, **{"optimizer.learning_rate": 3e-3}, **small), str(tmp_path)
    )
    losses = _losses(tmp_path)
    assert len(losses) == 8 and all(np.isfinite(losses))
    assert np.mean(losses[-2:]) < 0.9 * losses[0], losses
    assert (tmp_path / "eval" / "0000016.png").exists()
    tok = Tokenizer.load(str(tmp_path))
    assert tok.modality == modality and tok.grid_shape == (4, 4)
    trainer = TokenizerTrainer(quick(modality, **small), str(tmp_path / "unused"))
    tokens = tok.encode(trainer.val_raw)
    assert tokens.dtype == np.int32 and tokens.shape == (8, 4, 4)
    assert int(tokens.min()) >= 0 and int(tokens.max()) < tok.codebook_size
    decoded = np.asarray(tok.decode(tokens))
    assert decoded.shape == trainer.val_raw.shape
    # Codebook usage over the usage set, recounted from the bundle's tokens.
    codes = np.asarray(tok.encode(trainer.usage_raw))
    assert len(trainer.usage_raw) == 64
    usage = len(np.unique(codes)) / tok.codebook_size
    np.testing.assert_allclose(final["eval/codebook_usage"], usage, rtol=1e-6)
    # The bundle reproduces the trainer's own evaluation of the same weights.
    recomputed = tokenizer_trainer.reconstruction_metrics(modality, trainer.val_raw, decoded)
    for k, v in recomputed.items():
        np.testing.assert_allclose(final[f"eval/{k}"], v, rtol=1e-4, atol=1e-4)
    if modality == "rgb":  # SSIM as scikit-image computes it, LPIPS as the loaded network
        from skimage.metrics import structural_similarity

        from mmjax.eval.lpips import LPIPS

        clipped = np.clip(decoded, 0, 1).astype(np.float64)
        ssim = [
            structural_similarity(
                a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                data_range=1.0, channel_axis=-1,
            )
            for a, b in zip(trainer.val_raw.astype(np.float64), clipped, strict=True)
        ]  # fmt: skip
        np.testing.assert_allclose(final["eval/ssim"], np.mean(ssim), atol=1e-4)
        lpips = LPIPS.load(random_lpips_weights)(trainer.val_raw, clipped.astype(np.float32))
        np.testing.assert_allclose(final["eval/lpips"], np.mean(lpips), rtol=1e-3, atol=1e-5)
        assert "eval/rfid" not in final  # no Inception weights configured


class _Killed(Exception):
    pass


@pytest.mark.slow
def test_resume_after_a_kill_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    config = quick("rgb", quantizer="vq", steps=10)
    config.checkpoint.every = 4
    uninterrupted = TokenizerTrainer(config, str(tmp_path / "a"))
    uninterrupted.run()

    real = tokenizer_trainer.pipeline_from_config

    class Dying:
        """The data iterator of a run that is killed while fetching batch `after`."""

        def __init__(self, cfg, after):
            self.it, self.left = real(cfg), after

        def __next__(self):
            self.left -= 1
            if self.left < 0:
                raise _Killed
            return next(self.it)

        def get_state(self):
            return self.it.get_state()

        def set_state(self, state):
            self.it.set_state(state)

    monkeypatch.setattr(tokenizer_trainer, "pipeline_from_config", lambda c: Dying(c, 7))
    with pytest.raises(_Killed):
        TokenizerTrainer(config, str(tmp_path / "b")).run()  # dies after step 6, ckpt at 4
    monkeypatch.setattr(tokenizer_trainer, "pipeline_from_config", real)
    TokenizerTrainer(config, str(tmp_path / "b")).run()
    a = Tokenizer.load(str(tmp_path / "a")).variables
    b = Tokenizer.load(str(tmp_path / "b")).variables
    jax.tree.map(np.testing.assert_array_equal, a, b)
    assert _losses(tmp_path / "a")[-1] == _losses(tmp_path / "b")[-1]


@pytest.mark.slow
def test_sharded_step_equals_single_device_step(tmp_path):
    config = quick("rgb", quantizer="vq", steps=1)
    lr = config.optimizer.learning_rate
    runs = []
    for mesh, devices in (
        ({"data": 2, "fsdp": 4, "tensor": 1}, None),
        ({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1]),
    ):
        config.mesh = mesh
        workdir = tmp_path / f"run{len(runs)}"
        TokenizerTrainer(config, str(workdir), devices=devices).run()
        runs.append((Tokenizer.load(str(workdir)).variables, _losses(workdir)))
    (v8, loss8), (v1, loss1) = runs
    np.testing.assert_allclose(loss8, loss1, rtol=1e-5)  # same forward pass and loss
    # k-means init and the EMA codebook update agree to float rounding.
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
        {k: v for k, v in v8.items() if k != "params"},
        {k: v for k, v in v1.items() if k != "params"},
    )
    # Adam's first step moves each weight by about lr * sign(gradient): gradients that
    # differ in the last bits can only change a weight by less than 2 lr.
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=2 * lr),
        v8["params"],
        v1["params"],
    )


@pytest.mark.parametrize("model", ["conv", "vit"])
@pytest.mark.parametrize("quantizer", ["fsq", "vq", "lfq", "bsq", "rvq"])
def test_every_default_config_variant_builds_and_encodes(quantizer, model):
    """configs/tokenizer_*.py:quantizer=Q,model=M as the README lists them: the model builds,
    and its codes are in range with the codebook size the quantizer promises."""
    c = load("tokenizer_rgb", f"quantizer={quantizer},model={model}")
    ae = build_autoencoder(c.model, c.quantizer, "rgb")
    x = np.random.default_rng(0).uniform(size=(2, 64, 64, 3)).astype(np.float32)
    variables = ae.init(jax.random.key(0), x)
    tokens = np.asarray(ae.apply(variables, x, method="encode"))
    expected = {"fsq": 1000, "vq": 1024, "lfq": 1024, "bsq": 1024, "rvq": 256}[quantizer]
    assert ae.quantizer.codebook_size == expected
    assert tokens.min() >= 0 and tokens.max() < expected
    assert tokens.shape[:3] == (2, *ae.grid_shape(64))


def test_config_override_selects_the_patch_local_encoder():
    """`--config.model.encoder=patch` (the README's override) gives codes that see only their
    own patch: a change outside the top-left 8 x 8 patch leaves its token alone."""
    c = load("tokenizer_depth")
    assert c.model.encoder == "conv"
    c.model.encoder = "patch"
    ae = build_autoencoder(c.model, c.quantizer, "depth")
    x = np.random.default_rng(0).uniform(-1, 1, size=(1, 64, 64, 1)).astype(np.float32)
    variables = ae.init(jax.random.key(0), x)
    y = x.copy()
    y[:, 8:, 8:] = -y[:, 8:, 8:]
    t_x, t_y = (np.asarray(ae.apply(variables, v, method="encode")) for v in (x, y))
    assert t_x[0, 0, 0] == t_y[0, 0, 0]
    assert (t_x != t_y).any()


def test_bad_configs_and_inputs_are_named(tmp_path):
    with pytest.raises(ValueError, match="quantizer must be one of"):
        load("tokenizer_rgb", "quantizer=kmeans")
    audio = load("tokenizer_rgb")
    audio.modality = "audio"
    with pytest.raises(ValueError, match="modality must be one of"):
        TokenizerTrainer(audio, str(tmp_path))
    with pytest.raises(ValueError, match=r"unknown config variant\(s\) \['epochs'\]"):
        load("tokenizer_rgb", "epochs=3")
    # A bundle of untrained weights: input checks do not need a trained model.
    config = quick("rgb")
    model = build_autoencoder(config.model, config.quantizer, "rgb")
    variables = model.init(jax.random.key(0), np.zeros((1, 64, 64, 3), np.float32))
    Tokenizer.save(
        str(tmp_path),
        modality="rgb",
        model_config=config.model.to_dict(),
        quantizer_config=config.quantizer.to_dict(),
        resolution=64,
        variables=variables,
    )
    tok = Tokenizer.load(str(tmp_path))
    good = np.full((2, 64, 64, 3), 0.5, np.float32)
    with pytest.raises(ValueError, match="rgb"):
        tok.encode(good[..., :2])  # channels
    with pytest.raises(ValueError, match="rgb"):
        tok.encode(good[0])  # rank
    with pytest.raises(ValueError, match="rgb"):
        tok.encode(good * 3)  # range
    with pytest.raises(FileNotFoundError, match=r"tokenizer\.json"):
        Tokenizer.load(str(tmp_path / "nothing"))
    # a depth bundle from before the far-plane encoding is refused, not decoded wrongly
    meta = json.loads((tmp_path / "tokenizer.json").read_text())
    assert meta["encoding_version"] == 1  # rgb's codec never changed
    meta.update(modality="depth")
    Tokenizer(dict(meta, encoding_version=2), tok.variables)  # the current depth encoding
    with pytest.raises(ValueError, match="depth bundle was trained with encoding version 1"):
        Tokenizer({k: v for k, v in meta.items() if k != "encoding_version"}, tok.variables)


@pytest.mark.slow
@pytest.mark.tpu_aot
def test_train_step_compiles_for_a_v5e_slice(aot_compile):
    module = aot_compile
    compiled, devices = module.compile_step(quick("rgb"), "v5e:2x2")
    assert len(devices) == 4 and devices[0].platform == "tpu"
    mem = compiled.memory_analysis()
    assert 0 < mem.argument_size_in_bytes < 2**30  # a tiny tokenizer state, born sharded
