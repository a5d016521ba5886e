"""1D image tokens from pre-tokenization to generated images: a flexible-length 1D Tokenizer
bundle writes its K tokens per image as a 1D sequence (records equal an independent
`encode`, the manifest says image_tokens_1d with K), the 4M registry and masking take it from
the manifest, and (slow) a quick 1D tokenizer -> pre-tokenized scenes -> a tiny 4M trained a
few steps -> rgb generated from captions through 1D tokens (MaskGIT and AR) -> images."""

import numpy as np
import pytest

from mmjax.data import ScenesSource, scenes
from mmjax.data.pretokenized import PretokenizedSource
from mmjax.data.text_vocab import scenes_text_tokenizer
from mmjax.fourm import FourMMasking, build_registry
from mmjax.fourm.modalities import MASK_INPUT
from mmjax.pretokenize import pretokenize, registry_config_from_manifest
from tests.scene_tokens import pretokenize_scenes

R, K = 32, 8
FLEX = dict(
    type="flex1d", image_size=R, patch_size=8, width=32, depth=1, heads=2, mlp_dim=64, z_dim=8,
    num_registers=K, causal_registers=True, keep="pow2",
)  # fmt: skip
FSQ = {"type": "fsq", "levels": [8, 5, 5, 5]}
CONV = {"type": "conv", "size": "tiny", "channels": 8, "channel_mult": [1, 1, 2, 2]}


@pytest.fixture(scope="module")
def data(tmp_path_factory, untrained_tokenizers):
    """6 scenes pre-tokenized (batches of 4: the last one padded) with an untrained 1D rgb
    tokenizer and a 2D depth one."""
    root = tmp_path_factory.mktemp("pretok_1d")
    dirs = untrained_tokenizers(("rgb",), FLEX, FSQ, R)
    dirs |= untrained_tokenizers(("depth",), CONV, {"type": "fsq", "levels": [4, 4, 4]}, R)
    out = str(root / "out")
    pretokenize(
        ScenesSource("train", R, 6), dirs, out, text_tokenizer=scenes_text_tokenizer(100),
        resolution=R, batch_size=4, info={"source": "scenes", "split": "train"},
    )  # fmt: skip
    return dirs, out


def test_1d_tokens_are_stored_as_a_sequence_equal_to_encode(data):
    from mmjax.tokenizers import Tokenizer

    dirs, out = data
    tok = Tokenizer.load(dirs["rgb"])
    source = PretokenizedSource(out)
    m = source.manifest["modalities"]
    assert m["tok_rgb"]["kind"] == "image_tokens_1d" and m["tok_rgb"]["num_tokens"] == K
    assert m["tok_rgb"]["grid"] == [K] and m["tok_rgb"]["token_shape"] == [K]
    assert m["tok_rgb"]["vocab_size"] == tok.codebook_size == 1000
    assert m["tok_depth"]["kind"] == "image_tokens" and m["tok_depth"]["grid"] == [4, 4]
    images = np.stack([scenes.generate(i, "train", R)["rgb"] for i in range(6)])
    want = np.asarray(tok.encode(images))
    got = np.stack([source[i]["tok_rgb"] for i in range(6)])
    assert got.shape == (6, K) and got.dtype == np.int32
    np.testing.assert_array_equal(got, want)
    # the coarse prefix of a shorter encode is the stored prefix (causal registers)
    np.testing.assert_array_equal(np.asarray(tok.encode(images, num_tokens=3)), want[:, :3])


def test_registry_and_masking_from_the_manifest(data):
    from mmjax.text import TextTokenizer

    _, out = data
    source = PretokenizedSource(out)
    config = registry_config_from_manifest(source.manifest, ["tok_rgb", "tok_depth", "rgb"])
    assert config["tok_rgb"] == dict(
        kind="image_tokens_1d", vocab_size=1000, grid=(K,), tokenizer=config["tok_rgb"]["tokenizer"]
    )
    # pixel patches line up with the 2D grid, not with the 1D sequence
    assert config["rgb"]["patch_size"] == R // 4
    registry = build_registry(config)
    text = TextTokenizer.load(source.manifest["text_tokenizer"])
    masking = FourMMasking(registry, 12, 12, "all_to_all", text.sentinel_ids, text.eos_id,
                           ar_rate_1d=1.0)  # fmt: skip
    example = source[0]
    seen = 0
    for seed in range(20):
        out_ = masking(example, np.random.default_rng(seed))
        sel = out_["dec_mask"] & (out_["dec_modality"] == registry.index("tok_rgb"))
        pos = out_["dec_positions"][sel]
        before = np.concatenate([[MASK_INPUT], example["tok_rgb"]])
        np.testing.assert_array_equal(out_["dec_input_tokens"][sel], before[pos])
        np.testing.assert_array_equal(out_["dec_target_tokens"][sel], example["tok_rgb"][pos])
        seen += sel.sum()
    assert seen > 0


@pytest.mark.slow
def test_caption_to_rgb_through_1d_tokens_end_to_end(tmp_path):
    """A quick 1D tokenizer (configs/tokenizer_1d.py:quick, fewer steps) -> 24 pre-tokenized
    scenes -> a tiny 4M trained 4 steps -> tok_rgb from captions by MaskGIT and by AR with
    the KV cache (equal to AR without it) -> images through the bundle's decode."""
    import jax

    from mmjax.configs import fourm, load
    from mmjax.fourm import GenerationStep, generate
    from mmjax.fourm.bundle import load_fourm
    from mmjax.tokenizers import Tokenizer
    from mmjax.train.fourm_trainer import train_fourm
    from mmjax.train.tokenizer_trainer import train_tokenizer

    c = load("tokenizer_1d", "quick")
    c.total_steps, c.eval.every, c.checkpoint.every = 20, 20, 20
    train_tokenizer(c, str(tmp_path / "tok"))
    tok = Tokenizer.load(str(tmp_path / "tok"))
    k = tok.max_tokens
    data = pretokenize_scenes(tmp_path / "tok", tmp_path, tok.resolution)
    f = fourm.get_config("quick")
    f.data.path, f.data.val_path = data["train"], data["validation"]
    f.data.batch_size, f.total_steps, f.log_every = 8, 4, 2
    f.masking.input_budget = f.masking.target_budget = 32
    f.eval.every = f.checkpoint.every = 4
    f.eval.num_examples, f.eval.batch_size = 8, 8
    final = train_fourm(f, str(tmp_path / "fourm"))
    assert np.isfinite(final["eval/loss/tok_rgb"])
    model, variables, registry, _ = load_fourm(str(tmp_path / "fourm" / "fourm"))
    assert registry["tok_rgb"].kind == "image_tokens_1d" and registry["tok_rgb"].num_tokens == k
    source = PretokenizedSource(data["validation"])
    caps = [list(map(int, source[i]["caption"])) for i in range(4)]
    key = jax.random.key(0)
    outs = {
        scheme: np.asarray(generate(model, variables, registry, {"caption": caps},
                                    [GenerationStep("tok_rgb", scheme=scheme, steps=4)],
                                    key)["tok_rgb"])
        for scheme in ("maskgit", "ar", "ar_nocache")
    }  # fmt: skip
    np.testing.assert_array_equal(outs["ar"], outs["ar_nocache"])
    for scheme in ("maskgit", "ar"):
        t = outs[scheme]
        assert t.shape == (4, k) and t.min() >= 0 and t.max() < tok.codebook_size
        images = np.asarray(tok.decode(t))
        assert images.shape == (4, tok.resolution, tok.resolution, 3)
        assert np.isfinite(images).all()
