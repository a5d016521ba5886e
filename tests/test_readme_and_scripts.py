"""The commands of the README and docs/, CI, the demo and the benchmark script stay in step
and run."""

import ast
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = Path(ROOT, "README.md").read_text(encoding="utf-8")
SCALING = Path(ROOT, "docs", "scaling.md").read_text(encoding="utf-8")  # moved out of the README
DOCS = ["README.md", *sorted(f"docs/{p.name}" for p in Path(ROOT, "docs").glob("*.md"))]
COMMAND_WORDS = ("python", "python3", "pytest", "pip", "bash", "ruff")


def _section(title: str) -> str:
    return README.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def _blocks(text: str, lang: str = "") -> list[str]:
    """The bodies of the fenced code blocks opened with ```lang (exactly)."""
    blocks, body, open_lang = [], None, None
    for line in text.splitlines():
        if line.startswith("```"):
            if body is None:
                body, open_lang = [], line[3:].strip()
            else:
                if open_lang == lang:
                    blocks.append("\n".join(body))
                body = None
        elif body is not None:
            body.append(line)
    return blocks


def _readme_commands():
    return _blocks(_section("Set up and run"), "bash")


def _is_command(text: str) -> bool:
    words = text.split()
    if not words:
        return False
    word = os.path.basename(words[0])
    return word in COMMAND_WORDS or (word.endswith(".sh") and len(words) > 1)


def quoted_commands(text: str) -> list[str]:
    """Every shell command a markdown text quotes: lines of bash/plain code blocks (a line
    ending in a backslash joined to the next) and inline code spans that start with a command
    word, `&&` chains split into their parts."""
    lines = []
    for block in _blocks(text, "bash") + _blocks(text, ""):
        lines += [line.strip() for line in re.sub(r"\s*\\\n\s*", " ", block).splitlines()]
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    lines += re.findall(r"`([^`\n]+)`", prose)
    return [p.strip() for line in lines for p in line.split("&&") if _is_command(p.strip())]


def doc_commands() -> list[tuple[str, str]]:
    """(file, command) of every command the README and the pages of docs/ quote."""
    return [
        (path, command)
        for path in DOCS
        for command in quoted_commands(Path(ROOT, path).read_text(encoding="utf-8"))
    ]


def entry_point(command: str) -> str:
    """'python -m mmjax.train ...' -> 'mmjax.train'; 'python x/y.py' -> 'x/y.py';
    '.venv/bin/pip ...' -> 'pip'; 'pytest -m slow' -> 'pytest'."""
    argv = shlex.split(command)
    word = os.path.basename(argv[0])
    if word.startswith("python"):
        return argv[2] if argv[1] == "-m" else argv[1]
    return word


# entry point -> where it is run: test functions ("file::name") or the CI script.
EXERCISED = {
    "mmjax.demo": ["tests/test_demo.py::test_demo_runs_end_to_end_and_resumes"],
    "mmjax.demo.quantizers": [
        "tests/test_readme_and_scripts.py::test_demo_trains_and_writes_its_grid"
    ],
    "mmjax.data.scenes": [
        "tests/test_data_pipeline.py::test_scenes_cli_writes_shards_and_a_contact_sheet"
    ],
    "mmjax.train": [
        "tests/test_readme_and_scripts.py::test_readme_walkthrough_runs_as_written",
        "tests/test_multiprocess.py::test_fourm_two_processes_train_like_one",
        "tests/test_image_folder.py::test_tokenizer_trainer_evaluates_on_the_folders_validation_images",
    ],
    "mmjax.pretokenize": [
        "tests/test_readme_and_scripts.py::test_readme_walkthrough_runs_as_written",
        "tests/test_pretokenize.py::test_cli_end_to_end_is_deterministic_and_overwrites_only_when_asked",
        "tests/test_tfds_source.py::test_pretokenize_cli_reads_a_tfds_dataset",
    ],
    "mmjax.eval.reconstruction": ["tests/test_reconstruction_cli.py::test_image_folder_with_lpips"],
    "mmjax.eval.prefixes": [
        "tests/test_tokenizer_1d.py::test_training_lowers_the_loss_and_exports_a_bundle"
    ],
    "mmjax.eval.lpips": ["tests/test_lpips.py::test_parity_with_lpips_package"],
    "mmjax.eval.fid": ["tests/test_fid.py::test_pool3_features_match_pytorch_fid"],
    "mmjax.eval.nextscale": [
        "tests/test_nextscale_train.py::test_caption_to_rgb_from_the_command_line"
    ],
    "mmjax.eval.tokens": ["tests/test_token_stats.py::test_cli_on_a_pretokenized_dataset"],
    "mmjax.storage.upgrade": [
        "tests/test_bundles.py::test_msgpack_bundles_are_refused_and_upgraded_by_the_cli"
    ],
    "launch/aot_compile.py": ["tests/test_readme_and_scripts.py::test_aot_compile_cli"],
    "mmjax.convert": ["tests/test_readme_and_scripts.py::test_readme_ml4m_section_runs"],
    "tpu_vm.sh": ["tests/test_launch.py::test_readme_scaling_out_commands_dry_run"],
    "xpk.sh": ["tests/test_launch.py::test_readme_scaling_out_commands_dry_run"],
    "benchmarks/codebook_search.py": [
        "tests/test_readme_and_scripts.py::test_codebook_search_benchmark_quick_run"
    ],
    "benchmarks/tokenizer_photos.py": [
        "tests/test_readme_and_scripts.py::test_tokenizer_photos_benchmark_quick_run"
    ],
    "venv": [".ci/run"],
    "pip": [".ci/run", "tests/test_launch.py::test_tpu_setup_copies_a_git_archive_to_all_workers"],
    "ruff": [".ci/run"],
    "pytest": [".ci/run"],
}


def _function_source(path: str, name: str) -> str:
    text = Path(ROOT, path).read_text(encoding="utf-8")
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return ast.get_source_segment(text, node)
    raise AssertionError(f"{path} has no test {name!r}")


def _covers(where: str, entry: str, command: str) -> bool:
    """Whether `where` (".ci/run" or a test) runs `command` (entry point `entry`)."""
    if where == ".ci/run":  # CI runs the set-up commands' install and the test command
        setup = _readme_commands()
        ci = Path(ROOT, ".ci", "run").read_text(encoding="utf-8")
        return setup[1] in ci and (any(command in c for c in setup) or entry == "pytest")
    path, name = where.split("::")
    source = _function_source(path, name)
    key = {"pip": "pip install"}.get(entry, os.path.splitext(os.path.basename(entry))[0])
    module_source = Path(ROOT, path).read_text(encoding="utf-8")
    return key in source or key in module_source  # the test or its helpers


def test_quoted_commands_reads_blocks_continuations_chains_and_inline_spans():
    text = (
        "Run `python -m a.b --x 1` or `--quick`.\n\n```bash\npython -m c.d --y \\\n"
        "  --z 2 && ruff check .\nexport A=1\n```\n\n```python\nimport e\n```\n"
    )
    assert quoted_commands(text) == [
        "python -m c.d --y --z 2",
        "ruff check .",
        "python -m a.b --x 1",
    ]


def test_every_readme_and_docs_command_is_exercised():
    commands = doc_commands()
    readme = [c for path, c in commands if path == "README.md"]
    assert len(readme) >= 15, readme  # the extraction finds the README's commands
    # the commands moved from the README's "Scaling out" are read from docs/scaling.md
    scaling = {entry_point(c) for path, c in commands if path == "docs/scaling.md"}
    assert {"mmjax.train", "launch/aot_compile.py", "tpu_vm.sh", "xpk.sh"} <= scaling, scaling
    used = set()
    for path, command in commands:
        entry = entry_point(command)
        assert entry in EXERCISED, f"{path} command {command!r} is run by no test (add one)"
        used.add(entry)
        places = EXERCISED[entry]
        assert any(_covers(w, entry, command) for w in places), (
            f"{path}: {command!r}: not in {places}"
        )
    assert used == set(EXERCISED), f"stale entries: {set(EXERCISED) - used}"


def _run_readme(command: str, tmp: str, extra=()) -> str:
    argv = shlex.split(command.replace("/tmp/", f"{tmp}/"))
    assert argv[0] == "python", command
    env = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"}
    out = subprocess.run(
        [sys.executable, *argv[1:], *extra], capture_output=True, text=True, cwd=ROOT,
        env=env, timeout=900,
    )  # fmt: skip
    assert out.returncode == 0, f"{command}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout


def _check_generation_snippet(fourm_dir: str, tok_depth_dir: str, resolution: int = 64) -> None:
    """Runs the Generation section's snippet on these bundles (its /tmp paths and, for bundles
    of another resolution, its 64 px renders replaced): the depth it decodes is the depth
    tokenizer's decode of the tokens generated."""
    from mmjax.tokenizers import Tokenizer

    (snippet,) = _blocks(_section("Generation"), "python")
    for old, new in (
        ('"/tmp/fourm"', repr(fourm_dir)),
        ('"/tmp/tok_depth"', repr(tok_depth_dir)),
        ('"validation", 64)', f'"validation", {resolution})'),
    ):
        assert old in snippet, f"the README's generation snippet has no {old}"
        snippet = snippet.replace(old, new)
    scope = {}
    exec(compile(snippet, "README.md#generation", "exec"), scope)
    depth = Tokenizer.load(tok_depth_dir)
    tokens = np.asarray(scope["out"]["tok_depth"])
    assert tokens.min() >= 0 and tokens.max() < depth.codebook_size
    np.testing.assert_allclose(  # the snippet's decode is the bundle's decode of those tokens
        np.asarray(scope["depth"]), np.asarray(depth.decode(tokens.reshape(4, 8, 8))), atol=1e-6
    )


@pytest.mark.slow  # on the tiny demo's outputs (a minute and a half to make)
def test_readme_generation_snippet_runs(tiny_demo):
    """The snippet on the tiny demo's 4M and depth tokenizer (trainer workdirs laid out as the
    README's; 32 px, their resolution). The slow walkthrough runs it on the outputs of the
    README's own commands."""
    workdir = tiny_demo[0]
    _check_generation_snippet(f"{workdir}/fourm", f"{workdir}/tok_depth", resolution=32)


@pytest.mark.slow
def test_readme_walkthrough_runs_as_written(tmp_path):
    """The tokenizer and 4M sections' commands, then the generation snippet, in order, with
    fewer steps and scenes; each output is what the next one reads. Minutes of compiling in
    four processes, so slow: the default run covers the pieces (the train command line in
    tests/test_multiprocess.py, pre-tokenization's in tests/test_pretokenize.py, the snippet
    above)."""
    from mmjax.data.pretokenized import PretokenizedSource
    from mmjax.tokenizers import Tokenizer

    tmp = str(tmp_path)
    commands = _blocks(_section("Training a tokenizer"))[0].splitlines()
    commands += _blocks(_section("Pre-tokenization and 4M training"))[0].splitlines()
    assert [entry_point(c) for c in commands] == ["mmjax.train"] * 2 + [
        "mmjax.pretokenize", "mmjax.train"
    ]  # fmt: skip
    for command in commands:
        if "pretokenize" in command:
            _run_readme(command, tmp, ["--num-examples", "24"])
        else:
            _run_readme(command, tmp, ["--config.total_steps=2"])
    rgb, depth = Tokenizer.load(f"{tmp}/tok_rgb"), Tokenizer.load(f"{tmp}/tok_depth")
    source = PretokenizedSource(f"{tmp}/pretok")
    assert len(source) == 24
    # the records are the quick tokenizers' codes of the same scenes
    from mmjax.data.scenes import generate as render_scene

    scene = render_scene(0, "train", 64)
    np.testing.assert_array_equal(
        np.asarray(source[0]["tok_depth"]).reshape(-1),
        np.asarray(depth.encode(scene["depth"][None])).reshape(-1),
    )
    _check_generation_snippet(f"{tmp}/fourm", f"{tmp}/tok_depth")
    assert rgb.modality == "rgb"


@pytest.mark.slow  # two converter processes and a compile of the snippet: about a minute
def test_readme_ml4m_section_runs(tmp_path):
    """The "Using the released 4M models" section as written, on tiny random files laid out as
    the released ones and named as the README names them: its two convert commands, then its
    snippet (tiny sizes: a 4 x 4 grid, 4 MaskGIT steps)."""
    import json

    from tests import ml4m_reference as ref
    from tests import ml4m_vqvae_reference as vq
    from tests.test_text_ml4m import ml4m_json

    text = ml4m_json()
    config = ref.ml4m_config("4m21")
    config["modality_info"]["caption"]["vocab_size"] = len(text["model"]["vocab"])
    ref.save_ml4m_checkpoint(tmp_path / "4M-21_XL.safetensors", ref.ml4m_state_dict(config), config)
    semseg = vq.semseg_config()
    name = "4M_tokenizers_semseg_4k_224-448.safetensors"
    vq.write_ml4m_safetensors(tmp_path / name, vq.random_state_dict(semseg, seed=1), semseg)
    (tmp_path / "text_tokenizer_4m_wordpiece_30k.json").write_text(json.dumps(text))
    section = _section("Using the released 4M models")
    (commands,) = _blocks(section, "bash")
    env = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"}
    for command in commands.splitlines():
        argv = shlex.split(command.replace("/tmp/", f"{tmp_path}/"))
        out = subprocess.run([sys.executable, *argv[1:]], capture_output=True, text=True,
                             cwd=tmp_path, env=env, timeout=600)  # fmt: skip
        assert out.returncode == 0, f"{command}\n{out.stderr[-3000:]}"
    (imports,) = _blocks(_section("Generation"), "python")
    (snippet,) = _blocks(section, "python")
    for old, new in (("reshape(-1, 14, 14)", "reshape(-1, 4, 4)"), ("steps=8", "steps=4")):
        assert old in snippet, f"the README's ml-4m snippet has no {old}"
        snippet = snippet.replace(old, new)
    snippet = snippet.replace("/tmp/", f"{tmp_path}/")
    images = np.random.default_rng(0).random((2, 64, 64, 3), np.float32)
    scope = {"images": images}
    header = imports.split("model, variables")[0]
    cwd = os.getcwd()
    try:
        os.chdir(tmp_path)
        exec(compile(header + snippet, "README.md#ml4m", "exec"), scope)
    finally:
        os.chdir(cwd)
    assert np.asarray(scope["semseg"]).shape == (2, 32, 32)  # the semseg tokenizer's class ids
    assert all(isinstance(c, str) for c in scope["captions"]) and len(scope["captions"]) == 2
    clip = np.asarray(scope["clip"]["tok_clip@224"])
    assert clip.shape == (1, 16) and clip.max() < scope["registry"]["tok_clip@224"].vocab_size


def test_readme_quantizer_snippet_runs():
    (snippet,) = _blocks(_section("Quantizers in a few lines"), "python")
    scope = {}
    exec(compile(snippet, "README.md#quantizers", "exec"), scope)
    out, q, variables = scope["out"], scope["q"], scope["variables"]
    decoded = q.apply(variables, out.indices, method=q.decode_indices)
    np.testing.assert_allclose(np.asarray(decoded), np.asarray(out.quantized), atol=1e-5)
    assert 0 < float(out.metrics["usage"]) <= 1


@pytest.mark.slow  # a minute of training or compiling: CI's slow step
@pytest.mark.tpu_aot
def test_aot_compile_cli():
    """The AOT command line of docs/scaling.md (a tiny preset on a small slice): compiles with
    the real TPU compiler and prints the memory, the verdict and the flop count."""
    command = SCALING.split("`python launch/aot_compile.py", 1)[1]
    command = "python launch/aot_compile.py" + command.split("`", 1)[0]
    argv = shlex.split(command)
    assert argv[2].startswith("--config=configs/fourm.py:") and argv[3].startswith("--topology=")
    argv[2], argv[3] = "--config=configs/fourm.py:size=tiny,quick", "--topology=v5e:2x2"
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_PLATFORMS", "XLA_FLAGS")}
    env.update(PYTHONPATH=ROOT, ALLOW_MULTIPLE_LIBTPU_LOAD="1")
    out = subprocess.run(
        [sys.executable, *argv[1:]], capture_output=True, text=True, cwd=ROOT, env=env,
        timeout=900,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    slices = int(next((a.split("=")[1] for a in argv if a.startswith("--num_slices=")), 1))
    where = f"{slices} slices of v5e:2x2: {4 * slices} x" if slices > 1 else "v5e:2x2: 4 x"
    assert f"topology {where}" in out.stdout, out.stdout
    if slices > 1:  # the bytes one step sends across slices: the gradient all-reduce at least
        crossing = re.search(
            r"cross-slice collective bytes per step \(per chip\): (\S+) MiB", out.stdout
        )
        assert crossing and float(crossing[1]) > 0, out.stdout
    used = float(re.search(r"per-chip memory: (\S+) GiB", out.stdout)[1])
    hbm = float(re.search(r"HBM per chip: (\S+) GiB -> fits", out.stdout)[1])
    assert 0 < used < hbm and 14 < hbm < 17, out.stdout  # a v5e chip has 16 GB
    flops = float(re.search(r"compiler flops per step \(per chip\): (\S+)", out.stdout)[1])
    assert flops > 0


def test_readme_has_two_commands_and_ci_runs_the_test_one():
    commands = _readme_commands()
    assert len(commands) == 2, commands
    main, test = commands
    assert "python -m mmjax.demo" in main and "-c constraints.txt" in main
    assert test.rstrip().endswith("pytest") and "ruff format --check" in test
    ci = [
        line
        for line in Path(ROOT, ".ci", "run").read_text(encoding="utf-8").splitlines()
        if not line.startswith("#")
    ]
    # the README's test command, then the slow tests it leaves out, in the same environment
    # with the parity extra (the reference implementations the metric tests compare against)
    parity = '.venv/bin/pip install -q -c constraints.txt -e ".[test,tpu,parity]"'
    assert ci[ci.index(test) + 1 :] == [parity, ".venv/bin/pytest -m slow -n 0"], ci
    assert os.path.exists(os.path.join(ROOT, "constraints.txt"))


def test_demo_trains_and_writes_its_grid(tmp_path):
    from mmjax.demo.quantizers import main, toy_images

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


@pytest.mark.slow
def test_tokenizer_photos_benchmark_quick_run(tmp_path):
    """The photographs benchmark for 2 steps: its token bytes are the grid at log2 K bits,
    each JPEG row keeps within its byte budget where a quality fits, and the tokenizer's PSNR
    is the bundle's reconstruction of the held-out crops."""
    import json
    import math

    from mmjax.data import ImageFolderSource
    from mmjax.eval.image_metrics import psnr
    from mmjax.tokenizers import Tokenizer

    out = tmp_path / "numbers.json"
    command = [os.path.join(ROOT, "benchmarks", "tokenizer_photos.py"), "--steps", "2"]
    command += ["--stride", "256", "--workdir", str(tmp_path / "w"), "--json", str(out)]
    subprocess.run(
        [sys.executable, *command], capture_output=True, text=True, check=True, cwd=ROOT,
        timeout=900, env={**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"},
    )  # fmt: skip
    numbers = json.loads(out.read_text())
    rows, k = numbers["rows"], numbers["codebook_size"]
    grid = math.prod(numbers["grid"])
    assert rows["tokenizer"]["bytes"] == pytest.approx(grid * math.log2(k) / 8)
    assert rows["tokenizer (entropy bound)"]["bytes"] <= rows["tokenizer"]["bytes"]
    scan = rows["JPEG, scan only <= token bytes"]
    assert scan["over_budget"] < numbers["held_out_crops"] and scan["quality"] >= 1
    held = ImageFolderSource(str(tmp_path / "w" / "photos" / "held_out"))
    images = np.stack([held[i]["rgb"] for i in range(len(held))])
    tok = Tokenizer.load(str(tmp_path / "w" / "run"))
    recon = np.clip(np.asarray(tok.decode(tok.encode(images))), 0, 1)
    assert len(held) == numbers["held_out_crops"]
    assert rows["tokenizer"]["psnr"] == pytest.approx(psnr(images, recon), abs=0.05)
