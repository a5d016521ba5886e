"""Orbax checkpointing of the train state together with the Grain iterator state.

Layout under `workdir`::

    checkpoints/model_metadata.json   what model these checkpoints belong to (written once)
    checkpoints/<step>/state/         the train state pytree (sharded arrays, OCDBT)
    checkpoints/<step>/data_iterator/ the Grain iterator state (JSON)

Orbax writes each step into `<step>.orbax-checkpoint-tmp*` and renames it when complete, so a
step cut short by a crash is never listed as the latest. Deleting an old step (past `keep`) is
not atomic: a crash during it leaves a `<step>/` folder with part of its files. At start, a
step folder that lacks one of its marker files (`_CHECKPOINT_METADATA`, `state/_METADATA`,
`data_iterator/metadata`, and `state/manifest.ocdbt` where the state is OCDBT) is removed and
reported in one line, so only complete steps are listed and restored. A directory written for
another model (different fingerprint or model config) or a step that cannot be read raises
`CheckpointError` instead of silently starting afresh.
"""

import base64
import hashlib
import json

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from mmjax.parallel.distributed import barrier
from mmjax.storage import paths

METADATA_FILE = "model_metadata.json"
_STATE, _DATA = "state", "data_iterator"
_MARKERS = ("_CHECKPOINT_METADATA", f"{_STATE}/_METADATA", f"{_DATA}/metadata")


class CheckpointError(ValueError):
    """A checkpoint directory that belongs to another model, or a step that cannot be read."""


def structure_fingerprint(pytree) -> str:
    """A stable hash of a pytree's key paths, shapes and dtypes (not its values).

    Works on arrays and on `jax.ShapeDtypeStruct`s (from `jax.eval_shape`), so it can be
    computed without materializing the parameters.
    """
    leaves, _ = jax.tree_util.tree_flatten_with_path(pytree)
    lines = []
    for path, leaf in leaves:
        shape = tuple(int(d) for d in getattr(leaf, "shape", np.shape(leaf)))
        dtype = np.dtype(getattr(leaf, "dtype", None) or np.asarray(leaf).dtype).name
        lines.append(f"{jax.tree_util.keystr(path)}:{shape}:{dtype}")
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


def _normalize(metadata: dict) -> dict:
    """The metadata as it reads back from JSON (tuples become lists, keys strings)."""
    try:
        return json.loads(json.dumps(metadata, sort_keys=True))
    except (TypeError, ValueError) as e:
        raise ValueError(f"checkpoint metadata must be JSON-serializable: {e}") from e


def _flatten(d, prefix=""):
    if not isinstance(d, dict):
        return {prefix or "<value>": d}
    out = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _metadata_mismatch(stored: dict, given: dict) -> str | None:
    """What differs in the model-defining fields, or None when they agree.

    The `fingerprint` entry is compared when both have one; otherwise the whole `model` entry.
    """
    if "fingerprint" in stored and "fingerprint" in given:
        if stored["fingerprint"] != given["fingerprint"]:
            return f"fingerprint: stored {stored['fingerprint']!r}, given {given['fingerprint']!r}"
        return None
    a, b = _flatten(stored.get("model", {})), _flatten(given.get("model", {}))
    diffs = [
        f"model.{k}: stored {a.get(k, '<missing>')!r}, given {b.get(k, '<missing>')!r}"
        for k in sorted(set(a) | set(b))
        if a.get(k, "<missing>") != b.get(k, "<missing>")
    ]
    if not diffs:
        return None
    more = f" (and {len(diffs) - 8} more)" if len(diffs) > 8 else ""
    return "; ".join(diffs[:8]) + more


def step_is_complete(step_dir: epath.Path) -> bool:
    """Whether a step folder holds every file a finished save leaves (see the module doc); a
    folder left by a deletion cut short lacks some of them."""
    if not all((step_dir / marker).exists() for marker in _MARKERS):
        return False
    ocdbt = any(p.name.startswith("ocdbt.process_") for p in (step_dir / _STATE).iterdir())
    return not ocdbt or (step_dir / _STATE / "manifest.ocdbt").exists()


def remove_incomplete_steps(directory) -> list[int]:
    """Removes the step folders of `directory` that are not complete (`step_is_complete`)
    and returns their steps. Process 0 removes; every process must call it."""
    directory = epath.Path(directory)
    removed = []
    if jax.process_index() == 0 and directory.is_dir():
        for child in sorted(directory.iterdir(), key=lambda p: p.name):
            if child.name.isdigit() and child.is_dir() and not step_is_complete(child):
                paths.rmtree(child)
                removed.append(int(child.name))
    barrier("mmjax.checkpoint.remove_incomplete_steps")
    return sorted(removed)


def _encode_iterator_state(state) -> dict:
    if state is None:
        return {"kind": "none", "value": None}
    if isinstance(state, bytes):
        return {"kind": "bytes", "value": base64.b64encode(state).decode("ascii")}
    if isinstance(state, dict):
        return {"kind": "dict", "value": state}
    raise TypeError(f"data_iterator_state must be a dict, bytes or None, got {type(state)}")


def _decode_iterator_state(record):
    kind, value = record["kind"], record["value"]
    if kind == "bytes":
        return base64.b64decode(value)
    return None if kind == "none" else value


class _Manager(ocp.CheckpointManager):
    """A CheckpointManager that leaves JAX's preemption sync point to the training loop
    (mmjax.train.preemption). Orbax would report the step of every save to it, also from the
    background thread that finishes an async save, after the loop has moved on: had every
    process last reported such a step, the sync point (one past the largest step reported)
    would be one the loop has passed, and no process would stop."""

    def reached_preemption(self, step: int) -> bool:
        return False


class Checkpointer:
    """A thin wrapper over `orbax.checkpoint.CheckpointManager` for one training run.

    save(step, state, data_iterator_state, force=False) writes every `save_every` steps (or
    when forced, e.g. on preemption), asynchronously when `async_save`, keeping the newest
    `keep` steps. restore(abstract_state) lays the arrays out as the shardings in
    `abstract_state` ask, whatever mesh wrote them. All processes call every method.
    """

    def __init__(
        self,
        workdir,
        *,
        keep: int = 3,
        save_every: int = 1000,
        async_save: bool = True,
        metadata: dict,
    ):
        if keep < 1:
            raise ValueError(f"checkpoint keep must be >= 1, got {keep}")
        if save_every < 1:
            raise ValueError(f"checkpoint save_every must be >= 1, got {save_every}")
        # epath: local directories and gs:// buckets alike (epath's own absolute() would turn
        # gs://b into ./gs:/b).
        self.workdir = paths.as_path(workdir)
        self.directory = self.workdir / "checkpoints"
        self.metadata = _normalize(metadata)
        self.save_every = save_every
        policies = ocp.checkpoint_managers
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            enable_async_checkpointing=async_save,
            # Leftovers of saves cut short by a crash; never listed as steps either way.
            cleanup_tmp_directories=True,
            # Periodic by step number only: no "first save" at whatever step a run starts on.
            save_decision_policy=policies.FixedIntervalPolicy(save_every),
        )
        self.removed_steps = remove_incomplete_steps(self.directory)
        if self.removed_steps and jax.process_index() == 0:
            print(
                f"checkpoints: removed incomplete step folder(s) {self.removed_steps} of "
                f"{self.directory} (a save or a deletion cut short); they cannot be restored",
                flush=True,
            )
        self._manager = _Manager(self.directory, options=options)
        self._checked = False

    # -- metadata ---------------------------------------------------------------------------

    @property
    def metadata_path(self) -> epath.Path:
        return self.directory / METADATA_FILE

    def stored_metadata(self) -> dict | None:
        """The metadata written with the existing checkpoints, or None when there is none."""
        if not self.metadata_path.exists():
            return None
        try:
            return json.loads(self.metadata_path.read_text())
        except (OSError, ValueError) as e:
            msg = f"cannot read checkpoint metadata {self.metadata_path}: {e}"
            raise CheckpointError(msg) from e

    def _check_metadata(self):
        """Refuses a directory whose checkpoints belong to another model; writes ours once."""
        if self._checked:
            return
        stored = self.stored_metadata()
        steps = self._manager.all_steps()
        if steps and stored is None:
            raise CheckpointError(
                f"{self.directory} holds checkpoints (steps {sorted(steps)}) but no "
                f"{METADATA_FILE}; cannot tell which model they belong to. Use another "
                "workdir or restore the metadata file."
            )
        diff = None if stored is None else _metadata_mismatch(stored, self.metadata)
        if steps and diff is not None:
            raise CheckpointError(
                f"workdir {self.workdir} holds checkpoints of a different model ({diff}). "
                "Use a fresh workdir, or the config that wrote these checkpoints."
            )
        # No committed step yet: (re)write ours; a stale file from a run that never saved
        # protects nothing.
        if (stored is None or diff is not None) and jax.process_index() == 0:
            paths.makedirs(self.directory)
            paths.write_json(self.metadata_path, self.metadata, indent=2, sort_keys=True)
        self._checked = True

    # -- save / restore ---------------------------------------------------------------------

    def latest_step(self) -> int | None:
        """The newest committed step, or None. Unfinished (tmp) step directories are ignored."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def step_dir(self, step: int) -> epath.Path:
        return self.directory / str(step)

    def save(self, step: int, state, data_iterator_state=None, force: bool = False) -> bool:
        """Saves when `step` is a multiple of `save_every` (or `force`); returns whether it did.

        `state` is the train state pytree (sharded jax.Arrays); `data_iterator_state` is what
        the Grain iterator's `get_state()` returned (a JSON-able dict, or bytes). A step that
        is already saved is not written again. Returns before the write ends when async.
        """
        step = int(step)
        self._check_metadata()
        if step in self._manager.all_steps():
            return False
        if not force and not self._manager.should_save(step):
            return False
        args = ocp.args.Composite(
            **{
                _STATE: ocp.args.StandardSave(state),
                _DATA: ocp.args.JsonSave(_encode_iterator_state(data_iterator_state)),
            }
        )
        return self._manager.save(step, args=args, force=True)

    def restore(self, abstract_state, step: int | None = None):
        """Returns (state, data_iterator_state) of `step` (default: the latest).

        `abstract_state` is a pytree of `jax.ShapeDtypeStruct` with shardings (e.g.
        `jax.eval_shape(init)` with the target mesh's shardings); the arrays come back laid
        out that way, whatever the mesh that saved them.
        """
        self._manager.reload()
        steps = self._manager.all_steps()
        if not steps:
            raise FileNotFoundError(f"no checkpoint to restore in {self.directory}")
        self._check_metadata()
        if step is None:
            step = self._manager.latest_step()
        step = int(step)
        if step not in steps:
            raise FileNotFoundError(
                f"no checkpoint for step {step} in {self.directory}; have {sorted(steps)}"
            )
        args = ocp.args.Composite(
            **{_STATE: ocp.args.StandardRestore(abstract_state), _DATA: ocp.args.JsonRestore()}
        )
        step_dir = self.step_dir(step)
        missing = [name for name in (_STATE, _DATA) if not (step_dir / name).is_dir()]
        if missing:
            raise CheckpointError(f"checkpoint {step_dir} is incomplete: no {missing} in it")
        try:
            restored = self._manager.restore(step, args=args)
            state, data_state = restored[_STATE], _decode_iterator_state(restored[_DATA])
        except Exception as e:  # any failure to read means a bad checkpoint
            cause = f"{type(e).__name__}: {e}"
            cause = cause if len(cause) <= 600 else cause[:600] + " ..."
            raise CheckpointError(
                f"checkpoint {step_dir} is unreadable or does not match the expected state "
                f"({cause})"
            ) from e
        return state, data_state

    def wait(self):
        """Blocks until pending asynchronous saves are committed."""
        self._manager.wait_until_finished()

    def close(self):
        """Finishes pending saves and releases Orbax's background resources."""
        self._manager.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
