"""Bundle directories (the `Tokenizer` and 4M bundles): a JSON file of metadata beside an
Orbax checkpoint of the weights, local or on `gs://` (every path goes through etils epath).

Layout of a bundle directory::

    <meta_name>.json   the metadata, plus "weights" (the checkpoint folder it belongs to) and
                       "versions" (mmjax, jax, flax, orbax-checkpoint that wrote it)
    weights-<n>/       the Orbax checkpoint: each process wrote its own shards

Every process calls `save_bundle`; nothing is gathered to one host. Saving writes a new
`weights-<n>/` (Orbax finalizes it atomically: a rename on local disks, a commit file on GCS),
then process 0 replaces the JSON in one step and removes the older weights. The JSON is the
commit point: until it names the new weights, readers load the previous bundle, so an
interrupted save leaves the old bundle loadable and a half-written one is never loaded.

`load_bundle` restores the weights onto a mesh with the parameters' logical shardings (each
device reads only its shard), or onto one device.
"""

import importlib.metadata
import json
import re
from collections.abc import Callable

import flax.core
import flax.linen as nn
import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.sharding import NamedSharding, SingleDeviceSharding
from jax.sharding import PartitionSpec as P

from mmjax import __version__
from mmjax.parallel.distributed import barrier, is_primary
from mmjax.parallel.rules import rules_from_config, state_shardings
from mmjax.storage import paths

WEIGHTS_PREFIX = "weights-"
UPGRADE_COMMAND = "python -m mmjax.storage.upgrade"
_WEIGHTS_DIR = re.compile(rf"^{WEIGHTS_PREFIX}(\d+)(\W.*)?$")  # incl. Orbax's temporaries


def versions() -> dict:
    """The versions of the packages that write a bundle (recorded in its metadata)."""
    out = {"mmjax": __version__}
    for name in ("jax", "flax", "orbax-checkpoint"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "unknown"
    return out


def _next_weights_name(path: epath.Path) -> str:
    """weights-<n> with n past every weights folder in `path`, finished or not (process 0
    decides; the other processes receive its choice)."""
    n = 0
    if is_primary() and path.exists():
        for child in path.iterdir():
            match = _WEIGHTS_DIR.match(child.name)
            if match:
                n = max(n, int(match.group(1)) + 1)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        n = int(multihost_utils.broadcast_one_to_all(np.int32(n)))
    return f"{WEIGHTS_PREFIX}{n}"


def _remove(path: epath.Path):
    if path.is_dir():
        path.rmtree()
    else:
        path.unlink()


def save_bundle(path, meta: dict, meta_name: str, weights) -> str:
    """Writes `meta` (JSON; tuples become lists) and `weights` (a pytree of arrays, boxed,
    sharded or not) as the bundle directory `path`, replacing an existing bundle only once
    the new one is complete. Every process must call it; each writes the shards it holds."""
    path = epath.Path(path)
    weights = flax.core.unfreeze(nn.unbox(weights))
    if is_primary():
        path.mkdir(parents=True, exist_ok=True)
    barrier(f"mmjax.save_bundle.mkdir.{meta_name}")
    name = _next_weights_name(path)
    with ocp.Checkpointer(ocp.StandardCheckpointHandler()) as checkpointer:
        checkpointer.save(path / name, args=ocp.args.StandardSave(weights))
    if is_primary():
        record = {**meta, "weights": name, "versions": versions()}
        paths.write_json(path / meta_name, record, indent=1, default=list)  # the commit point
        for child in path.iterdir():
            if _WEIGHTS_DIR.match(child.name) and child.name != name:
                _remove(child)
    barrier(f"mmjax.save_bundle.{meta_name}")
    return str(path)


def bundle_rules(meta: dict, rules=None) -> tuple:
    """The logical rules to restore a bundle with: `rules` if given, else the rules it was
    trained with (its meta's "sharding_rules"), else DEFAULT_RULES."""
    return rules_from_config(rules if rules is not None else meta.get("sharding_rules"))


def read_meta(path, meta_name: str, fmt: str, what: str, workdir_subdir: str):
    """(bundle directory, meta) of a bundle directory, or of a trainer workdir that holds one
    in `workdir_subdir/`. `what` names the caller in errors; the meta's "format" must equal
    `fmt`. A bundle of the msgpack era is refused with the command that converts it."""
    path = epath.Path(path)
    if (path / workdir_subdir / meta_name).exists():
        path = path / workdir_subdir
    meta_path = path / meta_name
    if not meta_path.exists():
        where = "does not exist" if not path.exists() else f"has no {meta_name}"
        raise FileNotFoundError(
            f"{what}: {meta_path} not found; {path} {where} (expected a bundle directory or "
            f"a finished trainer workdir with one in {workdir_subdir}/)"
        )
    try:
        meta = json.loads(meta_path.read_text())
    except (ValueError, OSError) as e:
        raise ValueError(f"{what}: {meta_path} is unreadable ({e})") from e
    if not isinstance(meta, dict) or meta.get("format") != fmt:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise ValueError(f"{what}: {meta_path} has format {found!r}, expected {fmt!r}")
    if "weights" not in meta:
        legacy = sorted(p.name for p in path.glob("*.msgpack"))
        if legacy:
            raise ValueError(
                f"{what}: {path} is a bundle of an older mmjax (weights in {legacy[0]}, not "
                f"an Orbax checkpoint); convert it once with: {UPGRADE_COMMAND} {path}"
            )
        raise ValueError(f"{what}: {meta_path} names no weights folder (no 'weights' entry)")
    return path, meta


def _key(keys) -> tuple:
    return tuple(str(getattr(k, "key", getattr(k, "name", k))) for k in keys)


def _flat(tree) -> dict:
    """{tuple of key names: leaf} of a nested-dict pytree."""
    return {_key(keys): leaf for keys, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _targets(stored, abstract, mesh, rules, where: str):
    """The stored tree (Orbax metadata) as ShapeDtypeStructs with shardings: the rules'
    shardings of the matching leaves of `abstract` on `mesh` (other arrays replicate), or
    one device. Checks that the bundle holds every array of `abstract`, with its shape."""
    if mesh is None:
        shardings, default = {}, SingleDeviceSharding(jax.local_devices()[0])
    else:
        default = NamedSharding(mesh, P())
        shardings = {} if abstract is None else _flat(state_shardings(abstract, mesh, rules))
    flat = _flat(stored)
    if abstract is not None:
        expected = _flat(nn.unbox(abstract))
        missing = sorted("/".join(k) for k in expected.keys() - flat.keys())
        if missing:
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            raise ValueError(
                f"{where} lacks arrays the model has: {', '.join(missing[:5])}{more} (a bundle "
                "of another model?)"
            )
        wrong = [
            f"{'/'.join(k)}: stored {tuple(flat[k].shape)}, model {tuple(v.shape)}"
            for k, v in expected.items()
            if tuple(flat[k].shape) != tuple(v.shape)
        ]
        if wrong:
            raise ValueError(f"{where} holds arrays of other shapes: {'; '.join(wrong[:5])}")

    def target(keys, m):
        sharding = shardings.get(_key(keys), default)
        shape, dtype = tuple(getattr(m, "shape", ())), getattr(m, "dtype", None) or np.float32
        return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)

    return jax.tree_util.tree_map_with_path(target, stored)


def load_bundle(
    path,
    meta_name: str,
    fmt: str,
    what: str,
    workdir_subdir: str,
    *,
    mesh=None,
    rules=None,
    abstract: Callable[[dict], object] | None = None,
) -> tuple[dict, dict]:
    """(meta, weights) of a bundle directory, or of a trainer workdir holding one in
    `workdir_subdir/` (see `read_meta`). The weights are restored onto `mesh`, each array
    with the sharding `rules` (see `bundle_rules`) give the logical axes of the matching
    leaf of `abstract(meta)` (a boxed abstract tree, e.g. `jax.eval_shape` of the model's
    init), every other array replicated; with no mesh, onto one device. `abstract` also
    checks that the bundle holds every array of the model, with the model's shapes."""
    path, meta = read_meta(path, meta_name, fmt, what, workdir_subdir)
    weights_dir = path / meta["weights"]
    if not weights_dir.exists():
        raise FileNotFoundError(f"{what}: {weights_dir} not found (named by {path / meta_name})")
    handler = ocp.StandardCheckpointHandler()
    try:
        stored = handler.metadata(weights_dir).tree
    except (ValueError, OSError, KeyError) as e:
        raise ValueError(f"{what}: {weights_dir} is not a readable Orbax checkpoint ({e})") from e
    finally:
        handler.close()
    where = f"{what}: {weights_dir}"
    model = abstract(meta) if abstract is not None else None
    targets = _targets(stored, model, mesh, bundle_rules(meta, rules), where)
    try:
        with ocp.Checkpointer(ocp.StandardCheckpointHandler()) as checkpointer:
            weights = checkpointer.restore(weights_dir, args=ocp.args.StandardRestore(targets))
    except (ValueError, OSError) as e:
        raise ValueError(f"{where} could not be restored ({e})") from e
    return meta, weights
