"""Residual (RVQ) image tokens end to end (slow): the quick RVQ tokenizer
(configs/tokenizer_rgb.py:quantizer=rvq,quick, fewer steps) -> pre-tokenized scenes whose
records and manifest keep the depth axis -> the 4M trainer, which takes the depth from the
manifest, a few steps -> tok_rgb generated from captions as [B, h, w, depth] (joint and
coarse-first MaskGIT) -> images through the bundle's decode."""

import numpy as np
import pytest

from mmjax.data.pretokenized import PretokenizedSource
from tests.scene_tokens import pretokenize_scenes


@pytest.mark.slow
def test_caption_to_rgb_through_residual_tokens_end_to_end(tmp_path):
    import jax

    from mmjax.configs import fourm, load
    from mmjax.fourm import GenerationStep, generate
    from mmjax.fourm.bundle import load_fourm
    from mmjax.tokenizers import Tokenizer
    from mmjax.train.fourm_trainer import train_fourm
    from mmjax.train.tokenizer_trainer import train_tokenizer

    c = load("tokenizer_rgb", "quantizer=rvq,quick")
    c.total_steps, c.eval.every, c.checkpoint.every = 20, 20, 20
    train_tokenizer(c, str(tmp_path / "tok"))
    tok = Tokenizer.load(str(tmp_path / "tok"))
    depth = int(c.quantizer.depth)
    data = pretokenize_scenes(tmp_path / "tok", tmp_path, tok.resolution)
    source = PretokenizedSource(data["validation"])
    entry = source.manifest["modalities"]["tok_rgb"]
    assert entry["depth"] == depth and entry["token_shape"] == [*tok.grid_shape, depth]
    assert source[0]["tok_rgb"].shape == (*tok.grid_shape, depth)

    f = fourm.get_config("quick")
    f.data.path, f.data.val_path = data["train"], data["validation"]
    f.data.batch_size, f.total_steps, f.log_every = 8, 4, 2
    f.masking.input_budget = f.masking.target_budget = 48
    f.eval.every = f.checkpoint.every = 4
    f.eval.num_examples, f.eval.batch_size = 8, 8
    final = train_fourm(f, str(tmp_path / "fourm"))
    assert np.isfinite(final["eval/loss/tok_rgb"])
    model, variables, registry, _ = load_fourm(str(tmp_path / "fourm" / "fourm"))
    spec = registry["tok_rgb"]
    assert spec.depth == depth and spec.num_tokens == tok.grid_shape[0] ** 2 * depth

    caps = [list(map(int, source[i]["caption"])) for i in range(4)]
    for order in ("joint", "coarse_first"):
        step = GenerationStep("tok_rgb", steps=6, depth_order=order)
        out = generate(model, variables, registry, {"caption": caps}, [step], jax.random.key(0))
        t = np.asarray(out["tok_rgb"])
        assert t.shape == (4, *tok.grid_shape, depth)
        assert t.min() >= 0 and t.max() < tok.codebook_size
        images = np.asarray(tok.decode(t))
        assert images.shape == (4, tok.resolution, tok.resolution, 3)
        assert np.isfinite(images).all() and images.min() >= 0 and images.max() <= 1
