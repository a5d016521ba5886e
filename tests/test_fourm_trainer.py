"""The 4M trainer on pre-tokenized scenes (tiny untrained tokenizer bundles at 32 px, so a
4 x 4 token grid): a quick run learns every modality, gradient accumulation equals the big
batch, sharded steps equal the single-device step, resume after a kill, the exported bundle,
bad configs and data, and AOT compiles of base and xlarge for a v5p pod slice."""

import json
import math

import jax
import numpy as np
import pytest

from mmjax.configs import fourm
from mmjax.data import ScenesSource
from mmjax.data.text_vocab import scenes_text_tokenizer
from mmjax.fourm.bundle import load_fourm
from mmjax.pretokenize import pretokenize
from mmjax.train import fourm_trainer
from mmjax.train.fourm_trainer import FourMTrainer, train_fourm

R = 32
MODEL = {"type": "conv", "size": "tiny", "channels": 8, "channel_mult": [1, 1, 2, 2]}
QUANT = {"type": "fsq", "levels": [4, 4, 4]}


@pytest.fixture(scope="module")
def data(tmp_path_factory, untrained_tokenizers):
    """Pre-tokenized train (192 scenes) and validation (32 scenes) outputs."""
    root = tmp_path_factory.mktemp("fourm_data")
    dirs = untrained_tokenizers(("rgb", "depth"), MODEL, QUANT, R)
    text = scenes_text_tokenizer(300, 600)
    out = {}
    for split, n in (("train", 192), ("validation", 32)):
        out[split] = str(root / split)
        pretokenize(
            ScenesSource(split, R, n), dirs, out[split], text_tokenizer=text, resolution=R,
            batch_size=64, info={"source": "scenes", "split": split},
        )  # fmt: skip
    return out


def quick(data, steps=8, **overrides):
    c = fourm.get_config("quick")
    c.data.path, c.data.val_path = data["train"], data["validation"]
    c.data.modalities = ["tok_rgb", "tok_depth", "caption", "rgb"]
    c.data.batch_size = 8
    c.masking.input_budget = c.masking.target_budget = 24
    c.total_steps = steps
    c.log_every = 2
    c.eval.every = steps
    c.eval.num_examples = 32
    c.eval.batch_size = 16
    c.checkpoint.every = steps
    c.checkpoint.async_save = False
    for key, value in overrides.items():
        node = c
        *path, last = key.split(".")
        for p in path:
            node = node[p]
        node[last] = value
    return c


def _rows(workdir):
    with open(workdir / "metrics.jsonl") as f:
        return [json.loads(line) for line in f]


def test_quick_run_learns_every_modality_and_exports_a_bundle(data, tmp_path):
    config = quick(data, steps=150, **{"optimizer.learning_rate": 2e-3})
    config.log_every = 1
    final = train_fourm(config, str(tmp_path))
    losses = [r["loss"] for r in _rows(tmp_path) if "loss" in r]
    assert all(np.isfinite(losses)) and np.mean(losses[-3:]) < 0.6 * losses[0], losses
    trainer = FourMTrainer(config, str(tmp_path / "unused"))
    for s in trainer.registry:
        if s.is_target:  # validation loss of every target modality, well below uniform
            uniform = math.log(s.vocab_size)
            assert final[f"eval/uniform_loss/{s.name}"] == pytest.approx(uniform)
            assert final[f"eval/loss/{s.name}"] < 0.65 * uniform, (s.name, final)
    # The bundle reproduces the trainer's evaluation of the same weights.
    model, variables, registry, meta = load_fourm(str(tmp_path))
    assert registry == trainer.registry and meta["input_budget"] == 24
    batch = trainer.eval_batches()[0]
    logits = model.apply(variables, batch)
    from mmjax.fourm import fourm_loss

    _, m = fourm_loss(logits, batch, registry)
    assert float(m["count/caption"]) > 0
    # eval batch 0 alone vs. the whole validation set: the same model, a subset of tokens
    assert abs(float(m["loss/tok_rgb"]) - final["eval/loss/tok_rgb"]) < 0.5


def _one_step(config, devices=None, batch=None):
    trainer = FourMTrainer(config, "/tmp/unused", devices=devices)
    if batch is None:
        batch = next(trainer._pipeline())
    state = trainer.init_state(trainer._global_batch(batch))
    state, metrics = trainer.jit_train_step()(
        state, trainer._global_batch(batch), jax.random.key(0)
    )
    return jax.device_get((state.params, metrics)), batch


@pytest.fixture(scope="module")
def single_device_step(data):
    """((params, metrics), batch) of one step of quick(data) on one device: the reference of
    the accumulated and the sharded steps below."""
    return _one_step(quick(data), jax.devices()[:1])


def test_gradient_accumulation_equals_the_big_batch(data, single_device_step):
    one = jax.devices()[:1]
    (p1, m1), batch = single_device_step
    (p4, m4), _ = _one_step(quick(data, grad_accum_steps=4), one, batch)
    for k in m1:
        np.testing.assert_allclose(m4[k], m1[k], rtol=2e-5, atol=1e-6, err_msg=k)
    lr = quick(data).optimizer.learning_rate
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2 * lr), p4, p1)
    # sharded over (data=2, fsdp=2) with 2 microbatches of 4 rows: still the big batch
    (p8, m8), _ = _one_step(
        quick(data, grad_accum_steps=2, mesh={"data": 2, "fsdp": 2}), jax.devices()[:4], batch
    )
    np.testing.assert_allclose(m8["grad_norm"], m1["grad_norm"], rtol=2e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2 * lr), p8, p1)


@pytest.mark.parametrize(
    "mesh",
    [
        pytest.param({"data": 2, "fsdp": 4, "tensor": 1}, marks=pytest.mark.slow),
        {"data": 2, "fsdp": 2, "tensor": 2},
    ],
)
def test_sharded_step_equals_single_device_step(data, single_device_step, mesh):
    (p1, m1), batch = single_device_step
    (p8, m8), _ = _one_step(quick(data, mesh=mesh), None, batch)
    for k in ("loss", "acc", "grad_norm", "loss/tok_rgb", "loss/caption"):
        np.testing.assert_allclose(m8[k], m1[k], rtol=2e-5, err_msg=k)
    lr = quick(data).optimizer.learning_rate
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2 * lr), p8, p1)


class _Killed(Exception):
    pass


@pytest.mark.slow
def test_resume_after_a_kill_equals_an_uninterrupted_run(data, tmp_path, monkeypatch):
    config = quick(data, steps=10)
    config.checkpoint.every = 4
    FourMTrainer(config, str(tmp_path / "a")).run()
    real = FourMTrainer._pipeline

    def dying(self):
        it = real(self)

        class Dying:
            left = 7

            def __next__(self):
                self.left -= 1
                if self.left < 0:
                    raise _Killed
                return next(it)

            def get_state(self):
                return it.get_state()

            def set_state(self, state):
                it.set_state(state)

        return Dying()

    monkeypatch.setattr(FourMTrainer, "_pipeline", dying)
    with pytest.raises(_Killed):
        FourMTrainer(config, str(tmp_path / "b")).run()  # dies after step 6, ckpt at 4
    monkeypatch.setattr(FourMTrainer, "_pipeline", real)
    FourMTrainer(config, str(tmp_path / "b")).run()
    a = load_fourm(str(tmp_path / "a"))[1]
    b = load_fourm(str(tmp_path / "b"))[1]
    jax.tree.map(np.testing.assert_array_equal, a, b)
    untimed = lambda row: {k: v for k, v in row.items() if k not in ("time", "tokens_per_s")}
    assert untimed(_rows(tmp_path / "a")[-1]) == untimed(_rows(tmp_path / "b")[-1])


def test_token_schedule_and_weight_decay_mask(data):
    config = quick(data, total_tokens=8 * 48 * 25 + 1, **{"optimizer.warmup_tokens": 8 * 48 * 3})
    resolved = fourm_trainer.resolve_token_schedule(config)
    assert resolved.total_steps == 26 and resolved.optimizer.warmup_steps == 3
    from mmjax.train.optimizer import decay_matrices

    trainer = FourMTrainer(quick(data), "/tmp/unused")
    params = trainer._abstract_state().params
    mask = decay_matrices(jax.tree.map(lambda x: x.value, params, is_leaf=_boxed))
    flat = jax.tree_util.tree_flatten_with_path(mask)[0]
    names = {jax.tree_util.keystr(k): v for k, v in flat}
    assert any(v for v in names.values()) and not all(names.values())
    for name, decayed in names.items():
        if "norm" in name.lower() or "bias" in name:
            assert not decayed, name


def _boxed(x):
    return hasattr(x, "value") and hasattr(x, "names")


def test_bad_configs_and_data_are_named(data, tmp_path):
    with pytest.raises(ValueError, match="size must be one of"):
        fourm.get_config("size=huge")
    with pytest.raises(ValueError, match="unknown config variant"):
        fourm.get_config("epochs=2")
    with pytest.raises(ValueError, match=r"input_budget .* larger than"):
        FourMTrainer(quick(data, **{"masking.input_budget": 10_000}), str(tmp_path))
    with pytest.raises(ValueError, match="grad_accum_steps"):
        FourMTrainer(quick(data, grad_accum_steps=3), str(tmp_path))
    with pytest.raises(KeyError, match="no modality 'tok_normals'"):
        FourMTrainer(quick(data, **{"data.modalities": ["tok_normals"]}), str(tmp_path))
    with pytest.raises(FileNotFoundError, match="not a finished pre-tokenization"):
        FourMTrainer(quick(data, **{"data.path": str(tmp_path)}), str(tmp_path))
    # registry from config that does not match the data
    config = quick(data)
    config.modalities = {"tok_semseg": dict(kind="image_tokens", vocab_size=64, grid=(4, 4))}
    with pytest.raises(ValueError, match="does not hold"):
        FourMTrainer(config, str(tmp_path))
    # token ids >= the registry's vocab size: the registry says 16 codes, the data has 64
    config = quick(data)
    config.modalities = {
        "tok_rgb": dict(kind="image_tokens", vocab_size=16, grid=(4, 4)),
        "tok_depth": dict(kind="image_tokens", vocab_size=64, grid=(4, 4)),
    }
    config.data.modalities = ["tok_rgb", "tok_depth"]
    trainer = FourMTrainer(config, str(tmp_path))
    with pytest.raises(ValueError, match=r"tok_rgb.*token ids must lie in \[0, 16\)"):
        next(trainer._pipeline())
    with pytest.raises(ValueError, match="needs data"):
        FourMTrainer(quick(data, **{"data.path": ""}), str(tmp_path))._pipeline()


@pytest.mark.slow
@pytest.mark.tpu_aot
@pytest.mark.parametrize("size", ["base", "xlarge"])
def test_train_step_compiles_and_fits_on_a_v5p_64_slice(size, aot_compile):
    module = aot_compile
    config = fourm.get_config(f"size={size},fsdp,bf16,remat")
    config.data.batch_size = 256
    compiled, devices = module.compile_step(config, "v5p:4x4x4")
    assert len(devices) == 64 and devices[0].platform == "tpu"
    report = module.memory_report(compiled, devices)
    print(size, report)
    assert report["fits"], report
    # FSDP: each chip holds about 1/64 of the float32 params and 2 Adam moments (measured:
    # base 74 MB, xlarge 764 MB; some small tables do not divide over 64 and replicate)
    trainer = FourMTrainer(config, "/tmp/unused", devices=devices)
    n = sum(x.size for x in jax.tree.leaves(trainer._abstract_state().params))
    assert report["argument_bytes"] < 3 * 4 * n / 64 * 3  # replicated would be 64x
