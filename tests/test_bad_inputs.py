"""The bad-input battery: across the quantizers, kernels, tokenizers, bundles, data sources,
pre-tokenization, configs and CLIs, metrics, 4M generation and scoring, a wrong input gives an
error of the stated type whose message names the thing that is wrong and what was expected.

Each case is (id, callable, exception type, regex the message must match); the regex names
the argument, field, path or modality, so an error that says only "invalid value" fails.
CLI cases run the command's `main(argv)` in-process and read its one-line message.
"""

import re

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest


def _kernels():
    from mmjax.kernels import codebook_search

    cb, x = jnp.zeros((8, 4)), jnp.zeros((3, 4))
    return [
        ("search: x dim != codebook dim", lambda: codebook_search(jnp.zeros((3, 5)), cb),
         ValueError, r"x's last dimension \(5\) must equal the codebook's dimension D=4"),
        ("search: unknown metric", lambda: codebook_search(x, cb, metric="dot"),
         ValueError, r"metric must be one of .*'dot'"),
        ("search: unknown impl", lambda: codebook_search(x, cb, impl="cuda"),
         ValueError, r"impl must be one of .*'cuda'"),
        ("search: 3-d codebook", lambda: codebook_search(x, jnp.zeros((2, 8, 4))),
         ValueError, r"codebook must have shape \[K, D\].*\(2, 8, 4\)"),
        ("search: integer x", lambda: codebook_search(jnp.zeros((3, 4), jnp.int32), cb),
         TypeError, r"x must be a float array, got dtype int32"),
    ]  # fmt: skip


def _quantizers():
    from mmjax.quantizers import FSQ, LFQ, VectorQuantizer, build_quantizer

    return [
        ("quantizer: unknown type", lambda: build_quantizer({"type": "vqq"}),
         ValueError, r"type must be one of .*vqq"),
        ("quantizer: unknown key", lambda: build_quantizer({"type": "vq", "codebook_size": 8,
                                                            "dim": 4, "decay": 0.9}),
         ValueError, r"unknown key\(s\) \['decay'\]"),
        ("VQ: codebook_size 0", lambda: VectorQuantizer(0, 4),
         ValueError, r"codebook_size must be an int >= 1"),
        ("FSQ: a level of 1", lambda: FSQ((8, 1, 5)),
         ValueError, r"levels\[1\] must be an int >= 2"),
        ("LFQ: dim too large", lambda: LFQ(31), ValueError, r"dim must be <= 30"),
        ("FSQ: id 5000 of 1000 codes", lambda: _decode(FSQ((10, 10, 10)), [5000], 3),
         ValueError, r"FSQ: indices must lie in \[0, 1000\) \(codebook_size=1000\)"),
        ("VQ: negative id", lambda: _decode(VectorQuantizer(8, 4), [3, -1], 4),
         ValueError, r"indices must lie in \[0, 8\).*-1"),
    ]  # fmt: skip


def _decode(quantizer, ids, dim):
    import jax

    variables = quantizer.init(jax.random.key(0), jnp.zeros((1, dim)))
    return quantizer.apply(variables, jnp.asarray(ids), method=quantizer.decode_indices)


def _data():
    from mmjax.data.sources import ScenesSource, build_source

    def cfg(**kw):
        return ml_collections.ConfigDict(kw)

    return [
        ("source: unknown", lambda: build_source(cfg(source="webdataset")),
         ValueError, r"data.source must be one of .*'webdataset'"),
        ("source: image_folder without path", lambda: build_source(cfg(source="image_folder")),
         ValueError, r"needs data.path"),
        ("source: missing folder",
         lambda: build_source(cfg(source="image_folder", path="/nonexistent/mmjax_images")),
         FileNotFoundError, r"/nonexistent/mmjax_images does not exist"),
        ("source: array_record glob matches nothing",
         lambda: build_source(cfg(source="array_record", paths="/nonexistent/*.array_record")),
         FileNotFoundError, r"data.paths: nothing matches '/nonexistent/\*.array_record'"),
        ("source: tfds without a name", lambda: build_source(cfg(source="tfds", tfds_name="")),
         ValueError, r"needs data.tfds_name"),
        ("source: unknown part", lambda: build_source(cfg(source="scenes"), "dev"),
         ValueError, r"part must be one of .*'dev'"),
        ("scenes: unknown split", lambda: ScenesSource("testing"),
         ValueError, r"unknown split 'testing'"),
        ("scenes: resolution not a multiple of 8", lambda: ScenesSource("train", 7),
         ValueError, r"resolution must be a positive multiple of 8, got 7"),
    ]  # fmt: skip


def _metrics():
    from mmjax.eval import fid, lpips
    from mmjax.eval.image_metrics import psnr
    from mmjax.eval.ssim import ms_ssim, ssim

    z = np.zeros
    return [
        ("ssim: shapes differ", lambda: ssim(z((1, 16, 16, 3)), z((1, 16, 15, 3))),
         ValueError, r"ssim: image shapes differ"),
        ("ssim: below the window", lambda: ssim(z((1, 8, 8, 3)), z((1, 8, 8, 3))),
         ValueError, r"8x8 pixels are smaller than the 11-pixel minimum"),
        ("ms_ssim: too small for 5 scales", lambda: ms_ssim(z((1, 64, 64, 3)), z((1, 64, 64, 3))),
         ValueError, r"at least 176 pixels .*fewer_scales=True"),
        ("psnr: shapes differ", lambda: psnr(z((2, 8, 8, 3)), z((2, 8, 8, 1))),
         ValueError, r"psnr: shapes differ"),
        ("psnr: int32 images", lambda: psnr(z((1, 4, 4, 3), np.int32), z((1, 4, 4, 3), np.int32)),
         TypeError, r"psnr: reference must be float values .* or uint8, got dtype int32"),
        ("fid: weights missing", lambda: fid.load_variables("/nonexistent/inception.npz"),
         FileNotFoundError, r"no file /nonexistent/inception.npz; .*mmjax.eval.fid convert"),
        ("fid: images not RGB", lambda: fid.check_images(z((2, 8, 8))),
         ValueError, r"expected \[B, H, W, 3\] RGB images, got shape \(2, 8, 8\)"),
        ("lpips: weights missing", lambda: lpips.load_params("/nonexistent/lpips.npz"),
         FileNotFoundError, r"/nonexistent/lpips.npz do not exist"),
        ("lpips: unknown net", lambda: lpips.expected_shapes("resnet"),
         ValueError, r"net must be one of .*'resnet'"),
    ]  # fmt: skip


def _parallel_and_text():
    from mmjax.parallel import create_mesh
    from mmjax.text.serializers import quantize

    return [
        ("mesh: more devices than there are",
         lambda: create_mesh({"data": 3, "fsdp": 4, "tensor": 1}),
         ValueError, r"needs 12 devices, have 8"),
        ("mesh: two -1 sizes", lambda: create_mesh({"data": -1, "fsdp": -1, "tensor": 1}),
         ValueError, r"at most one -1"),
        ("mesh: unknown axis", lambda: create_mesh({"data": 2, "expert": 4}),
         ValueError, r"unknown axis name\(s\) \['expert'\]"),
        ("serializer: empty range", lambda: quantize([0.5], 1.0, 0.0, 10),
         ValueError, r"range \(1.0, 0.0\) must be finite with hi > lo"),
        ("serializer: no bins", lambda: quantize([0.5], 0.0, 1.0, 0),
         ValueError, r"num_bins must be an int >= 1, got 0"),
    ]  # fmt: skip


def _generation():
    from mmjax.fourm.generation.generate import GenerationStep
    from mmjax.fourm.generation.guidance import normalize_guidance
    from mmjax.fourm.generation.sampling import temperature_schedule

    return [
        ("temperature: unknown schedule", lambda: temperature_schedule(1.0, 4, "exp"),
         ValueError, r"temperature schedule must be one of .*'exp'"),
        ("temperature: negative", lambda: temperature_schedule(-1.0, 4),
         ValueError, r"temperature must be >= 0, got -1.0"),
        ("guidance: not a scale", lambda: normalize_guidance("strong"),
         ValueError, r"guidance must be a scale .*'strong'"),
        ("generation step: top_p above 1", lambda: GenerationStep("tok_a", top_p=1.5),
         ValueError, r"GenerationStep\('tok_a'\): top_p must lie in \(0, 1\]"),
        ("generation step: negative top_k", lambda: GenerationStep("tok_a", top_k=-1),
         ValueError, r"GenerationStep\('tok_a'\): top_k must be an int >= 0"),
        ("generation step: unknown scheme", lambda: GenerationStep("tok_a", scheme="beam"),
         ValueError, r"GenerationStep\('tok_a'\): scheme must be one of"),
    ]  # fmt: skip


def _bundles():
    from mmjax.fourm.bundle import load_fourm
    from mmjax.tokenizers import Tokenizer

    return [
        ("tokenizer bundle: missing dir", lambda tmp: Tokenizer.load(tmp / "missing"),
         FileNotFoundError, r"missing does not exist \(expected a bundle directory"),
        ("tokenizer bundle: empty dir", lambda tmp: Tokenizer.load(tmp),
         FileNotFoundError, r"has no tokenizer.json"),
        ("4M bundle: missing dir", lambda tmp: load_fourm(tmp / "missing"),
         FileNotFoundError, r"missing"),
    ]  # fmt: skip


def _configs():
    from mmjax.configs import load
    from mmjax.train.config_checks import ConfigError, check_config

    def checked(**fields):
        config = load("tokenizer_rgb", "quick")
        for dotted, value in fields.items():
            section, _, leaf = dotted.rpartition("__")
            (config[section] if section else config)[leaf] = value
        return check_config(config)

    return [
        ("config: negative total_steps", lambda: checked(total_steps=-3),
         ConfigError, r"config.total_steps must be an integer >= 1, got -3"),
        ("config: NaN learning rate", lambda: checked(optimizer__learning_rate=float("nan")),
         ConfigError, r"config.optimizer.learning_rate .*nan"),
        ("config: zero batch size", lambda: checked(data__batch_size=0),
         ConfigError, r"config.data.batch_size must be an integer >= 1, got 0"),
    ]  # fmt: skip


def _clis():
    from mmjax.pretokenize.run import main as pretokenize
    from mmjax.train.__main__ import main as train

    cfg = "--config=configs/tokenizer_rgb.py"
    return [
        ("train CLI: config file missing",
         lambda tmp: train(["--config=configs/nope.py", f"--workdir={tmp}/run"]),
         SystemExit, r"config file 'configs/nope.py' .*does not exist"),
        ("train CLI: unknown variant",
         lambda tmp: train([cfg + ":huge", f"--workdir={tmp}/run"]),
         SystemExit, r"unknown config variant\(s\) \['huge'\]"),
        ("train CLI: override of the wrong type",
         lambda tmp: train([cfg, f"--workdir={tmp}/run", "--config.total_steps=abc"]),
         SystemExit, r"--config.total_steps=abc"),
        ("train CLI: misspelled field",
         lambda tmp: train([cfg, f"--workdir={tmp}/run", "--config.total_stepz=3"]),
         SystemExit, r"total_stepz.*Did you mean \"total_steps\""),
        ("train CLI: negative total_steps",
         lambda tmp: train([cfg, f"--workdir={tmp}/run", "--config.total_steps=-3"]),
         SystemExit, r"config.total_steps must be an integer >= 1, got -3"),
        ("pretokenize CLI: no examples",
         lambda tmp: pretokenize(["--tokenizers", "rgb=/nonexistent/tok", "--out", str(tmp / "out"),
                              "--num-examples", "0"]),
         SystemExit, r"--num-examples must be >= 1 .*no examples to write"),
        ("pretokenize CLI: tokenizer bundle missing",
         lambda tmp: pretokenize(["--tokenizers", "rgb=/nonexistent/tok",
                                  "--out", str(tmp / "out")]),
         (SystemExit, FileNotFoundError), r"/nonexistent/tok"),
    ]  # fmt: skip


CASES = (
    _kernels() + _quantizers() + _data() + _metrics() + _parallel_and_text() + _generation()
    + _bundles() + _configs() + _clis()
)  # fmt: skip


def test_the_battery_covers_every_area_with_forty_cases():
    assert len(CASES) >= 40, len(CASES)
    areas = {name.split(":")[0].split(" ")[0] for name, *_ in CASES}
    for area in ("search", "quantizer", "source", "ssim", "fid", "mesh", "tokenizer", "4M",
                 "train", "pretokenize", "temperature", "config", "psnr", "FSQ"):  # fmt: skip
        assert area in areas, area


@pytest.mark.parametrize("name, call, error, match", CASES, ids=[c[0] for c in CASES])
def test_bad_input(name, call, error, match, tmp_path, capsys):
    with pytest.raises(error) as info:
        call(tmp_path) if call.__code__.co_argcount else call()
    message = str(info.value)
    if isinstance(info.value, SystemExit):  # the CLIs print their one line to stderr
        assert info.value.code != 0, name
        code = "" if isinstance(info.value.code, int) else str(info.value.code)
        message = capsys.readouterr().err + " " + code
    assert re.search(match, message, re.S), f"{name}: {message!r} does not match {match!r}"
