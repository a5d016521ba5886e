"""Bundle directories: a JSON file of metadata next to a msgpack file of weights (the
`Tokenizer` and 4M bundles). In a multi-process run every process calls `save_bundle` (the
weights may be sharded across processes), process 0 writes, and all return once the
directory is in place; it is written beside the target and swapped in, so a half-written
bundle is never loaded. `load_bundle` reads one back with errors that name the file."""

import json
import os
import shutil

import flax.linen as nn
import flax.serialization
import jax
import jax.numpy as jnp

from mmjax.parallel.distributed import barrier, is_primary, to_host


def save_bundle(path: str, meta: dict, meta_name: str, weights, weights_name: str) -> str:
    """Writes `meta` (JSON; tuples become lists) and `weights` (a pytree of arrays, boxed,
    sharded or not) into the directory `path`, replacing an existing one atomically."""
    weights = to_host(nn.unbox(weights))  # a collective when sharded over processes
    if is_primary():
        path = path.rstrip("/")
        tmp, old = path + ".tmp", path + ".old"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        with open(os.path.join(tmp, meta_name), "w") as f:
            json.dump(meta, f, indent=1, default=list)
        with open(os.path.join(tmp, weights_name), "wb") as f:
            f.write(flax.serialization.msgpack_serialize(weights))
        if os.path.exists(path):
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    barrier(f"mmjax.save_bundle.{meta_name}")
    return path


def load_bundle(
    path: str, meta_name: str, weights_name: str, fmt: str, what: str, workdir_subdir: str
) -> tuple[dict, dict]:
    """(meta, weights as jax arrays) from a bundle directory, or from a trainer workdir that
    holds one in `workdir_subdir/`. `what` names the caller in errors (e.g. "load_fourm");
    the meta's "format" must equal `fmt`."""
    if os.path.isdir(os.path.join(path, workdir_subdir)):
        path = os.path.join(path, workdir_subdir)
    meta_path, weights_path = os.path.join(path, meta_name), os.path.join(path, weights_name)
    for p in (meta_path, weights_path):
        if not os.path.exists(p):
            raise FileNotFoundError(
                f"{what}: {p} not found (is {path} a bundle or a finished trainer workdir?)"
            )
    try:
        with open(meta_path) as f:
            meta = json.load(f)
        with open(weights_path, "rb") as f:
            weights = flax.serialization.msgpack_restore(f.read())
    except (ValueError, OSError) as e:
        raise ValueError(f"{what}: {path} is unreadable ({e})") from e
    if not isinstance(meta, dict) or meta.get("format") != fmt:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise ValueError(f"{what}: {meta_path} has format {found!r}, expected {fmt!r}")
    return meta, jax.tree.map(jnp.asarray, weights)
