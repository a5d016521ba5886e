"""Multi-scale (msrvq, VAR) tokens through the Tokenizer bundle and pre-tokenization, with a
tiny untrained tokenizer: encode gives the flat scale pyramid that the quantizer itself
produces, decode equals the autoencoder's own reconstruction, the code table is what the
quantizer decodes, pre-tokenized records equal `encode`, 4M refuses pyramids, and the
next-scale trainer runs on them."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.data import ScenesSource, scenes
from mmjax.data.pretokenized import PretokenizedSource
from mmjax.pretokenize import pretokenize, registry_config_from_manifest

R, SCALES, K = 32, (1, 2, 4), 16
MODEL = {"type": "conv", "size": "tiny", "channels": 8, "channel_mult": [1, 1, 2, 2]}
QUANT = {"type": "msrvq", "scales": list(SCALES), "base": {"type": "vq", "codebook_size": K}}


@pytest.fixture(scope="module")
def setup(tmp_path_factory, untrained_tokenizers):
    from mmjax.tokenizers import Tokenizer

    dirs = untrained_tokenizers(("rgb",), MODEL, QUANT, R)
    tok = Tokenizer.load(dirs["rgb"])
    images = np.stack([scenes.generate(i, "train", R)["rgb"] for i in range(5)])
    out = str(tmp_path_factory.mktemp("pretok_ms") / "out")
    pretokenize(ScenesSource("train", R, 5), dirs, out, resolution=R, batch_size=2,
                text_examples=50, text_vocab_size=600)  # fmt: skip
    return dict(tok=tok, dir=dirs["rgb"], images=images, out=out)


def test_encode_is_the_quantizers_pyramid_and_decode_its_reconstruction(setup):
    tok, x = setup["tok"], setup["images"]
    assert tok.scales == SCALES and tok.grid_shape == (4, 4) and tok.codebook_size == K
    tokens = np.asarray(tok.encode(x))
    assert tokens.dtype == np.int32 and tokens.shape == (5, 21)
    assert len(np.unique(tokens[:, 5:])) > 3  # not a degenerate tokenizer
    model, variables = tok.model, tok.variables
    pre = tok.codec.preprocess(jnp.asarray(x))
    indices = jax.jit(
        lambda v, x: model.apply(v, x, method=lambda m, x: m.quantizer(m.encoder(x)).indices)
    )(variables, pre)
    np.testing.assert_array_equal(tokens, np.asarray(indices))
    # the autoencoder's own forward pass (encoder -> quantizer -> decoder)
    y = jax.jit(lambda v, x: model.apply(v, x)[0])(variables, pre)
    np.testing.assert_allclose(
        np.asarray(tok.decode(tokens)), np.asarray(tok.codec.postprocess(y)), atol=1e-5
    )
    with pytest.raises(ValueError, match=r"tokens must be \[B, 21\]"):
        tok.decode(tokens.reshape(5, 21, 1))
    with pytest.raises(ValueError, match="tokens"):
        tok.decode(np.full((1, 21), K, np.int32))


def test_code_table_sums_to_the_quantizers_decode(setup):
    """The next-scale model's inputs come from the code table: per scale, the table's codes
    upsampled and summed must be the quantizer's decode_indices."""
    from mmjax.fourm.nextscale import code_table, tokenizer_layout
    from mmjax.quantizers.multiscale import resize

    tok = setup["tok"]
    table = code_table(tok)
    assert table.shape == (1, K, 8)
    layout = tokenizer_layout(tok)
    assert layout == dict(scales=SCALES, codebook_size=K, code_dim=8, code_levels=1,
                          upsample="linear")  # fmt: skip
    tokens = np.asarray(tok.encode(setup["images"]))
    total, start = 0.0, 0
    for s in SCALES:
        codes = table[0][tokens[:, start : start + s * s]].reshape(-1, s, s, 8)
        total = total + np.asarray(resize(jnp.asarray(codes), SCALES[-1], "linear"))
        start += s * s
    q = tok.model.apply(tok.variables, tokens, method=lambda m, t: m.quantizer.decode_indices(t))
    np.testing.assert_allclose(total, np.asarray(q), atol=1e-5)


def test_pretokenized_records_equal_encode(setup):
    tok, out = setup["tok"], setup["out"]
    source = PretokenizedSource(out, ["tok_rgb", "caption"])
    stored = np.stack([source[i]["tok_rgb"] for i in range(5)])
    assert stored.dtype == np.int32
    np.testing.assert_array_equal(stored, np.asarray(tok.encode(setup["images"])))
    with open(f"{out}/manifest.json") as f:
        spec = json.load(f)["modalities"]["tok_rgb"]
    assert spec["scales"] == list(SCALES) and spec["token_shape"] == [21]
    assert spec["grid"] == [4, 4] and spec["vocab_size"] == K
    with pytest.raises(ValueError, match="multi-scale token pyramids"):
        registry_config_from_manifest(source.manifest, ["tok_rgb", "caption"])


def test_reconstruction_eval_reads_the_pyramid(setup):
    from mmjax.eval.reconstruction_quality import evaluate_tokenizer

    result = evaluate_tokenizer(setup["tok"], ScenesSource("validation", R, 4), batch_size=4)
    assert result["num_images"] == 4 and np.isfinite(result["psnr"])
    assert 0 < result["usage"] <= 1


def test_non_multiscale_tokenizers_are_refused(untrained_tokenizers):
    from mmjax.fourm.nextscale import code_table
    from mmjax.tokenizers import Tokenizer

    fsq = {"type": "fsq", "levels": [5, 4]}
    tok = Tokenizer.load(untrained_tokenizers(("rgb",), MODEL, fsq, R)["rgb"])
    assert tok.scales is None
    with pytest.raises(ValueError, match="quantizer msrvq"):
        code_table(tok)


def test_trainer_exports_a_bundle_that_generates_decodable_images(setup, tmp_path):
    """A short run of the next-scale trainer on the records: its bundle holds the tokenizer's
    code table and generates pyramids that decode through the tokenizer bundle."""
    from mmjax.configs import load
    from mmjax.fourm.nextscale import (
        CODES,
        code_table,
        generate,
        load_nextscale,
        pad_conditions,
    )
    from mmjax.tokenizers import Tokenizer
    from mmjax.train.nextscale_trainer import NextScaleTrainer

    data = setup["out"]
    config = load("nextscale", "quick")
    config.data.path, config.data.batch_size = data, 4
    # the metadata sequence (12 tokens) as the condition: a short prompt, a fast test
    config.data.condition, config.condition.max_length = "metadata", 16
    config.total_steps, config.log_every = 4, 2
    config.eval.update(every=4, num_examples=5, batch_size=4)
    config.checkpoint.every = 4
    config.model.update(width=32, depth=1, num_heads=2, mlp_dim=64)
    workdir = str(tmp_path / "run")
    final = NextScaleTrainer(config, workdir, devices=jax.devices()[:2]).run()
    assert np.isfinite(final["eval/loss"]) and 0 <= final["eval/acc/scale_4"] <= 1
    assert final["eval/uniform_loss"] == pytest.approx(np.log(K))

    model, variables, meta = load_nextscale(workdir)
    tok = Tokenizer.load(meta["tokenizer"])
    assert model.scales == tok.scales and model.cond_length == config.condition.max_length
    np.testing.assert_array_equal(np.asarray(variables[CODES]["table"]), code_table(tok))
    cond, mask = pad_conditions([[5, 6, 7], [8]], model.cond_length)
    tokens = generate(model, variables, cond, mask, jax.random.key(0), guidance=2.0, top_k=8)
    assert tokens.shape == (2, 21) and int(tokens.min()) >= 0 and int(tokens.max()) < K
    images = np.asarray(tok.decode(tokens))
    assert images.shape == (2, R, R, 3) and np.isfinite(images).all()
