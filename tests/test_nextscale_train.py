"""Slow: the whole next-scale chain from the command line: a quick msrvq tokenizer ->
pre-tokenized scenes -> quick next-scale training -> caption -> rgb images scored by
`python -m mmjax.eval.nextscale` (the trainer's short run: tests/test_nextscale_tokens.py)."""

import json
import os

import pytest


@pytest.mark.slow
def test_caption_to_rgb_from_the_command_line(tmp_path):
    from mmjax.eval.nextscale import main as evaluate
    from mmjax.pretokenize.run import main as pretokenize_cli
    from mmjax.train.__main__ import main as train

    tok, data, gen = (str(tmp_path / n) for n in ("tok", "data", "gen"))
    train(["--config=configs/tokenizer_rgb.py:quantizer=msrvq,quick", f"--workdir={tok}",
           "--config.total_steps=20", "--config.eval.usage_images=16"])  # fmt: skip
    pretokenize_cli(["--tokenizers", f"rgb={tok}", "--out", data, "--num-examples", "24",
                     "--batch-size", "8"])  # fmt: skip
    with open(os.path.join(data, "manifest.json")) as f:
        assert json.load(f)["modalities"]["tok_rgb"]["scales"] == [1, 2, 4, 8]
    train(["--config=configs/nextscale.py:quick", f"--workdir={gen}",
           f"--config.data.path={data}", "--config.total_steps=20"])  # fmt: skip
    out = str(tmp_path / "eval")
    result = evaluate(["--model", gen, "--data", data, "--num", "4", "--batch-size", "4",
                       "--out", out, "--json", os.path.join(out, "r.json")])  # fmt: skip
    for key in ("colour_presence", "other_scenes_colours", "tokenizer_ceiling", "truth"):
        assert 0.0 <= result[key] <= 1.0
    assert result["truth"] > 0.9 and result["num_scenes"] == 4
    assert os.path.exists(result["grid"]) and os.path.exists(os.path.join(out, "r.json"))
