"""`python -m mmjax.pretokenize --tokenizers rgb=DIR,depth=DIR,... --out DIR
[--source scenes|image_folder|array_record|tfds] [source fields] [--num-examples N]
[--resolution 64] [--crops K] [--batch-size B] [--text-tokenizer PATH] [--shards S]
[--overwrite]`

Sources: the embedded scenes (`--split`), a folder of images (`--path DIR_OR_GLOB`), mmjax
ArrayRecord files (`--paths`), a TFDS dataset (`--tfds-name NAME --split train
--image-key image [--keys depth=FEATURE,...] [--data-dir DIR]`); `--part train|validation`
takes one side of the hold-out split training used (`--validation-fraction`). Each tokenizer's
modality must be one the source provides. Images of any size (image folders, TFDS) are
resized and centre-cropped to --resolution (`mmjax.data.resize.center_crop_resize`), or
with --crops K > 1 cut into K random resized crops.

4M trains on tokens stored once, so the image tokenizers run here, not in its step. A Grain
pass (no shuffle, one epoch, B examples and all their views a batch) feeds each bundle's
jitted `encode` (the last batch padded: no recompiles); each view becomes one record in every
modality: tok_<m>, rgb pixels, caption / boxes / metadata (`mmjax.data.pretokenized`).
Without --text-tokenizer one is trained on the first --text-examples train captions; its
learned ids differ from run to run, so OUT keeps its copy: pre-tokenize other splits with
--text-tokenizer TRAIN_OUT/text_tokenizer.json.

--crops K > 1 (or --augment) renders the scenes at --render-resolution (default
resolution * 1.25, rounded up to a multiple of 8) and stores K random crops to --resolution,
each flipped with probability 0.5, drawn from `view_params(seed, example)`: every modality
of a view shares its crop, boxes are recomputed and captions swap left/right
(`mmjax.data.augment.crop_and_flip`). Records are example-major, view-minor.

Examples without captions, boxes and metadata (image folders, most TFDS datasets) give only
image tokens, rgb pixels and views; their output still carries a text tokenizer (special
tokens only, unless --text-tokenizer names one): 4M's masking reads its pad, eos and
sentinel ids.

Everything is written to OUT.partial and renamed to OUT after the manifest, so OUT is
either absent, the previous output, or complete. A non-empty OUT is replaced only with
--overwrite, and only if it is itself a pre-tokenization output.
"""

import argparse
import math
import os
import time

import numpy as np
from tqdm import tqdm

from mmjax.data.pipeline import build_dataset, make_iterator
from mmjax.data.pretokenized import VIEWS
from mmjax.data.resize import ANY_SIZE_SOURCES
from mmjax.data.scenes.constants import IMAGE_MODALITIES
from mmjax.data.sources import ScenesSource, build_source
from mmjax.data.text_vocab import (
    check_scenes_text_tokenizer,
    scene_text_tokens,
    scenes_text_tokenizer,
)
from mmjax.data.views import ViewsSource
from mmjax.pretokenize.output import (
    TEXT_MODALITIES,
    ShardWriters,
    build_manifest,
    commit_out,
    prepare_out,
)
from mmjax.storage import paths
from mmjax.tokenizers.bundle import Tokenizer


def _load_tokenizers(specs: dict, resolution: int) -> tuple[dict, dict]:
    """{modality: Tokenizer}, {modality: absolute bundle dir or None}, checked."""
    toks, dirs = {}, {}
    for modality, spec in specs.items():
        if modality not in IMAGE_MODALITIES:
            raise ValueError(
                f"--tokenizers: unknown modality {modality!r}; expected one of {IMAGE_MODALITIES}"
            )
        is_path = isinstance(spec, str | os.PathLike)
        tok = Tokenizer.load(os.fspath(spec)) if is_path else spec
        dirs[modality] = paths.absolute(spec) if is_path else None
        where = f"tokenizer for {modality!r} ({dirs[modality] or 'in memory'})"
        if tok.modality != modality:
            raise ValueError(f"{where} is a {tok.modality!r} tokenizer, not a {modality!r} one")
        if tok.resolution != resolution:
            raise ValueError(
                f"{where} encodes {tok.resolution}x{tok.resolution} images, but --resolution is "
                f"{resolution}; pre-tokenize at the tokenizer's resolution"
            )
        toks[modality] = tok
    if not toks:
        raise ValueError("--tokenizers: give at least one image tokenizer, e.g. rgb=DIR")
    return toks, dirs


SCENE_TEXT_FIELDS = ("caption", "boxes", "box_class", "box_color", "metadata")


def _check_provided(toks: dict, example: dict, source) -> None:
    """Every tokenizer's modality must be an image the source's examples hold."""
    have = [m for m in IMAGE_MODALITIES if m in example]
    for m in toks:
        if m not in example:
            raise ValueError(
                f"--tokenizers asks for {m!r}, but the source {source!r} provides no {m!r} "
                f"images (it provides {have or 'no image modality'})"
            )


def _encode(toks: dict, batch: dict, full: int) -> dict:
    """{modality: int32 tokens [n, h, w]}; the batch is padded to `full` rows (static shape,
    no recompiles on the last batch) and every encode is dispatched before any is awaited."""
    n = len(batch["view"])
    pending = {}
    for m, tok in toks.items():
        x = batch[m]
        pending[m] = tok.encode(np.concatenate([x, np.repeat(x[-1:], full - n, 0)]))
    return {m: np.asarray(t)[:n].astype(np.int32) for m, t in pending.items()}


def _records(batch: dict, tokens: dict, j: int, text_tok, resolution: int) -> dict:
    """{modality: record} of view j of the batch (text records when `text_tok`)."""
    records = {f"tok_{m}": {"tokens": t[j]} for m, t in tokens.items()}
    if "rgb" in batch:
        rgb = np.round(np.clip(batch["rgb"][j], 0.0, 1.0) * 255.0).astype(np.uint8)
        records["rgb"] = {"tokens": rgb}
    if text_tok is not None:
        text = scene_text_tokens(text_tok, {k: v[j] for k, v in batch.items()}, resolution)
        records.update({k: {"tokens": v} for k, v in text.items()})
    records[VIEWS] = {k: batch[k][j] for k in ("example_index", "view", "crop", "box")}
    return records


def _check_num_examples(num_examples: int | None) -> None:
    if num_examples is not None and num_examples < 1:
        raise ValueError(
            f"--num-examples must be >= 1 (or left out for the whole source): with "
            f"{num_examples} there are no examples to write"
        )


def pretokenize(
    source,
    tokenizers: dict,
    out_dir: str,
    *,
    text_tokenizer=None,
    resolution: int,
    crops: int = 1,
    augment: bool = False,
    seed: int = 0,
    batch_size: int = 64,
    num_shards: int = 1,
    num_examples: int | None = None,
    overwrite: bool = False,
    workers: int = 0,
    info: dict | None = None,
    text_examples: int = 2000,
    text_vocab_size: int = 1000,
    resize: bool = False,
) -> dict:
    """Pre-tokenizes `source` into `out_dir`; returns the manifest.

    tokenizers: {modality: bundle dir or Tokenizer}, each a modality the examples hold;
    text_tokenizer: a TextTokenizer, a path to one (copied to OUT/text_tokenizer.json), or
    None: for scene-like examples one trained on the captions of the first `text_examples`
    train scenes, otherwise one of special tokens only; batch_size counts examples (each
    brings `crops` views); num_examples: the first N of `source` (default all); resize:
    images of any size, resized and centre-cropped (random resized crops when augmented) to
    `resolution`; info: extra manifest fields (source, split, render_resolution, ...).
    """
    from mmjax.text import TextTokenizer, train_tokenizer

    out, augment = paths.absolute(out_dir), augment or crops > 1
    _check_num_examples(num_examples)
    toks, dirs = _load_tokenizers(tokenizers, resolution)
    views = ViewsSource(source, resolution, crops, augment, seed, limit=num_examples, resize=resize)
    if len(views) == 0:
        raise ValueError(
            f"no examples to write: the source {source!r} holds none (an empty folder, split "
            "or --part?)"
        )
    first = source[0]
    _check_provided(toks, first, source)
    scene_text = all(k in first for k in SCENE_TEXT_FIELDS)
    num = len(views) * crops
    if not 1 <= num_shards <= num:
        raise ValueError(f"--shards must lie in [1, {num}] (the record count), got {num_shards}")
    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    text_origin = None
    if text_tokenizer is None:
        text_tokenizer = (
            scenes_text_tokenizer(text_examples, text_vocab_size)
            if scene_text
            else train_tokenizer([], vocab_size=text_vocab_size)
        )
    elif not isinstance(text_tokenizer, TextTokenizer):
        text_origin = paths.absolute(text_tokenizer)
        text_tokenizer = TextTokenizer.load(text_origin)
    if scene_text:
        check_scenes_text_tokenizer(text_tokenizer, f"text tokenizer {text_origin or ''}".strip())
    text_modalities = TEXT_MODALITIES if scene_text else ()
    pixels = ["rgb"] if "rgb" in first else []
    tmp = prepare_out(out, overwrite)
    start = time.perf_counter()
    names = [f"tok_{m}" for m in toks] + pixels + [*text_modalities, VIEWS]
    writers = ShardWriters(tmp, names, num, num_shards)
    lengths = dict.fromkeys(text_modalities, 0)
    try:
        ds = build_dataset(
            views, batch_size=batch_size, shuffle=False, num_epochs=1, drop_remainder=False
        )
        for batch in tqdm(make_iterator(ds, worker_count=workers), total=len(ds), desc="batches"):
            batch = {k: v.reshape(-1, *v.shape[2:]) for k, v in batch.items()}  # [b*K, ...]
            tokens = _encode(toks, batch, batch_size * crops)
            for j in range(len(batch["view"])):
                text_tok = text_tokenizer if scene_text else None
                records = _records(batch, tokens, j, text_tok, resolution)
                for k in text_modalities:
                    lengths[k] = max(lengths[k], len(records[k]["tokens"]))
                writers.write(records)
        writers.close()
        if writers.count != num:
            raise RuntimeError(f"pre-tokenization wrote {writers.count} records, expected {num}")
        text_tokenizer.save(paths.join(tmp, "text_tokenizer.json"))
        shapes = {m: list(t.shape[1:]) for m, t in tokens.items()}
        skipped = getattr(source, "skipped", None)
        if skipped is not None and workers == 0:  # workers count in their own processes
            info = dict(info or {}, skipped_files=sorted(skipped))
            if skipped:
                print(f"skipped {len(skipped)} undecodable image file(s): {sorted(skipped)}")
        manifest = build_manifest(
            toks, dirs, text_tokenizer, shapes, lengths, num, out,
            **(info or {}), resolution=resolution, crops=crops, augment=augment, seed=seed,
            num_source_examples=len(views), num_shards=num_shards,
            text_tokenizer_origin=text_origin, resized=resize, pixels=bool(pixels),
        )  # fmt: skip
        manifest.update(seconds=round(time.perf_counter() - start, 3), complete=True)
        commit_out(tmp, out, manifest)
    except BaseException:
        writers.close(keep=False)
        paths.rmtree(tmp)
        raise
    return manifest


def _data_config(args) -> dict:
    """The data config (`mmjax.data.sources.build_source`) the CLI's source flags name."""
    data = dict(source=args.source, validation_fraction=args.validation_fraction)
    if args.source == "image_folder":
        data.update(path=args.path, skip_bad_files=args.skip_bad_files)
    elif args.source == "array_record":
        data.update(paths=list(args.paths or []))
    else:
        keys = _parse_pairs(args.keys, "--keys", "MODALITY=FEATURE") if args.keys else {}
        data.update(
            tfds_name=args.tfds_name, split=args.split, image_key=args.image_key,
            keys=keys, data_dir=args.data_dir,
        )  # fmt: skip
    return data


def _parse_pairs(value: str, flag: str, form: str) -> dict:
    pairs = {}
    for item in filter(None, value.split(",")):
        key, sep, val = item.partition("=")
        if not sep or not val or key.strip() in pairs:
            raise ValueError(f"{flag}: expected {form} pairs, got {item!r}")
        pairs[key.strip()] = val.strip()
    return pairs


def _parse_tokenizers(value: str) -> dict:
    return _parse_pairs(value, "--tokenizers", "MODALITY=DIR")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(
        prog="python -m mmjax.pretokenize",
        description="Pre-tokenizes a dataset for 4M training: each image tokenizer bundle "
        "encodes its modality once, and every view of every example becomes one record (tokens, "
        "rgb pixels, caption, boxes, metadata) in ArrayRecord shards under OUT, with a manifest. "
        "OUT is either complete or left as it was.",
        epilog="With --crops K > 1 (or --augment) the scenes are rendered at "
        "--render-resolution and each view is a random crop to --resolution, flipped with "
        "probability 0.5; images of any size (image_folder, tfds) are resized and "
        "centre-cropped to --resolution, or cut into K random resized crops. A text "
        "tokenizer trained here is copied to OUT/text_tokenizer.json; pass it as --text-tokenizer "
        "when pre-tokenizing other splits.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--tokenizers",
        required=True,
        default=argparse.SUPPRESS,
        help="tokenizer bundle per modality, rgb=DIR,depth=DIR,... (required)",
    )
    p.add_argument(
        "--out", required=True, default=argparse.SUPPRESS, help="output directory (required)"
    )
    p.add_argument(
        "--source",
        default="scenes",
        choices=("scenes", "image_folder", "array_record", "tfds"),
        help="the embedded scenes, a folder of images, mmjax ArrayRecord files, a TFDS dataset",
    )
    p.add_argument(
        "--path",
        default="",
        help="image_folder: a directory or a glob, gs:// ok (default: %(default)r)",
    )
    p.add_argument("--paths", nargs="*", help="array_record: shard files or glob patterns")
    p.add_argument("--split", default="train", help="scenes: the split rendered; tfds: split")
    p.add_argument(
        "--tfds-name",
        default="",
        help="tfds: the dataset name (default: %(default)r)",
    )
    p.add_argument("--image-key", default="image", help="tfds: the image feature read as rgb")
    p.add_argument(
        "--keys",
        default="",
        help="tfds: more modalities, MODALITY=FEATURE,... (default: %(default)r)",
    )
    p.add_argument(
        "--data-dir", default="", help="tfds: data_dir (default: %(default)r: the TFDS default)"
    )
    p.add_argument(
        "--part",
        default="all",
        choices=("all", "train", "validation"),
        help="image_folder, array_record, tfds: one side of the hash hold-out split",
    )
    p.add_argument(
        "--validation-fraction",
        type=float,
        default=0.01,
        help="the held-out share --part train/validation split by (as in data configs)",
    )
    p.add_argument(
        "--skip-bad-files", action="store_true", help="image_folder: skip undecodable files"
    )
    p.add_argument(
        "--num-examples",
        type=int,
        default=None,
        help="the first N examples; None: all (scenes: 10000)",
    )
    p.add_argument("--resolution", type=int, default=64, help="the tokenizers' resolution")
    p.add_argument("--crops", type=int, default=1, help="random crop+flip views per example")
    p.add_argument("--augment", action="store_true", help="random crop+flip even with 1 crop")
    p.add_argument(
        "--render-resolution",
        type=int,
        default=None,
        help="scenes: render size; None: resolution (x1.25, rounded up to 8, with crops)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the crops and flips")
    p.add_argument("--batch-size", type=int, default=64, help="examples per batch")
    p.add_argument(
        "--text-tokenizer", default=None, help="TextTokenizer JSON; None: train one here"
    )
    p.add_argument(
        "--text-examples", type=int, default=2000, help="train captions a new text tokenizer sees"
    )
    p.add_argument(
        "--text-vocab-size", type=int, default=1000, help="vocabulary of a new text tokenizer"
    )
    p.add_argument("--shards", type=int, default=1, help="ArrayRecord files to write")
    p.add_argument("--workers", type=int, default=0, help="Grain worker processes")
    p.add_argument(
        "--overwrite", action="store_true", help="replace OUT if it is a pre-tokenization output"
    )
    args = p.parse_args(argv)
    augment = args.augment or args.crops > 1
    try:
        _check_num_examples(args.num_examples)
        if args.source == "scenes":
            render = args.render_resolution or args.resolution
            if augment and args.render_resolution is None:
                render = math.ceil(args.resolution * 1.25 / 8) * 8
            source = ScenesSource(args.split, render, args.num_examples or 10000)
            info = dict(source="scenes", split=args.split, render_resolution=render)
        else:
            data = _data_config(args)
            source = build_source(data, args.part)
            info = {k: v for k, v in data.items() if v not in ("", None, {}, ())}
            info.update(part=args.part)
            if args.source == "array_record":
                info["paths"] = source.paths if hasattr(source, "paths") else data["paths"]
        manifest = pretokenize(
            source, _parse_tokenizers(args.tokenizers), args.out,
            text_tokenizer=args.text_tokenizer, text_examples=args.text_examples,
            text_vocab_size=args.text_vocab_size,
            resolution=args.resolution, crops=args.crops, augment=augment, seed=args.seed,
            batch_size=args.batch_size, num_shards=args.shards, num_examples=args.num_examples,
            overwrite=args.overwrite, workers=args.workers, info=info,
            resize=args.source in ANY_SIZE_SOURCES,
        )  # fmt: skip
    except (ValueError, FileExistsError, FileNotFoundError, KeyError) as e:
        p.error(str(e))
    mods = manifest["modalities"]
    print(
        f"pre-tokenized {manifest['num_source_examples']} examples x {args.crops} view(s) = "
        f"{manifest['num_examples']} records in {manifest['seconds']:.1f}s "
        f"({manifest['num_examples'] / max(manifest['seconds'], 1e-9):.0f}/s) -> {args.out}"
    )
    for name, m in mods.items():
        size = m.get("grid") or m.get("shape") or f"<= {m['max_length']} tokens"
        print(f"  {name:10s} {m['kind']:13s} vocab {m.get('vocab_size', '-')!s:6s} {size}")
    return manifest


if __name__ == "__main__":
    main()
