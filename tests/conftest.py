"""Test setup: 8 forced CPU devices (set before JAX is imported), markers, fixtures."""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

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


@pytest.fixture(scope="session")
def mesh():
    """A (data=2, fsdp=4, tensor=1) mesh over the 8 forced CPU devices."""
    from mmjax.parallel import create_mesh

    assert jax.device_count() == 8, "conftest must force 8 CPU devices before JAX starts"
    return create_mesh({"data": 2, "fsdp": 4, "tensor": 1})


@pytest.fixture(scope="session")
def aot_compile():
    """launch/aot_compile.py as a module, loaded once (it defines absl flags)."""
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.dirname(__file__)), "launch", "aot_compile.py")
    spec = importlib.util.spec_from_file_location("aot_compile", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def quick_demo(tmp_path_factory):
    """(workdir, results) of one `python -m mmjax.demo --quick` run, shared by the demo test
    and the any_to_any colab (which loads its stages instead of training them)."""
    from mmjax.demo.run import main

    workdir = str(tmp_path_factory.mktemp("quick_demo"))
    return workdir, main(["--quick", "--workdir", workdir])
