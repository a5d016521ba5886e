"""The README's commands, CI, the demo and the benchmark script stay in step and run."""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _readme_commands():
    text = Path(ROOT, "README.md").read_text(encoding="utf-8")
    section = text.split("## Set up and run", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)\n```", section, flags=re.S)


def test_readme_has_two_commands_and_ci_runs_the_test_one():
    commands = _readme_commands()
    assert len(commands) == 2, commands
    main, test = commands
    assert "python -m mmjax.demo" in main and "-c constraints.txt" in main
    assert test.rstrip().endswith("pytest") and "ruff format --check" in test
    ci = Path(ROOT, ".ci", "run").read_text(encoding="utf-8")
    assert test in ci.splitlines()
    assert os.path.exists(os.path.join(ROOT, "constraints.txt"))


def test_demo_trains_and_writes_its_grid(tmp_path):
    from mmjax.quantizer_demo import main, toy_images

    images = toy_images(4, seed=1)
    assert images.shape == (4, 32, 32, 3) and images.min() >= 0.0 and images.max() <= 1.0
    np.testing.assert_array_equal(images, toy_images(4, seed=1))  # deterministic
    results = main(
        ["--workdir", str(tmp_path), "--steps", "150", "--quantizers", "vq-ema,fsq-8555"]
    )
    # A mean-colour predictor scores about 10 dB on these images; training must beat it.
    baseline = -10 * np.log10(np.mean((images - images.mean((1, 2), keepdims=True)) ** 2))
    for r in results:
        assert r["psnr"] > baseline + 3, (r["name"], r["psnr"], baseline)
        assert 0 < r["usage"] <= 1 and r["perplexity"] >= 1
    grid = Image.open(tmp_path / "reconstructions.png")
    assert grid.size[1] > 3 * 32 * 3  # input row + one row per quantizer, scaled 3x


def test_benchmark_quick_run():
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "quantizers.py"), "--quick"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        timeout=300,
        env={**os.environ, "PYTHONPATH": ROOT},
    ).stdout
    rows = [line.split() for line in out.splitlines() if line.strip().startswith(("64 ", "512 "))]
    impls = {r[2] for r in rows if r[1] == "mmjax"}
    assert impls == {"xla", "xla_chunked"}


def test_codebook_search_benchmark_quick_run():
    out = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "benchmarks", "codebook_search.py"),
            "--shapes",
            "small",
            "--dtypes",
            "f32",
            "--reps",
            "1",
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        timeout=300,
        env={**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"},
    ).stdout
    paths = {line.split()[5] for line in out.splitlines() if line.startswith("small")}
    assert paths == {"xla", "xla_chunked", "pallas_tpu", "pallas_gpu"}, out
    assert "1.00x" in out  # the naive path is the baseline of the ratios
