"""The writing side of pre-tokenization: sharded per-modality ArrayRecord writers, the
output directory's life cycle (OUT.partial, then one rename) and the manifest. Layout and
reader: `mmjax.data.pretokenized`."""

import json
import os
import shutil

from mmjax.data.pretokenized import FORMAT, MANIFEST, modality_paths
from mmjax.data.records import encode_record
from mmjax.data.text_vocab import METADATA_RANGES

TEXT_MODALITIES = ("caption", "boxes", "metadata")


class ShardWriters:
    """ArrayRecord writers of every modality; record r goes to shard r * S // N (contiguous,
    so shard order is record order). One shard per modality is open at a time."""

    def __init__(self, root: str, names, num_records: int, num_shards: int):
        self.paths = {n: modality_paths(root, n, num_shards) for n in names}
        for n in names:
            os.makedirs(os.path.join(root, n))
        self.num_records, self.num_shards, self.count = num_records, num_shards, 0
        self.shard, self.open = -1, {}

    def write(self, records: dict) -> None:
        from array_record.python.array_record_module import ArrayRecordWriter

        shard = self.count * self.num_shards // self.num_records
        if shard != self.shard:
            self.close()
            self.open = {
                n: ArrayRecordWriter(p[shard], "group_size:1") for n, p in self.paths.items()
            }
            self.shard = shard
        for name, record in records.items():
            self.open[name].write(encode_record(record))
        self.count += 1

    def close(self) -> None:
        for w in self.open.values():
            w.close()
        self.open = {}


def prepare_out(out: str, overwrite: bool) -> str:
    """Checks that `out` may be (re)written and returns a fresh OUT.partial to write into.

    A non-empty `out` needs `overwrite`, and even then must hold a manifest: a directory of
    someone's other files is never deleted."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise FileExistsError(f"--out {out} exists and is not a directory")
    if os.path.isdir(out) and os.listdir(out):
        if not overwrite:
            raise FileExistsError(f"--out {out} is not empty (pass --overwrite to replace it)")
        if not os.path.exists(os.path.join(out, MANIFEST)):
            raise FileExistsError(
                f"--out {out} is not empty and has no {MANIFEST}: it is not a pre-tokenization "
                f"output, so it is not replaced even with --overwrite"
            )
    tmp = out + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    return tmp


def build_manifest(toks, dirs, text_tok, shapes, lengths, num, out, **info) -> dict:
    """The manifest (without its completion marker): image tokens (codebook size, grid,
    stored token shape, bundle dir), rgb pixels, text sequences (vocabulary size, longest
    record, tokenizer file; metadata ranges; box image size), plus `info`."""
    text_path = os.path.join(out, "text_tokenizer.json")
    mods = {}
    for m, tok in toks.items():
        mods[f"tok_{m}"] = dict(
            kind="image_tokens",
            modality=m,
            vocab_size=int(tok.codebook_size),
            grid=list(tok.grid_shape),
            token_shape=shapes[m],
            dtype="int32",
            tokenizer=dirs[m],
        )
    r = info["resolution"]
    mods["rgb"] = dict(kind="pixels", shape=[r, r, 3], dtype="uint8", value_range=[0, 255])
    for name in TEXT_MODALITIES:
        mods[name] = dict(
            kind="sequence",
            vocab_size=text_tok.vocab_size,
            max_length=lengths[name],
            dtype="int32",
            eos=False,
            tokenizer=text_path,
        )
    mods["boxes"].update(image_size=r, tokens_per_box=6)
    mods["metadata"]["ranges"] = {k: list(v) for k, v in METADATA_RANGES.items()}
    return dict(format=FORMAT, num_examples=num, **info, text_tokenizer=text_path, modalities=mods)


def commit_out(tmp: str, out: str, manifest: dict) -> None:
    """Writes the manifest into `tmp` (atomically, last), then puts `tmp` in place of `out`."""
    path = os.path.join(tmp, MANIFEST)
    with open(path + ".tmp", "w") as f:
        json.dump(manifest, f, indent=1)
    os.replace(path + ".tmp", path)
    old = out + ".old"
    if os.path.exists(out):
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
