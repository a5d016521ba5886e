"""The experiment configs (configs/*.py, the package mmjax.configs): every field of every
config can be set from the command line through ml_collections' real config flags, derived
values follow their inputs, and every `--config.*` that the docs and the configs' own
docstrings name exists."""

import glob
import importlib
import os
import re
import shlex
from pathlib import Path

import ml_collections
import pytest
from absl import flags
from ml_collections import config_flags

from mmjax.configs import common, load

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = os.path.join(ROOT, "configs")
# Every config file with the variants it is checked under (the first: its default).
VARIANTS = {
    "tokenizer_rgb": (
        "",
        "quick",
        "quantizer=vq,model=vit,gan",
        "quantizer=rvq,bf16",
        "quantizer=msrvq,resolution=128",
    ),
    "tokenizer_depth": ("", "quantizer=lfq,quick", "quantizer=bsq,model=vit,size=small"),
    "tokenizer_normals": ("", "quantizer=vq,resolution=128"),
    "tokenizer_semseg": ("", "quantizer=rvq,model=vit,bf16"),
    "tokenizer_1d": ("", "quick", "quantizer=vq,size=small,keep=uniform,gan", "quantizer=lfq,bf16"),
    "fourm": ("", "quick", "size=base,fsdp,bf16,remat,mixture=rgb_first"),
    "demo_tokenizer": ("modality=rgb", "modality=semseg,quick"),
    "demo_fourm": ("", "quick"),
    "fourm_ml4m": ("", "model=4M-7_L_CC12M,quick,fsdp,bf16"),
    "nextscale": ("", "quick", "size=small,bf16"),
}


def parse(spec: str, *overrides: str) -> ml_collections.ConfigDict:
    """The config `python -m mmjax.train --config=SPEC OVERRIDES...` runs, parsed by
    ml_collections' config flags on flag values of their own."""
    name, _, arg = spec.partition(":")
    path = os.path.join(CONFIG_DIR, f"{name}.py") + (f":{arg}" if arg else "")
    argv = ["prog", f"--config={path}", *overrides]
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", flag_values=fv, sys_argv=argv)
    fv(argv)
    return fv.config


def leaves(config, prefix: str = "") -> dict:
    """{dotted key: value} of every field; an empty ConfigDict is one field, {}, and so is
    a mapping keyed by names a dotted path cannot spell (ml-4m's "rgb@224"), set whole."""
    out = {}
    for key, value in config.items():
        if isinstance(value, ml_collections.ConfigDict):
            whole = not len(value) or not all(str(k).isidentifier() for k in value)
            out.update(
                {f"{prefix}{key}": value.to_dict()} if whole else leaves(value, f"{prefix}{key}.")
            )
        else:
            out[f"{prefix}{key}"] = value
    return out


def field(config, key: str):
    """The value at a dotted key, a ConfigDict as a dict."""
    for part in key.split("."):
        config = config[part]
    return config.to_dict() if isinstance(config, ml_collections.ConfigDict) else config


def other(value):
    """A value of the same type that differs from `value`."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 7
    if isinstance(value, float):
        return value * 2 + 0.5
    if isinstance(value, str):
        return value + "_x" if value else "x"
    if isinstance(value, tuple):
        return value[::-1] + value[:1] if value else ("a", "b")
    if isinstance(value, dict):
        return {"a": 1}
    raise AssertionError(f"no command-line value for a {type(value).__name__}: {value!r}")


def flag(key: str, value) -> str:
    text = str(value).lower() if isinstance(value, bool) else value
    return f"--config.{key}={text if isinstance(text, str) else repr(text)}"


def cases():
    return [(name, arg) for name, args in VARIANTS.items() for arg in args]


def test_every_config_file_is_checked():
    names = {os.path.basename(p)[:-3] for p in glob.glob(os.path.join(CONFIG_DIR, "*.py"))}
    assert names - {"__init__", "common"} == set(VARIANTS)


@pytest.mark.parametrize(("name", "arg"), cases())
def test_every_field_is_set_from_the_command_line(name, arg):
    spec = f"{name}:{arg}" if arg else name
    default = leaves(parse(spec))
    assert default == leaves(load(name, arg or None))  # the file as Python callers import it
    nones = [k for k, v in default.items() if v is None]
    assert not nones, f"{spec}: None defaults cannot be set from the command line: {nones}"
    want = {k: other(v) for k, v in default.items()}
    got = parse(spec, *(flag(k, v) for k, v in want.items()))
    for key, value in want.items():
        assert field(got, key) == value, (spec, key, field(got, key), value)


def test_derived_fields_follow_the_command_line():
    c = parse("demo_tokenizer:modality=rgb", "--config.total_steps=10")
    assert (c.optimizer.warmup_steps, c.log_every, c.eval.every, c.checkpoint.every) == (1, 1, 5, 5)
    c = parse("demo_tokenizer:modality=rgb", "--config.total_steps=5000")
    assert (c.optimizer.warmup_steps, c.log_every, c.eval.every) == (100, 250, 2500)
    c = parse("demo_tokenizer:modality=depth", "--config.total_steps=1", "--config.log_every=2")
    assert (c.optimizer.warmup_steps, c.log_every, c.eval.every) == (0, 2, 1)
    c = parse("demo_fourm", "--config.total_steps=20", "--config.checkpoint.every=7")
    assert (c.optimizer.warmup_steps, c.log_every, c.eval.every, c.checkpoint.every) == (2, 1, 5, 7)
    assert parse("tokenizer_rgb:gan", "--config.total_steps=900").loss.gan_start == 300


@pytest.mark.parametrize("a", [-3, 0, 1, 7, 100, 250])
@pytest.mark.parametrize("b", [0, 1, 100])
def test_ref_min_and_max_are_min_and_max(a, b):
    c = ml_collections.ConfigDict({"a": 0})
    ref = c.get_ref("a")
    low, high = common.ref_min(ref, b), common.ref_max(ref, b)
    c.a = a
    assert (low.get(), high.get()) == (min(a, b), max(a, b))


def test_none_means_what_the_typed_defaults_mean():
    """Python callers may still set the old None: it reads as the typed default does."""
    from mmjax.data.sources import build_source
    from mmjax.parallel import DEFAULT_RULES
    from mmjax.parallel.rules import rules_from_config

    rules = common.SHARDING_RULES
    assert rules_from_config(rules) == rules_from_config(None) == DEFAULT_RULES
    assert rules_from_config([["embed", ["fsdp", "tensor"]], ["kv", None]]) == (
        ("embed", ("fsdp", "tensor")),
        ("kv", None),
    )
    with pytest.raises(ValueError, match="pair"):
        rules_from_config(("embed", "fsdp"))
    from mmjax.fourm import build_fourm, build_registry, fourm7_modalities

    registry = build_registry(fourm7_modalities())
    assert build_fourm(load("fourm").model, registry).attention_impl is None
    data = load("tokenizer_rgb").data
    data.source = "array_record"
    with pytest.raises(ValueError, match=r"needs data\.paths"):
        build_source(data)
    data.source = "tfds"
    with pytest.raises(ValueError, match=r"needs data\.tfds_name"):
        build_source(data)


def test_configs_refuse_unknown_variants_and_values():
    with pytest.raises(ValueError, match=r"unknown config variant\(s\) \['epochs'\]"):
        load("fourm", "epochs=3")
    with pytest.raises(ValueError, match="size must be one of"):
        load("tokenizer_semseg", "size=huge")
    with pytest.raises(ValueError, match="needs modality="):
        load("demo_tokenizer", "quick")
    with pytest.raises(ValueError, match="modality must be one of"):
        load("demo_tokenizer", "modality=lidar")
    with pytest.raises(ValueError, match="no config 'tokenizer_lidar'"):
        load("tokenizer_lidar")
    # the presets are copied, never shared between configs
    a, b = load("tokenizer_rgb", "quantizer=rvq"), load("tokenizer_depth", "quantizer=rvq")
    a.quantizer.base.codebook_size = 7
    assert b.quantizer.base.codebook_size == common.QUANTIZERS["rvq"]["base"]["codebook_size"]


# -- the commands in the docs --------------------------------------------------------------
DOCS = ("README.md", "launch/README.md", "configs/README.md")
DOCS += tuple(sorted(glob.glob("docs/*.md", root_dir=ROOT)))
COMMAND = re.compile(r"(?:python3? -m mmjax\.train|launch/aot_compile\.py)\s[^`\n]*")
OVERRIDE = re.compile(r"--config\.([a-z_][\w.]*)=")  # not a placeholder like KEY


def doc_texts() -> dict:
    """{source: text} of the docs and of every config's docstring, continued lines joined."""
    texts = {p: Path(ROOT, p).read_text(encoding="utf-8") for p in DOCS}
    for name in VARIANTS:
        texts[f"configs/{name}.py"] = importlib.import_module(f"mmjax.configs.{name}").__doc__
    return {k: re.sub(r"\\\n\s*", " ", v) for k, v in texts.items()}


def doc_commands() -> list:
    """(source, command) of every command that names a file in configs/ (not a placeholder
    such as configs/X.py)."""
    return [
        (src, cmd)
        for src, text in doc_texts().items()
        for cmd in COMMAND.findall(text)
        if re.search(r"--config=configs/[a-z_]+\.py", cmd)
    ]


def test_the_docs_name_commands():
    sources = {src for src, _ in doc_commands()}
    assert {"README.md", "configs/fourm.py", "configs/demo_tokenizer.py"} <= sources


@pytest.mark.parametrize(("source", "command"), doc_commands())
def test_doc_command_parses_with_its_overrides(source, command):
    """The config and every `--config.KEY=VALUE` of the command, through the real flags."""
    words = shlex.split(command)
    specs = [w.split("=", 1)[1] for w in words if w.startswith("--config=")]
    assert len(specs) == 1, (source, command)
    file, _, arg = specs[0].partition(":")
    assert file.startswith("configs/") and file.endswith(".py"), (source, command)
    name = file[len("configs/") : -len(".py")]
    overrides = [w for w in words if w.startswith("--config.")]
    config = parse(f"{name}:{arg}" if arg else name, *overrides)
    fields = leaves(config)
    for word in overrides:
        key = word[len("--config.") :].split("=", 1)[0]
        assert key in fields, (source, command, key)


def test_every_override_the_docs_name_exists():
    """Each `--config.KEY=` in prose (not in a command) is a field of some config."""
    fields = set()
    for name, arg in cases():
        fields |= set(leaves(load(name, arg or None)))
    named = {
        (src, key)
        for src, text in doc_texts().items()
        for key in OVERRIDE.findall(COMMAND.sub("", text))
    }
    assert named  # e.g. the README's --config.model.head_impl=grouped
    missing = sorted((src, key) for src, key in named if key not in fields)
    assert not missing, missing
