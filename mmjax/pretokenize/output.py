"""The writing side of pre-tokenization: sharded per-modality ArrayRecord writers, the
output directory's life cycle (OUT.partial, then one rename) and the manifest. Layout and
reader: `mmjax.data.pretokenized`.

OUT may be gs://: GCS has no directory rename, so OUT.partial's objects are copied into OUT
(server side) and the manifest, the completion marker, is written last."""

import contextlib
import os

from mmjax.data.pretokenized import FORMAT, MANIFEST, modality_paths
from mmjax.data.records import SUFFIX, encode_record
from mmjax.data.text_vocab import METADATA_RANGES
from mmjax.storage import paths

TEXT_MODALITIES = ("caption", "boxes", "metadata")


class ShardWriters:
    """ArrayRecord writers of every modality; record r goes to shard r * S // N (contiguous,
    so shard order is record order). One shard per modality is open at a time."""

    def __init__(self, root: str, names, num_records: int, num_shards: int):
        self.paths = {n: modality_paths(root, n, num_shards) for n in names}
        for n in names:
            paths.makedirs(paths.join(root, n))
        self.num_records, self.num_shards, self.count = num_records, num_shards, 0
        self.shard, self.open = -1, {}
        self._staged = contextlib.ExitStack()

    def write(self, records: dict) -> None:
        from array_record.python.array_record_module import ArrayRecordWriter

        shard = self.count * self.num_shards // self.num_records
        if shard != self.shard:
            self.close()
            # A gs:// shard is written locally and uploaded when closed (see records.py).
            local = {
                n: self._staged.enter_context(paths.staged_file(p[shard], SUFFIX))
                for n, p in self.paths.items()
            }
            self.open = {n: ArrayRecordWriter(f, "group_size:1") for n, f in local.items()}
            self.shard = shard
        for name, record in records.items():
            self.open[name].write(encode_record(record))
        self.count += 1

    def close(self, keep: bool = True) -> None:
        """Closes the open shards and puts them in place (`keep`) or drops them."""
        for w in self.open.values():
            w.close()
        self.open = {}
        if keep:
            self._staged.close()
        else:
            # Leave the staged files as an error would: not put in place, removed.
            self._staged.__exit__(RuntimeError, RuntimeError("shards dropped"), None)
        self._staged = contextlib.ExitStack()


def prepare_out(out: str, overwrite: bool) -> str:
    """Checks that `out` may be (re)written and returns a fresh OUT.partial to write into.

    A non-empty `out` needs `overwrite`, and even then must hold a manifest: a directory of
    someone's other files is never deleted."""
    if paths.isdir(out):
        nonempty = bool(paths.listdir(out))
    elif paths.exists(out):
        raise FileExistsError(f"--out {out} exists and is not a directory")
    else:
        nonempty = False
    if nonempty:
        if not overwrite:
            raise FileExistsError(f"--out {out} is not empty (pass --overwrite to replace it)")
        if not paths.exists(paths.join(out, MANIFEST)):
            raise FileExistsError(
                f"--out {out} is not empty and has no {MANIFEST}: it is not a pre-tokenization "
                f"output, so it is not replaced even with --overwrite"
            )
    tmp = out.rstrip("/") + ".partial"
    paths.rmtree(tmp)
    paths.makedirs(tmp)
    return tmp


def build_manifest(toks, dirs, text_tok, shapes, lengths, num, out, **info) -> dict:
    """The manifest (without its completion marker): image tokens (codebook size, grid,
    stored token shape, bundle dir, the scales of a multi-scale tokenizer, the depth of a
    residual one's [h, w, depth] tokens; a 1D tokenizer's:
    kind image_tokens_1d, num_tokens K, grid [K], stored coarse to fine), rgb pixels
    (unless info["pixels"] is False), the text sequences named in `lengths` (vocabulary
    size, longest record, tokenizer file; metadata ranges; box image size), plus `info`."""
    text_path = paths.join(out, "text_tokenizer.json")
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
        if getattr(tok, "max_tokens", None) is not None:  # a 1D tokenizer: K tokens, in order
            mods[f"tok_{m}"].update(kind="image_tokens_1d", num_tokens=int(tok.max_tokens))
        if getattr(tok, "scales", None):  # multi-scale (VAR): flat [sum(s * s)] pyramids
            mods[f"tok_{m}"]["scales"] = list(tok.scales)
        elif len(shapes[m]) == len(tok.grid_shape) + 1:  # residual (RVQ): [h, w, depth]
            mods[f"tok_{m}"]["depth"] = int(shapes[m][-1])
    r = info["resolution"]
    if info.get("pixels", True):
        mods["rgb"] = dict(kind="pixels", shape=[r, r, 3], dtype="uint8", value_range=[0, 255])
    for name in (n for n in TEXT_MODALITIES if n in lengths):
        mods[name] = dict(
            kind="sequence",
            vocab_size=text_tok.vocab_size,
            max_length=lengths[name],
            dtype="int32",
            eos=False,
            tokenizer=text_path,
        )
    if "boxes" in mods:
        mods["boxes"].update(image_size=r, tokens_per_box=6)
    if "metadata" in mods:
        mods["metadata"]["ranges"] = {k: list(v) for k, v in METADATA_RANGES.items()}
    return dict(format=FORMAT, num_examples=num, **info, text_tokenizer=text_path, modalities=mods)


def commit_out(tmp: str, out: str, manifest: dict) -> None:
    """Writes the manifest into `tmp` (atomically, last), then puts `tmp` in place of `out`.
    On GCS: clears `out`, copies `tmp`'s objects into it, writes the manifest last."""
    if paths.is_remote(out):
        paths.rmtree(out)
        for name in paths.walk_files(tmp):
            paths.copy(paths.join(tmp, name), paths.join(out, name))
        paths.write_json(paths.join(out, MANIFEST), manifest, indent=1)
        paths.rmtree(tmp)
        return
    paths.write_json(os.path.join(tmp, MANIFEST), manifest, indent=1)
    old = out + ".old"
    if os.path.exists(out):
        os.replace(out, old)
    os.replace(tmp, out)
    paths.rmtree(old)
