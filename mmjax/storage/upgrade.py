"""Converts a bundle of the msgpack era (a JSON of metadata beside one `.msgpack` file of
weights, e.g. tokenizer.json + variables.msgpack or fourm.json + params.msgpack) into an Orbax
bundle that `Tokenizer.load` and `load_fourm` read:

    python -m mmjax.storage.upgrade OLD_DIR [NEW_DIR]

Without NEW_DIR the bundle is upgraded in place; its msgpack file is removed once the Orbax
bundle is complete. Paths may be local or gs://.
"""

import argparse
import json

import flax.serialization
from etils import epath

from mmjax.cli import run
from mmjax.storage.bundles import save_bundle


def legacy_files(old) -> tuple[str, dict, epath.Path]:
    """(meta file name, meta, msgpack file) of a msgpack-era bundle directory; ValueError
    naming the directory when it is not one."""
    old = epath.Path(old)
    if not old.is_dir():
        raise ValueError(f"{old} is not a directory")
    packs = sorted(old.glob("*.msgpack"))
    metas = {}
    for p in sorted(old.glob("*.json")):
        try:
            meta = json.loads(p.read_text())
        except ValueError as e:
            raise ValueError(f"{p} is unreadable ({e})") from e
        if isinstance(meta, dict) and "format" in meta:
            metas[p.name] = meta
    if len(metas) != 1:
        raise ValueError(
            f"{old}: expected one bundle metadata file (a JSON with a 'format'), found "
            f"{sorted(metas) or 'none'}"
        )
    [(name, meta)] = metas.items()
    if "weights" in meta:
        raise ValueError(f"{old} is already an Orbax bundle ({name} names {meta['weights']})")
    if len(packs) != 1:
        raise ValueError(
            f"{old}: expected one .msgpack file of weights, found {[p.name for p in packs]}"
        )
    return name, meta, packs[0]


def upgrade(old, new=None) -> str:
    """Writes the Orbax bundle of the msgpack-era bundle `old` to `new` (default: in place,
    removing the msgpack file once the new bundle is complete); returns its path."""
    name, meta, pack = legacy_files(old)
    try:
        weights = flax.serialization.msgpack_restore(pack.read_bytes())
    except ValueError as e:
        raise ValueError(f"{pack} is unreadable ({e})") from e
    out = save_bundle(new if new is not None else old, meta, name, weights)
    if new is None:
        pack.unlink()
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mmjax.storage.upgrade",
        description="Convert a msgpack-era Tokenizer or 4M bundle into an Orbax bundle.",
    )
    parser.add_argument("old_dir", help="the old bundle directory (local or gs://)")
    parser.add_argument(
        "new_dir", nargs="?", default=None, help="where to write the new bundle (default: in place)"
    )
    args = parser.parse_args(argv)
    out = upgrade(args.old_dir, args.new_dir)  # errors: one line from mmjax.cli.run
    print(f"upgraded {args.old_dir} -> {out}")
    return 0


if __name__ == "__main__":
    run(main, "python -m mmjax.storage.upgrade")
