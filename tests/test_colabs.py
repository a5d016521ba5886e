"""Every notebook in colabs/ runs headless, top to bottom, in one namespace, its install cell
included (it installs this checkout; pip runs once per session), and what it shows holds
(checked on the notebook's own variables)."""

import glob
import importlib.metadata
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import jax
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, "colabs", "*.ipynb")))


def code_cells(path: str) -> list[str]:
    cells = json.loads(Path(path).read_text(encoding="utf-8"))["cells"]
    return ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]


def run_notebook(path: str) -> dict:
    namespace = {"__name__": "__main__"}
    for i, code in enumerate(code_cells(path)):
        # Every line runs here: shell and magic lines would be skipped, so there are none.
        magic = [line for line in code.splitlines() if line.lstrip().startswith(("!", "%"))]
        assert not magic, f"{path}: code cell {i} has shell/magic lines {magic}"
        exec(compile(code, f"{os.path.basename(path)}[code cell {i}]", "exec"), namespace)
    return namespace


def check_installed_this_checkout(ns: dict) -> None:
    """The install cell pip-installed the working tree (editable), as on Colab from a copy."""
    assert ns["MMJAX_CHECKOUT"] == ROOT and ns["MMJAX_SOURCE"] == ["-e", ROOT]
    installed = [  # pip's record of where each installed mmjax came from
        json.loads(dist.read_text("direct_url.json") or "{}")
        for dist in importlib.metadata.distributions(name="mmjax")
    ]
    assert {"url": Path(ROOT).as_uri(), "dir_info": {"editable": True}} in installed, installed


def check_quantizers(ns: dict) -> None:
    assert ns["same"]  # both search paths agree
    rvq, variables, z, out = ns["rvq"], ns["variables"], ns["z"], ns["out"]
    errors = [
        float(
            np.mean(
                (rvq.apply(variables, out.indices[..., :d], method=rvq.decode_indices) - z) ** 2
            )
        )
        for d in range(1, 5)
    ]
    assert errors == sorted(errors, reverse=True)


def check_tokenizer(ns: dict) -> None:
    tok, tokens, images, decoded = ns["tok"], ns["tokens"], ns["images"], ns["decoded"]
    assert tokens.dtype == np.int32 and tokens.shape == (len(images), *tok.grid_shape)
    assert tokens.min() >= 0 and tokens.max() < tok.codebook_size
    assert decoded.shape == images.shape
    assert np.isfinite(ns["quality"]) and ns["quality"] > 10.0, ns["quality"]
    assert ns["stitched"].shape == images.shape


def check_any_to_any(ns: dict) -> None:
    out, registry, toks = ns["out"], ns["registry"], ns["toks"]
    for name, modality in (("tok_depth", "depth"), ("tok_semseg", "semseg")):
        tokens = np.asarray(out[name])
        assert tokens.dtype == np.int32 and tokens.shape == (ns["n"], registry[name].num_tokens)
        assert tokens.min() >= 0 and tokens.max() < toks[modality].codebook_size
    caption = np.asarray(out["caption"])
    assert caption.min() >= 0 and caption.max() < registry["caption"].vocab_size
    np.testing.assert_array_equal(out["rgb"], ns["conditioning"]["rgb"])  # the input stays
    assert ns["same"]  # same key, same output
    assert all(isinstance(c, str) for c in ns["captions"]) and len(ns["captions"]) == ns["n"]
    truth = ns["truth"][0]
    assert ns["depth"].shape == (ns["n"], *np.shape(truth["depth"]))
    assert ns["semseg"].shape == (ns["n"], *np.shape(truth["semseg"]))


def check_sharding(ns: dict) -> None:
    assert ns["SHARDED"]  # the tests force 8 CPU devices
    loss_1, loss_8 = float(ns["loss_1"]), float(ns["loss_8"])
    assert np.isfinite(loss_1) and abs(loss_8 - loss_1) <= 1e-5 * abs(loss_1), (loss_1, loss_8)
    specs = [s.spec for s in jax.tree.leaves(ns["shardings"]["params"])]
    assert any("fsdp" in str(spec) for spec in specs)
    assert ns["kernel"].sharding.spec[0] == "fsdp"


CHECKS = {
    "any_to_any.ipynb": check_any_to_any,
    "quantizers.ipynb": check_quantizers,
    "sharding.ipynb": check_sharding,
    "tokenizer.ipynb": check_tokenizer,
}


def _install_this_checkout(patch) -> None:
    """The install cell installs this checkout (editable) into the test's own environment,
    which has the dependencies already."""
    patch.setenv("MMJAX_CHECKOUT", ROOT)
    patch.setenv("MMJAX_PIP_FLAGS", "--no-deps")


def _is_pip_install(argv) -> bool:
    return list(argv[1:4]) == ["-m", "pip", "install"]


@pytest.fixture(scope="session")
def pip_install() -> list[str]:
    """The install cell (the same in every notebook) run once per session, for real: the pip
    command it ran. Each notebook's own install cell then runs up to that command, which must
    be the same, and is not run again."""
    real_run, commands = subprocess.run, []

    def recording_run(argv, *args, **kwargs):
        commands.append(list(argv))
        return real_run(argv, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        _install_this_checkout(patch)
        patch.setattr(subprocess, "run", recording_run)
        install = code_cells(NOTEBOOKS[0])[0]
        exec(compile(install, "install cell", "exec"), {"__name__": "__main__"})
    assert len(commands) == 1 and _is_pip_install(commands[0]), commands
    return commands[0]


# The any-to-any notebook trains tokenizers and a 4M for minutes: it runs in the slow step.
SLOW_NOTEBOOKS = ("any_to_any.ipynb", "tokenizer.ipynb")


@pytest.mark.parametrize(
    "path",
    [
        pytest.param(p, marks=pytest.mark.slow) if os.path.basename(p) in SLOW_NOTEBOOKS else p
        for p in NOTEBOOKS
    ],
    ids=os.path.basename,
)
def test_notebook_runs(path, tmp_path, monkeypatch, request, pip_install):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the notebooks' mkdtemp() dirs
    _install_this_checkout(monkeypatch)
    real_run, installs = subprocess.run, []

    def run(argv, *args, **kwargs):
        if not _is_pip_install(argv):
            return real_run(argv, *args, **kwargs)
        assert list(argv) == pip_install, "not the install that the session ran"
        installs.append(argv)
        return subprocess.CompletedProcess(argv, 0)

    monkeypatch.setattr(subprocess, "run", run)
    if os.path.basename(path) == "any_to_any.ipynb":
        # as a user with a finished demo would: its stages are loaded, not trained (the
        # inline-training branch is the demo's own stages, run by tests/test_demo.py)
        monkeypatch.setenv("DEMO_WORKDIR", request.getfixturevalue("tiny_demo")[0])
    namespace = run_notebook(path)
    assert len(installs) == 1, "the install cell did not install this checkout"
    check_installed_this_checkout(namespace)
    CHECKS.get(os.path.basename(path), lambda ns: None)(namespace)


def test_every_notebook_has_checks():
    assert {os.path.basename(p) for p in NOTEBOOKS} == set(CHECKS)


def test_every_notebook_installs_with_one_cell_and_one_repository_url():
    """The same install cell opens every notebook; the repository URL is written once, in it."""
    installs = {code_cells(p)[0] for p in NOTEBOOKS}
    assert len(installs) == 1, "the notebooks' install cells differ"
    (install,) = installs
    assert install.count("MMJAX_REPO = ") == 1
    for path in NOTEBOOKS:
        text = Path(path).read_text(encoding="utf-8")
        assert text.count("github.com") == 1, f"{path}: a repository URL outside MMJAX_REPO"


def test_install_cell_names_what_to_set(tmp_path):
    """Without mmjax or a checkout it asks for MMJAX_REPO; a wrong MMJAX_CHECKOUT is named."""
    install = code_cells(NOTEBOOKS[0])[0]
    env = {k: v for k, v in os.environ.items() if k not in ("MMJAX_CHECKOUT", "PYTHONPATH")}
    wrong_checkout = {"MMJAX_CHECKOUT": str(tmp_path)}
    for extra, expected in (({}, "set MMJAX_REPO"), (wrong_checkout, "MMJAX_CHECKOUT=")):
        out = subprocess.run(  # -S: no site-packages, so no installed mmjax
            [sys.executable, "-S", "-c", install], capture_output=True, text=True,
            cwd=tmp_path, env={**env, **extra}, timeout=60,
        )  # fmt: skip
        assert out.returncode != 0 and expected in out.stderr, out.stderr[-2000:]
