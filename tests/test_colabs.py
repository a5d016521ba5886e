"""Every notebook in colabs/ runs headless, top to bottom, in one namespace, and what it
shows holds (checked on the notebook's own variables)."""

import glob
import json
import os
from pathlib import Path

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, "colabs", "*.ipynb")))


def run_notebook(path: str) -> dict:
    cells = json.loads(Path(path).read_text(encoding="utf-8"))["cells"]
    namespace = {"__name__": "__main__"}
    for i, cell in enumerate(cells):
        if cell["cell_type"] != "code":
            continue
        source = "".join(cell["source"])
        # Shell and magic lines (installs) are for Colab, not for the test.
        code = "\n".join(line for line in source.splitlines() if not line.startswith(("!", "%")))
        exec(compile(code, f"{os.path.basename(path)}[cell {i}]", "exec"), namespace)
    return namespace


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


CHECKS = {"quantizers.ipynb": check_quantizers}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_runs(path):
    namespace = run_notebook(path)
    CHECKS.get(os.path.basename(path), lambda ns: None)(namespace)


def test_every_notebook_has_checks():
    assert {os.path.basename(p) for p in NOTEBOOKS} == set(CHECKS)
