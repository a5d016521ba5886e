"""The 4M bundle: a trained FourM packaged for generation, demos and colabs. A directory
(local or gs://) with `fourm.json` (model config, the registry's modality config, masking
budgets, the text tokenizer and the tokenizer bundles the modalities came from, the sharding
rules it was trained with, versions) and an Orbax checkpoint of the params, written by every
process and restored onto any mesh (see `mmjax.storage.bundles`); a half-written bundle is
never loaded."""

from mmjax.fourm.modalities import Registry, build_registry
from mmjax.fourm.model import FourM, abstract_variables
from mmjax.fourm.presets import build_fourm
from mmjax.parallel import rules_from_config
from mmjax.storage.bundles import bundle_rules, load_bundle, save_bundle

FORMAT = "mmjax-fourm-v1"
META = "fourm.json"


def save_fourm(path, *, model_config: dict, modalities: dict, params, **info) -> str:
    """Writes a bundle to `path` (a directory, local or gs://; an existing bundle there is
    replaced once the new one is complete). `info`: extra JSON fields (input_budget,
    target_budget, text_tokenizer, sharding_rules, ...); the model config's sharding_rules,
    if any, are kept as the bundle's. In a multi-process run every process calls it (the
    params may be sharded across processes); each writes its own shards, and all return once
    the bundle is in place."""
    model_config = dict(model_config)
    rules = model_config.pop("sharding_rules", None)
    rules = info.pop("sharding_rules", rules)
    meta = {"format": FORMAT, "model": model_config, "modalities": modalities, **info}
    if rules is not None:
        meta["sharding_rules"] = [list(r) for r in rules_from_config(rules)]
    return save_bundle(path, meta, META, params)


def _field_of(meta: dict, keys: tuple) -> str:
    """The metadata field that defines the param at `keys` (named in load errors): the
    per-modality embeddings and heads come from "modalities", the rest from "model"."""
    names = tuple(f"_{name}" for name in meta.get("modalities", {}))
    return "modalities" if any(k == "modality_emb" or k.endswith(names) for k in keys) else "model"


def load_fourm(path, mesh=None, rules=None) -> tuple[FourM, dict, Registry, dict]:
    """(model, variables, registry, meta) from a bundle directory, or from a 4M trainer
    workdir holding one in `fourm/`.

    mesh: restore the params sharded over it, each as `rules` say for its logical axes
    (default: the rules the bundle was trained with, else DEFAULT_RULES), and return a model
    that constrains its activations by the same rules under `jax.set_mesh(mesh)`; None: onto
    one device."""

    def abstract(meta):
        return abstract_variables(build_fourm(meta["model"], build_registry(meta["modalities"])))[
            "params"
        ]

    meta, params = load_bundle(
        path, META, FORMAT, "load_fourm", "fourm", mesh=mesh, rules=rules,
        abstract=abstract, field_of=_field_of,
    )  # fmt: skip
    registry = build_registry(meta["modalities"])
    model = build_fourm(meta["model"], registry)
    if mesh is not None:
        model = model.clone(sharding_rules=bundle_rules(meta, rules))
    return model, {"params": params}, registry, meta
