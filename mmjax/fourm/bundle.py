"""The 4M bundle: a trained FourM packaged for generation, demos and colabs. A directory with
`fourm.json` (model config, the registry's modality config, masking budgets, the text
tokenizer and the tokenizer bundles the modalities came from) and `params.msgpack`; written
atomically, so a half-written bundle is never loaded."""

import json
import os
import shutil

import flax.linen as nn
import flax.serialization
import jax
import jax.numpy as jnp

from mmjax.fourm.modalities import Registry, build_registry
from mmjax.fourm.model import FourM
from mmjax.fourm.presets import build_fourm
from mmjax.parallel.distributed import barrier, is_primary, to_host

FORMAT = "mmjax-fourm-v1"
META, PARAMS = "fourm.json", "params.msgpack"


def save_fourm(path: str, *, model_config: dict, modalities: dict, params, **info) -> str:
    """Writes a bundle to `path` (a directory; replaced atomically if it exists). `info`:
    extra JSON fields (input_budget, target_budget, text_tokenizer, ...). In a multi-process
    run every process calls it (the params may be sharded across processes); process 0
    writes, and all return once the bundle is in place."""
    model_config = {k: v for k, v in dict(model_config).items() if k != "sharding_rules"}
    meta = {"format": FORMAT, "model": model_config, "modalities": modalities, **info}
    params = to_host(nn.unbox(params))  # a collective when sharded over processes
    if is_primary():
        tmp = path.rstrip("/") + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        with open(os.path.join(tmp, META), "w") as f:
            json.dump(meta, f, indent=1, default=list)
        with open(os.path.join(tmp, PARAMS), "wb") as f:
            f.write(flax.serialization.msgpack_serialize(params))
        old = path.rstrip("/") + ".old"
        if os.path.exists(path):
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    barrier("mmjax.save_fourm")
    return path


def load_fourm(path: str) -> tuple[FourM, dict, Registry, dict]:
    """(model, variables, registry, meta) from a bundle directory, or from a 4M trainer
    workdir holding one in `fourm/`."""
    if os.path.isdir(os.path.join(path, "fourm")):
        path = os.path.join(path, "fourm")
    meta_path, params_path = os.path.join(path, META), os.path.join(path, PARAMS)
    for p in (meta_path, params_path):
        if not os.path.exists(p):
            raise FileNotFoundError(
                f"load_fourm: {p} not found (is {path} a 4M bundle or a finished 4M workdir?)"
            )
    try:
        with open(meta_path) as f:
            meta = json.load(f)
        with open(params_path, "rb") as f:
            params = flax.serialization.msgpack_restore(f.read())
    except (ValueError, OSError) as e:
        raise ValueError(f"load_fourm: {path} is unreadable ({e})") from e
    if meta.get("format") != FORMAT:
        raise ValueError(
            f"load_fourm: {meta_path} has format {meta.get('format')!r}, expected {FORMAT!r}"
        )
    registry = build_registry(meta["modalities"])
    model = build_fourm(meta["model"], registry)
    return model, {"params": jax.tree.map(jnp.asarray, params)}, registry, meta
