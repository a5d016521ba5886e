"""The 4M bundle: a trained FourM packaged for generation, demos and colabs. A directory with
`fourm.json` (model config, the registry's modality config, masking budgets, the text
tokenizer and the tokenizer bundles the modalities came from) and `params.msgpack`; written
atomically, so a half-written bundle is never loaded."""

from mmjax.fourm.modalities import Registry, build_registry
from mmjax.fourm.model import FourM
from mmjax.fourm.presets import build_fourm
from mmjax.storage.bundle_files import load_bundle, save_bundle

FORMAT = "mmjax-fourm-v1"
META, PARAMS = "fourm.json", "params.msgpack"


def save_fourm(path: str, *, model_config: dict, modalities: dict, params, **info) -> str:
    """Writes a bundle to `path` (a directory; replaced atomically if it exists). `info`:
    extra JSON fields (input_budget, target_budget, text_tokenizer, ...). In a multi-process
    run every process calls it (the params may be sharded across processes); process 0
    writes, and all return once the bundle is in place."""
    model_config = {k: v for k, v in dict(model_config).items() if k != "sharding_rules"}
    meta = {"format": FORMAT, "model": model_config, "modalities": modalities, **info}
    return save_bundle(path, meta, META, params, PARAMS)


def load_fourm(path: str) -> tuple[FourM, dict, Registry, dict]:
    """(model, variables, registry, meta) from a bundle directory, or from a 4M trainer
    workdir holding one in `fourm/`."""
    meta, params = load_bundle(path, META, PARAMS, FORMAT, "load_fourm", "fourm")
    registry = build_registry(meta["modalities"])
    model = build_fourm(meta["model"], registry)
    return model, {"params": params}, registry, meta
