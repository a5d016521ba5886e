"""Bundle directories (the `Tokenizer` and 4M bundles): a JSON file of metadata beside an
Orbax checkpoint of the weights, local or on `gs://` (every path goes through etils epath).

Layout of a bundle directory::

    <meta_name>.json   the metadata, plus "weights" (the checkpoint folder it belongs to),
                       "versions" (mmjax, jax, flax, orbax-checkpoint that wrote it) and
                       "checksums" (one per array)
    weights-<n>/       the Orbax checkpoint: each process wrote its own shards

Every process calls `save_bundle`; nothing is gathered to one host. Saving writes a new
`weights-<n>/` (Orbax finalizes it atomically: a rename on local disks, a commit file on GCS),
process 0 fsyncs it, replaces the JSON in one step (temporary file, fsync, rename, fsync of
the folder) and removes the older weights. The JSON is the commit point: until it names the
new weights, readers load the previous bundle, so an interrupted save leaves the old bundle
loadable and a half-written one is never loaded; the next save removes what it left.

`load_bundle` restores the weights onto a mesh with the parameters' logical shardings (each
device reads only its shard), or onto one device.

The metadata holds a checksum of every array ("checksums": see `mmjax.storage.checksums`),
computed from the arrays as they were saved and compared with the arrays as they were read:
a bundle whose files rotted is a `BundleError` naming its folder and the arrays that differ,
never weights of NaNs. Bundles written before checksums were recorded load unchecked.
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
from mmjax.storage import checksums, paths

WEIGHTS_PREFIX = "weights-"
UPGRADE_COMMAND = "python -m mmjax.storage.upgrade"
_WEIGHTS_DIR = re.compile(rf"^{WEIGHTS_PREFIX}(\d+)(\W.*)?$")  # incl. Orbax's temporaries


class BundleError(ValueError):
    """A bundle that cannot be read, or whose files do not hold what its metadata says."""


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
    path = paths.as_path(path)  # local paths absolute: Orbax refuses relative ones
    weights = flax.core.unfreeze(nn.unbox(weights))
    if is_primary():
        path.mkdir(parents=True, exist_ok=True)
    barrier(f"mmjax.save_bundle.mkdir.{meta_name}")
    name = _next_weights_name(path)
    sums = array_checksums(weights)  # every process: a collective for arrays it shares
    with ocp.Checkpointer(ocp.StandardCheckpointHandler()) as checkpointer:
        checkpointer.save(path / name, args=ocp.args.StandardSave(weights))
    if is_primary():
        paths.sync_tree(path / name)  # on disk before the metadata names it
        record = {**meta, "weights": name, "versions": versions(), "checksums": sums}
        paths.write_json(path / meta_name, record, indent=1, default=list)  # the commit point
        for child in path.iterdir():  # older weights, and what saves cut short left
            stale = _WEIGHTS_DIR.match(child.name) and child.name != name
            if stale or child.name.startswith(f"{meta_name}.tmp"):
                _remove(child)
    barrier(f"mmjax.save_bundle.{meta_name}")
    return str(path)


def array_checksums(weights) -> dict:
    """{"algorithm", "arrays": {"a/b/c": digest}} of a pytree of arrays (see
    `mmjax.storage.checksums`); arrays of other dtypes (e.g. 4-bit) are left out."""
    flat = {
        "/".join(k): v
        for k, v in _flat(weights).items()
        if checksums.supported(getattr(v, "dtype", None) or np.asarray(v).dtype)
    }
    arrays = dict(zip(flat, checksums.digests(list(flat.values())), strict=True))
    return {"algorithm": checksums.ALGORITHM, "arrays": arrays}


def verify_checksums(meta: dict, weights, where: str):
    """Raises BundleError naming `where` and the arrays whose checksum differs from the one
    `meta` recorded (or that it recorded and `weights` lacks). A meta without checksums (a
    bundle of an older mmjax) or of another algorithm passes unchecked."""
    record = meta.get("checksums")
    if not isinstance(record, dict) or record.get("algorithm") != checksums.ALGORITHM:
        return
    flat = {"/".join(k): v for k, v in _flat(weights).items()}
    recorded = dict(sorted(record.get("arrays", {}).items()))
    bad = [f"{name} (missing)" for name in recorded if name not in flat]
    present = [name for name in recorded if name in flat]
    got = checksums.digests([flat[name] for name in present])
    bad += [
        f"{name} (read {g}, saved {recorded[name]})"
        for name, g in zip(present, got, strict=True)
        if g != recorded[name]
    ]
    if bad:
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise BundleError(
            f"{where} is corrupt: the checksums of {len(bad)} array(s) differ from those its "
            f"metadata recorded when it was saved: {'; '.join(bad[:5])}{more}. Its files "
            "changed on disk; copy the bundle again from where it came from, or re-export it"
        )


def bundle_rules(meta: dict, rules=None) -> tuple:
    """The logical rules to restore a bundle with: `rules` if given, else the rules it was
    trained with (its meta's "sharding_rules"), else DEFAULT_RULES."""
    return rules_from_config(rules if rules is not None else meta.get("sharding_rules"))


def read_meta(path, meta_name: str, fmt: str, what: str, workdir_subdir: str):
    """(bundle directory, meta) of a bundle directory, or of a trainer workdir that holds one
    in `workdir_subdir/`. `what` names the caller in errors; the meta's "format" must equal
    `fmt`. A bundle of the msgpack era is refused with the command that converts it."""
    path = paths.as_path(path)  # local paths absolute: Orbax refuses relative ones
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


def _fields_of(names, field_of) -> str:
    """Names the metadata fields that define the arrays `names`, when known."""
    fields = sorted({field_of(tuple(n.split("/"))) for n in names} - {None}) if field_of else []
    if not fields:
        return ""
    named = " and ".join(repr(f) for f in fields)
    verb = "fields describe" if len(fields) > 1 else "field describes"
    return f" (the metadata's {named} {verb} another model)"


def _refuse(where: str, found: str, keys, field_of):
    names = sorted("/".join(k) for k in keys)
    if names:
        more = f" and {len(names) - 5} more" if len(names) > 5 else ""
        raise BundleError(
            f"{where} {found}: {', '.join(names[:5])}{more}"
            f"{_fields_of(names, field_of) or ' (a bundle of another model?)'}"
        )


def _targets(stored, abstract, mesh, rules, where: str, field_of=None):
    """The stored tree (Orbax metadata) as ShapeDtypeStructs with shardings: the rules'
    shardings of the matching leaves of `abstract` on `mesh` (other arrays replicate), or
    one device. Checks that the bundle holds exactly the arrays of `abstract`, with their
    shapes; `field_of(key path)` names the metadata field that defines an array, for the
    errors."""
    if mesh is None:
        shardings, default = {}, SingleDeviceSharding(jax.local_devices()[0])
    else:
        default = NamedSharding(mesh, P())
        shardings = {} if abstract is None else _flat(state_shardings(abstract, mesh, rules))
    flat = _flat(stored)
    if abstract is not None:
        expected = _flat(nn.unbox(abstract))
        missing = expected.keys() - flat.keys()
        _refuse(where, "lacks arrays the model has", missing, field_of)
        wrong = {
            "/".join(k): f"stored {tuple(flat[k].shape)}, model {tuple(v.shape)}"
            for k, v in expected.items()
            if tuple(flat[k].shape) != tuple(v.shape)
        }
        if wrong:
            shown = "; ".join(f"{k}: {v}" for k, v in list(wrong.items())[:5])
            raise BundleError(
                f"{where} holds arrays of other shapes: {shown}{_fields_of(wrong, field_of)}"
            )
        _refuse(where, "holds arrays the model lacks", flat.keys() - expected.keys(), field_of)

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
    field_of: Callable[[dict, tuple], str | None] | None = None,
) -> tuple[dict, dict]:
    """(meta, weights) of a bundle directory, or of a trainer workdir holding one in
    `workdir_subdir/` (see `read_meta`). The weights are restored onto `mesh`, each array
    with the sharding `rules` (see `bundle_rules`) give the logical axes of the matching
    leaf of `abstract(meta)` (a boxed abstract tree, e.g. `jax.eval_shape` of the model's
    init), every other array replicated; with no mesh, onto one device. `abstract` also
    checks that the bundle holds exactly the arrays of the model, with the model's shapes
    (`field_of(meta, key path)`: the metadata field that defines an array, named in the
    errors); the arrays read are checked against the checksums the metadata recorded."""
    path, meta = read_meta(path, meta_name, fmt, what, workdir_subdir)
    weights_dir = path / meta["weights"]
    if not weights_dir.exists():
        raise FileNotFoundError(f"{what}: {weights_dir} not found (named by {path / meta_name})")
    handler = ocp.StandardCheckpointHandler()
    try:
        stored = handler.metadata(weights_dir).tree
    except Exception as e:  # whatever Orbax or TensorStore raise on a damaged folder
        raise BundleError(
            f"{what}: {weights_dir} is not a readable Orbax checkpoint ({type(e).__name__}: {e})"
        ) from e
    finally:
        handler.close()
    where = f"{what}: {weights_dir}"
    model = None
    if abstract is not None:
        try:
            model = abstract(meta)
        except (ValueError, KeyError, TypeError) as e:
            raise BundleError(
                f"{what}: {path / meta_name} describes no model this mmjax can build "
                f"({type(e).__name__}: {e})"
            ) from e
    fields = None if field_of is None else (lambda keys: field_of(meta, keys))
    targets = _targets(stored, model, mesh, bundle_rules(meta, rules), where, fields)
    try:
        with ocp.Checkpointer(ocp.StandardCheckpointHandler()) as checkpointer:
            weights = checkpointer.restore(weights_dir, args=ocp.args.StandardRestore(targets))
    except Exception as e:  # a damaged file makes TensorStore raise its own errors
        cause = f"{type(e).__name__}: {e}"
        cause = cause if len(cause) <= 600 else cause[:600] + " ..."
        raise BundleError(
            f"{where} could not be restored ({cause}); if its files were damaged, copy the "
            "bundle again or re-export it"
        ) from e
    verify_checksums(meta, weights, where)
    return meta, weights
