"""Test setup: 8 forced CPU devices (set before JAX is imported), markers, fixtures."""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# A persistent compilation cache (in .jax_cache/, git-ignored), set through the environment so
# that the subprocesses the tests start share it: the tests compile the same steps several
# times (a new trainer or jit per test, CLI runs, notebooks), and later runs reuse them. Only
# compiles of 0.2 s or more: writing the thousands of single-op compiles of un-jitted code
# costs more than it saves.
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR",
    os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".jax_cache"),
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(4 * 2**30))  # bytes, LRU
# gcsfs reads this when imported: no Storage Control API lookups (the local GCS server of the
# gs:// tests has none).
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
# libtpu takes a host-wide lock unless told otherwise; TPU compiles for a topology use no TPU,
# so the test workers (pytest-xdist) and any other process compile side by side.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

import gc

import jax
import pytest


def pytest_collection_modifyitems(config, items):
    """Hardware-marked tests run only where the hardware (or jax[tpu]) is present."""
    platforms = {d.platform for d in jax.devices()}
    try:
        import libtpu  # noqa: F401

        has_libtpu = True
    except ImportError:
        has_libtpu = False
    needs = {
        "tpu": ("tpu" in platforms, "needs a TPU"),
        "gpu": ("gpu" in platforms or "cuda" in platforms, "needs a GPU"),
        "tpu_aot": (has_libtpu, "needs jax[tpu] (libtpu) on the host"),
    }
    for item in items:
        for marker, (available, reason) in needs.items():
            if marker in item.keywords and not available:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="module", autouse=True)
def _release_compiled_programs():
    """Drops a module's compiled programs when it ends: one process runs every slow test, and
    the TPU compiles of the large presets alone hold gigabytes of host memory."""
    yield
    jax.clear_caches()
    gc.collect()


@pytest.fixture(scope="session")
def mesh():
    """A (data=2, fsdp=4, tensor=1) mesh over the 8 forced CPU devices."""
    from mmjax.parallel import create_mesh

    assert jax.device_count() == 8, "conftest must force 8 CPU devices before JAX starts"
    return create_mesh({"data": 2, "fsdp": 4, "tensor": 1})


@pytest.fixture(scope="session")
def untrained_tokenizers(tmp_path_factory):
    """make(modalities, model, quantizer, resolution) -> {modality: bundle dir}: Tokenizer
    bundles of untrained weights, for the tests of what reads tokens (pre-tokenization, the 4M
    trainer); made once per session for each set of arguments. rbg keys: any random weights
    do, and threefry's unrolled rounds take seconds to compile into every model's init."""
    import json

    import numpy as np

    from mmjax.tokenizers import MODALITIES, Tokenizer, build_autoencoder

    made = {}

    def make(modalities, model, quantizer, resolution):
        key = json.dumps([list(modalities), model, quantizer, resolution], sort_keys=True)
        if key not in made:
            root = tmp_path_factory.mktemp("untrained_tokenizers")
            made[key] = {}
            for i, m in enumerate(modalities):
                ae = build_autoencoder(model, quantizer, m)
                x = np.zeros((1, resolution, resolution, MODALITIES[m].in_channels), np.float32)
                variables = jax.jit(ae.init)(jax.random.key(i, impl="rbg"), x)
                made[key][m] = str(root / f"tok_{m}")
                Tokenizer.save(
                    made[key][m], modality=m, model_config=model, quantizer_config=quantizer,
                    resolution=resolution, variables=variables,
                )  # fmt: skip
        return dict(made[key])

    return make


@pytest.fixture(scope="session")
def aot_compile():
    """launch/aot_compile.py as a module, loaded once."""
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.dirname(__file__)), "launch", "aot_compile.py")
    spec = importlib.util.spec_from_file_location("aot_compile", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def quick_demo(tmp_path_factory):
    """(workdir, results, plan) of one `python -m mmjax.demo --quick` run, as the README
    runs it (minutes: the slow demo test)."""
    from mmjax.demo.run import main
    from mmjax.demo.stages import PLANS

    workdir = str(tmp_path_factory.mktemp("quick_demo"))
    return workdir, main(["--quick", "--workdir", workdir]), PLANS["quick"]


def tiny_plan():
    """The demo plan far below `--quick` that the tiny_demo fixture runs."""
    import dataclasses

    from mmjax.demo.stages import PLANS

    return dataclasses.replace(
        PLANS["quick"], train_scenes=32, val_scenes=8, text_examples=64, eval_scenes=2,
        maskgit_steps=2,
        tokenizer_overrides={"total_steps": 2, "data.batch_size": 8, "eval.usage_images": 8},
        fourm_overrides={
            "total_steps": 2, "data.batch_size": 8, "eval.num_examples": 8, "eval.batch_size": 8
        },
    )  # fmt: skip


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory):
    """(workdir, results, plan) of the demo under a plan far below `--quick` (2 training steps
    per stage, 32 train scenes, 2 scored scenes): every stage and task of `python -m
    mmjax.demo` (the slow step), shared by the demo test, the any_to_any colab and the
    README's generation snippet. The plan is a mode "tiny" while it runs."""
    from mmjax.demo.run import run_demo
    from mmjax.demo.stages import PLANS

    plan = tiny_plan()
    workdir = str(tmp_path_factory.mktemp("tiny_demo"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(PLANS, "tiny", plan)
        return workdir, run_demo(workdir, "tiny"), plan


@pytest.fixture(scope="session")
def gcs_server():
    """A GCS API server on localhost (fake-gcs-server) with bucket `test-bucket`, and every GCS
    client of this process and its subprocesses pointed at it (tests/gcs_server.py) for the
    rest of the session; stopped at the end."""
    from tests.gcs_server import GcsServer, client_env

    server = GcsServer().start()
    env = client_env(server.url)
    saved = {k: os.environ.get(k) for k in env}
    try:
        server.create_bucket("test-bucket")
        os.environ.update(env)
        yield server
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="session")
def random_lpips_weights(tmp_path_factory):
    """An LPIPS (alex) .npz in mmjax's layout with random He-scaled backbone weights and
    non-negative calibration weights (no download)."""
    import numpy as np

    from mmjax.eval.lpips import expected_shapes, save_npz

    path = tmp_path_factory.mktemp("lpips_weights") / "lpips.npz"
    rng = np.random.default_rng(0)
    arrays = {}
    for key, shape in expected_shapes("alex").items():
        fan_in = np.prod(shape[:-1]) if len(shape) > 1 else 1
        a = rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)
        arrays[key] = np.abs(a) if key.startswith("lin") else a
    save_npz(str(path), "alex", arrays)
    return str(path)
