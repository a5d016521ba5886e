"""`python -m mmjax.eval.nextscale --model DIR [--tokenizer DIR] [--data DIR | --split S]`:
caption -> rgb with a next-scale (VAR) bundle, scored on the scenes by "named colours
present" exactly as the demo's caption -> rgb task (`mmjax.demo.tasks`): for each scene, the
fraction of the colours of its visible objects (the colours its caption names) that
`colour_presence` finds in the generated image, given the scene's own caption and given the
next scene's caption (shift by one: what the generator draws whatever it reads). Beside them:
the mean train image (no caption), the tokenizer's reconstruction of the true image (the
ceiling) and the true image itself; a PNG grid with --out.

The captions are the `caption` records of a pre-tokenized scenes directory (--data; its
records must be whole scenes, not crops) or the scenes' captions of --split tokenized with
the model's text tokenizer, as pre-tokenization does.
"""

import argparse
import os
import time

import jax
import numpy as np

from mmjax.cli import run
from mmjax.data import scenes
from mmjax.data.pretokenized import PretokenizedSource
from mmjax.data.text_vocab import scene_text_tokens
from mmjax.eval import save_image_grid
from mmjax.eval import scenes as metrics
from mmjax.storage import paths

SCORES = (
    "colour_presence",
    "other_scenes_colours",
    "baseline_mean_image",
    "tokenizer_ceiling",
    "truth",
)


def _captions(meta: dict, data: str | None, split: str, num: int, resolution: int):
    """(scene examples, caption token sequences) of the first `num` scenes."""
    from mmjax.text import TextTokenizer

    if data:
        source = PretokenizedSource(data, [meta.get("condition", "caption")])
        manifest = source.manifest
        if manifest.get("source") != "scenes" or manifest.get("augment"):
            raise ValueError(
                f"--data {data}: expected whole scenes (pre-tokenized from --source scenes "
                "without crops), whose truth can be rendered again"
            )
        split, n = manifest.get("split", "validation"), min(num, len(source))
        indices = [int(source.view(i)["example_index"]) for i in range(n)]
        examples = [scenes.generate(i, split, resolution) for i in indices]
        return examples, [source[i][meta.get("condition", "caption")] for i in range(n)]
    text = TextTokenizer.load(meta["text_tokenizer"])
    examples = [scenes.generate(i, split, resolution) for i in range(num)]
    return examples, [scene_text_tokens(text, ex, resolution)["caption"] for ex in examples]


def caption_to_rgb_presence(
    model_dir: str,
    tokenizer_dir: str | None = None,
    *,
    data: str | None = None,
    split: str = "validation",
    num: int = 64,
    batch_size: int = 32,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    guidance: float = 2.0,
    seed: int = 0,
    out_dir: str | None = None,
) -> dict:
    """The named-colours-present scores of the module docstring (fractions in [0, 1]) and
    the generated images' grid path (with `out_dir`)."""
    from mmjax.fourm.nextscale import generate, load_nextscale, pad_conditions
    from mmjax.tokenizers import Tokenizer

    if num < 1 or batch_size < 1:
        raise ValueError(f"num and batch_size must be >= 1, got {num} and {batch_size}")
    model, variables, meta = load_nextscale(model_dir)
    tokenizer = Tokenizer.load(tokenizer_dir or meta["tokenizer"])
    if list(tokenizer.scales or ()) != list(model.scales):
        raise ValueError(
            f"tokenizer {tokenizer_dir or meta['tokenizer']} has scales {tokenizer.scales}; the "
            f"model {model_dir} predicts scales {list(model.scales)}"
        )
    r = tokenizer.resolution
    truth, captions = _captions(meta, data, split, num, r)
    n, key = len(truth), jax.random.key(seed)
    generated, recon = [], []
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        rows = list(captions[start:stop])
        rows += rows[-1:] * (batch_size - len(rows))  # one shape: no recompiles
        cond, mask = pad_conditions(rows, model.cond_length)
        tokens = generate(
            model, variables, cond, mask, jax.random.fold_in(key, start), temperature=temperature,
            top_k=top_k, top_p=top_p, guidance=guidance,
        )  # fmt: skip
        generated.append(np.asarray(tokenizer.decode(tokens))[: stop - start])
        images = [ex["rgb"] for ex in truth[start:stop]]
        images = np.stack(images + images[-1:] * (batch_size - len(images)))
        recon.append(np.asarray(tokenizer.decode(tokenizer.encode(images)))[: stop - start])
    rgb, recon = np.clip(np.concatenate(generated), 0, 1), np.clip(np.concatenate(recon), 0, 1)
    colours = [{c for c, _ in metrics.visible_objects(t)} for t in truth]
    train = [scenes.generate(i, "train", r)["rgb"] for i in range(256)]
    mean_image = metrics.mean_image_baseline(train)

    def presence(images, shift=0):
        fractions = [
            metrics.colour_presence(images[i], colours[(i + shift) % n])["fraction"]
            for i in range(n)
        ]
        return float(np.mean(fractions))

    result = {
        "colour_presence": presence(rgb),
        "other_scenes_colours": presence(rgb, shift=1),
        "baseline_mean_image": presence([mean_image] * n),
        "tokenizer_ceiling": presence(recon),
        "truth": presence([t["rgb"] for t in truth]),
        "num_scenes": n,
        "sampling": dict(temperature=temperature, top_k=top_k, top_p=top_p, guidance=guidance),
    }
    if out_dir:
        rows = [[truth[i]["rgb"], recon[i], rgb[i]] for i in range(min(n, 8))]
        result["grid"] = save_image_grid(
            rows, os.path.join(out_dir, "nextscale_caption_to_rgb.png"), scale=3,
            columns=["rgb truth", "tokenizer", "generated"],
            notes=[f"caption (input): {t['caption']}" for t in truth[: len(rows)]],
        )  # fmt: skip
    return result


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(
        prog="python -m mmjax.eval.nextscale",
        description="Caption -> rgb with a next-scale (VAR) bundle on the scenes: the fraction "
        "of each caption's named colours present in the generated image, for the true caption "
        "and for the next scene's, beside the mean-image baseline, the tokenizer ceiling and "
        "the truth.",
        epilog="JSON keys: colour_presence, other_scenes_colours, baseline_mean_image, "
        "tokenizer_ceiling, truth, num_scenes, sampling, seconds (and grid with --out).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model", required=True, help="next-scale bundle (or trainer workdir)")
    p.add_argument("--tokenizer", default=None, help="None: the bundle the model names")
    p.add_argument("--data", default=None, help="pre-tokenized scenes whose captions to use")
    p.add_argument("--split", default="validation", help="scenes split (without --data)")
    p.add_argument("--num", type=int, default=64, help="scenes scored")
    p.add_argument("--batch-size", type=int, default=32, help="captions per generate call")
    p.add_argument("--temperature", type=float, default=1.0, help="0: greedy")
    p.add_argument("--top-k", type=int, default=0, help="0: no top-k filter")
    p.add_argument("--top-p", type=float, default=1.0, help="1: no nucleus filter")
    p.add_argument("--guidance", type=float, default=2.0, help="classifier-free; 1: none")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--out", default=None, help="directory for the PNG grid")
    p.add_argument("--json", default=None, help="write the result here (local or gs://)")
    args = p.parse_args(argv)
    start = time.perf_counter()
    result = caption_to_rgb_presence(
        args.model, args.tokenizer, data=args.data, split=args.split, num=args.num,
        batch_size=args.batch_size, temperature=args.temperature, top_k=args.top_k,
        top_p=args.top_p, guidance=args.guidance, seed=args.seed, out_dir=args.out,
    )  # fmt: skip
    result["seconds"] = time.perf_counter() - start
    for key in SCORES:
        print(f"  {key:22s} {result[key]:.3f}")
    if args.json:
        paths.write_json(args.json, result, indent=2)
        print(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    run(main, "python -m mmjax.eval.nextscale")
