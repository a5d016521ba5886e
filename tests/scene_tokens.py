"""Pre-tokenized scenes for the end-to-end tests: a trained tokenizer bundle's rgb tokens and
the captions of a few train and validation scenes, the validation split on the train split's
text tokenizer."""

from pathlib import Path

from mmjax.data import ScenesSource
from mmjax.pretokenize import pretokenize


def pretokenize_scenes(
    tok_dir, out_root, resolution: int, counts=(("train", 24), ("validation", 8))
):
    """{split: folder} of `counts` scenes per split pre-tokenized under `out_root`."""
    data = {}
    for split, n in counts:
        data[split] = str(Path(out_root) / split)
        pretokenize(
            ScenesSource(split, resolution, n), {"rgb": str(tok_dir)},
            data[split], text_tokenizer=None if split == "train" else
            str(Path(out_root) / "train" / "text_tokenizer.json"), text_examples=100,
            resolution=resolution, batch_size=8, info={"source": "scenes", "split": split},
        )  # fmt: skip
    return data
