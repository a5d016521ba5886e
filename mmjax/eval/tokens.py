"""`python -m mmjax.eval.tokens DIR [--modalities tok_rgb,...] [--num N] [--out OUT]`
`python -m mmjax.eval.tokens --tokenizer TOK_DIR [--tokenizer ...] --source scenes [--num N]`

Visual-token statistics of each image-token modality, read from a pre-tokenized dataset
(the output of `python -m mmjax.pretokenize`) or encoded here by Tokenizer bundles from a
data source: the unigram distribution, entropy and perplexity overall and per grid position,
codebook usage, the Zipf exponent of the rank-frequency curve (maximum likelihood) and the
mutual information between horizontal and vertical neighbours (plug-in, with a null from
pairs across images). Writes OUT/token_stats.json and OUT/rank_frequency_<modality>.png
and prints a table; the estimators: `mmjax.eval.token_stats`.
"""

import argparse
import io
import json
import os

import numpy as np
from tqdm import tqdm

from mmjax.cli import run
from mmjax.data.pretokenized import PretokenizedSource, load_manifest
from mmjax.eval.token_plot import save_rank_frequency_png
from mmjax.eval.token_stats import MI_ESTIMATOR, ZIPF_ESTIMATOR, token_statistics
from mmjax.storage import paths

FORMAT = "mmjax-token-stats-v1"
JSON_NAME = "token_stats.json"
# Larger codebooks (LFQ's 2^18 codes) keep their histogram in a .npy beside the JSON.
MAX_JSON_COUNTS = 2**16


def pretokenized_tokens(data_dir: str, modalities=None, num: int | None = None) -> dict:
    """{name: (int tokens [N, *grid], codebook size)} of the image-token modalities of a
    pre-tokenized dataset (default: all of them), its first `num` records."""
    manifest = load_manifest(data_dir)
    available = manifest["modalities"]
    kinds = ("image_tokens", "image_tokens_1d")  # a 1D tokenizer's tokens: grid [K]
    images = [n for n, m in available.items() if m.get("kind") in kinds]
    names = images if modalities is None else list(modalities)
    if not names:
        raise ValueError(f"pre-tokenized data {data_dir} holds no image-token modality")
    for n in names:
        if n not in available:
            raise KeyError(
                f"--modalities: {n!r} is not in the manifest of {data_dir}; its image-token "
                f"modalities are {images}"
            )
        if available[n].get("kind") not in kinds:
            raise ValueError(
                f"--modalities: {n!r} in {data_dir} holds {available[n].get('kind')!r} data, "
                f"not image tokens; image-token modalities: {images}"
            )
    source = PretokenizedSource(data_dir, names)
    count = _count(len(source), num)
    rows = [source[i] for i in tqdm(range(count), desc="records", leave=False)]
    return {n: (np.stack([r[n] for r in rows]), int(available[n]["vocab_size"])) for n in names}


def _count(available: int, num: int | None) -> int:
    if num is None:
        return available
    if num < 1:
        raise ValueError(f"--num must be >= 1, got {num}")
    return min(num, available)


def encoded_tokens(tokenizers, data: dict, num: int | None = None, batch_size: int = 64) -> dict:
    """{tok_<modality>: (tokens [N, *grid], codebook size)}: each Tokenizer (or bundle dir)
    encodes its modality of the first `num` examples of the source that `data` describes
    (a `mmjax.data.build_source` config; its `resolution` is set to the tokenizers'). The
    tokenizers of one resolution share one pass over the source."""
    from mmjax.tokenizers.bundle import Tokenizer

    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    by_resolution = {}
    for spec in tokenizers:
        tok = Tokenizer.load(os.fspath(spec)) if isinstance(spec, str | os.PathLike) else spec
        if any(t.modality == tok.modality for ts in by_resolution.values() for t in ts):
            raise ValueError(f"--tokenizer: two tokenizers for the {tok.modality!r} modality")
        by_resolution.setdefault(tok.resolution, []).append(tok)
    out = {}
    for resolution, toks in by_resolution.items():
        out.update(_encode_source(toks, dict(data, resolution=resolution), num, batch_size))
    return {f"tok_{t.modality}": out[f"tok_{t.modality}"] for ts in by_resolution.values()
            for t in ts}  # fmt: skip


def _encode_source(toks, config: dict, num, batch_size: int) -> dict:
    from mmjax.data.sources import build_source

    if num is not None and config.get("source") == "scenes":
        config["num_examples"] = _count(num, num)  # checks num >= 1
    source = build_source(config)
    count = _count(len(source), num)
    chunks = {t.modality: [] for t in toks}
    for start in tqdm(range(0, count, batch_size), desc="batches", leave=False):
        examples = [source[i] for i in range(start, min(start + batch_size, count))]
        for tok in toks:
            batch = []
            for i, example in enumerate(examples, start):
                if tok.modality not in example:
                    raise KeyError(
                        f"{config.get('source')!r} example {i} has no {tok.modality!r} for the "
                        f"{tok.modality} tokenizer; it has {sorted(example)}"
                    )
                batch.append(np.asarray(example[tok.modality]))
            n = len(batch)
            batch += [batch[-1]] * (batch_size - n)  # one static shape: no recompile
            chunks[tok.modality].append(np.asarray(tok.encode(np.stack(batch)))[:n])
    return {
        f"tok_{t.modality}": (np.concatenate(chunks[t.modality]), int(t.codebook_size))
        for t in toks
    }


def compute(tokens: dict, seed: int = 0) -> dict:
    """{name: token_statistics} of {name: (tokens, codebook size)}."""
    return {n: token_statistics(t, k, seed) for n, (t, k) in tokens.items()}


def write_outputs(stats: dict, out_dir: str, info: dict) -> dict:
    """Writes OUT/token_stats.json and a rank-frequency PNG per modality; returns the JSON."""
    if not paths.is_remote(out_dir):
        paths.makedirs(out_dir)
    record = {
        "format": FORMAT,
        **info,
        "estimators": {
            "entropy": "plug-in (empirical distribution), bits; perplexity = 2^entropy",
            "zipf_exponent": ZIPF_ESTIMATOR,
            "zipf_ks_distance": "max |empirical - fitted| rank CDF",
            "mutual_information": MI_ESTIMATOR,
        },
        "modalities": {},
    }
    for name, s in stats.items():
        entry = dict(s)
        counts = entry.pop("unigram_counts")
        if counts.size <= MAX_JSON_COUNTS:
            entry["unigram_counts"] = counts.tolist()
        else:
            npy = f"unigram_counts_{name}.npy"
            buf = io.BytesIO()
            np.save(buf, counts)
            paths.write_bytes(paths.join(out_dir, npy), buf.getvalue())
            entry["unigram_counts_file"] = npy
        png = f"rank_frequency_{name}.png"
        title = f"{name}: rank-frequency of {s['num_images']:,} token grids"
        save_rank_frequency_png(counts, s["zipf_exponent"], title, paths.join(out_dir, png))
        entry["rank_frequency_png"] = png
        record["modalities"][name] = entry
    paths.write_json(paths.join(out_dir, JSON_NAME), record, indent=1)
    return record


COLUMNS = (
    ("modality", None, "{}"),
    ("images", "num_images", "{:,}"),
    ("codes", "codebook_size", "{:,}"),
    ("used", "distinct_codes", "{:,}"),
    ("usage", "codebook_usage", "{:.3f}"),
    ("H bits", "entropy_bits", "{:.3f}"),
    ("max H", "max_entropy_bits", "{:.2f}"),
    ("PPL", "perplexity", "{:.1f}"),
    ("H/pos", "mean_position_entropy_bits", "{:.3f}"),
    ("Zipf s", "zipf_exponent", "{:.3f}"),
    ("MI h", "mutual_information_horizontal_bits", "{:.3f}"),
    ("null h", "mutual_information_horizontal_null_bits", "{:.3f}"),
    ("MI v", "mutual_information_vertical_bits", "{:.3f}"),
    ("null v", "mutual_information_vertical_null_bits", "{:.3f}"),
)


def format_table(stats: dict) -> str:
    """A plain-text table, one row per modality."""
    rows = [[c[0] for c in COLUMNS]]
    for name, s in stats.items():
        row = [name]
        for _, key, fmt in COLUMNS[1:]:
            row.append("-" if s.get(key) is None else fmt.format(s[key]))
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in
                       enumerate(zip(r, widths, strict=True))) for r in rows]  # fmt: skip
    return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:]])


def _value(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return text


def _data_config(args) -> dict:
    """The build_source config: --source, --split, --path (as `path` and `paths`) and the
    --data KEY=VALUE fields (JSON values, else strings)."""
    config = {"source": args.source, "split": args.split}
    if args.path:
        config.update(path=args.path, paths=[args.path])
    for item in args.data or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--data: expected KEY=VALUE, got {item!r}")
        config[key.strip()] = _value(value)
    return config


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(
        prog="python -m mmjax.eval.tokens",
        description="Visual-token statistics per image-token modality: unigram distribution, "
        "entropy and perplexity (overall and per grid position), codebook usage, Zipf exponent "
        "of the rank-frequency curve, neighbour mutual information. Reads a pre-tokenized "
        "dataset DIR, or encodes a data source with Tokenizer bundles (--tokenizer).",
        epilog="Entropies are plug-in estimates in bits. The Zipf exponent is the discrete "
        "power-law MLE over the ranks of the used codes. The mutual information is plug-in, "
        "so it is biased upwards, by about (K-1)^2/(2 n ln 2) bits for K used codes and n "
        "independent pairs (more for the correlated pairs of images): compare it with the null "
        "columns (JSON *_null_bits: the same estimator on pairs whose second token is from the "
        "same position of another image).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("dir", nargs="?", help="a pre-tokenized dataset (python -m mmjax.pretokenize)")
    p.add_argument(
        "--modalities", default=None, help="with DIR: comma-separated names; None: all tok_*"
    )
    p.add_argument(
        "--tokenizer",
        action="append",
        default=None,
        help="a Tokenizer bundle dir (repeat for several) to encode --source with, instead of DIR",
    )
    p.add_argument("--source", default="scenes", help="with --tokenizer: the data source")
    p.add_argument("--split", default="validation", help="with --tokenizer: the split")
    p.add_argument("--path", default=None, help="with --tokenizer: the source's files or folder")
    p.add_argument(
        "--data",
        action="append",
        metavar="KEY=VALUE",
        help="with --tokenizer: more fields of the source's data config (repeatable)",
    )
    p.add_argument("--num", type=int, default=None, help="the first N images; None: all")
    p.add_argument("--batch-size", type=int, default=64, help="with --tokenizer: encode batch")
    p.add_argument("--seed", type=int, default=0, help="seed of the null's image pairing")
    p.add_argument(
        "--out", default=None, help="output dir; None: DIR/token_stats, or ./token_stats"
    )
    args = p.parse_args(argv)
    if (args.dir is None) == (args.tokenizer is None):
        p.error("give either a pre-tokenized DIR or --tokenizer TOKENIZER_DIR (not both)")
    try:
        if args.dir is not None:
            mods = [m.strip() for m in args.modalities.split(",")] if args.modalities else None
            tokens = pretokenized_tokens(args.dir, mods and [m for m in mods if m], args.num)
            manifest = load_manifest(args.dir)
            described = {
                k: manifest[k] for k in ("source", "split", "num_examples") if k in manifest
            }
            info = {"input": {"pretokenized": paths.absolute(args.dir), **described}}
            out = args.out or paths.join(args.dir, "token_stats")
        else:
            if args.modalities:
                raise ValueError("--modalities applies to a pre-tokenized DIR, not --tokenizer")
            data = _data_config(args)
            tokens = encoded_tokens(args.tokenizer, data, args.num, args.batch_size)
            dirs = [paths.absolute(t) for t in args.tokenizer]
            info = {"input": {"tokenizers": dirs, "data": data}}
            out = args.out or "token_stats"
        record = write_outputs(compute(tokens, args.seed), out, info)
    except (ValueError, TypeError, KeyError, FileNotFoundError) as e:
        p.error(str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e))
    print(format_table(record["modalities"]))
    print(f"wrote {paths.join(out, JSON_NAME)} and rank_frequency_<modality>.png")
    return record


if __name__ == "__main__":
    run(main, "python -m mmjax.eval.tokens")
