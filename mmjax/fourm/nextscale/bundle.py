"""The next-scale bundle: a trained `NextScale` packaged for generation. A directory (local
or gs://) with `nextscale.json` (model config, the token layout its tokenizer fixes, the
tokenizer bundle and text tokenizer it reads, the condition modality, the sharding rules it
was trained with, versions) and an Orbax checkpoint of its params and code table, written by
every process and restored onto any mesh (`mmjax.storage.bundles`); a half-written bundle is
never loaded."""

import jax
import numpy as np

from mmjax.fourm.nextscale.model import NextScale, build_nextscale
from mmjax.parallel import rules_from_config
from mmjax.storage.bundles import bundle_rules, load_bundle, save_bundle

FORMAT = "mmjax-nextscale-v1"
META = "nextscale.json"
LAYOUT_FIELDS = (
    "scales",
    "codebook_size",
    "code_dim",
    "code_levels",
    "upsample",
    "cond_vocab",
    "cond_length",
)


def abstract_variables(model: NextScale):
    """The model's variables as abstract values (boxed), from its own field sizes."""
    cond = jax.ShapeDtypeStruct((1, model.cond_length), np.int32)
    mask = jax.ShapeDtypeStruct((1, model.cond_length), bool)
    tokens = jax.ShapeDtypeStruct((1, model.num_tokens), np.int32)
    init = lambda c, m, t: model.init(jax.random.key(0), c, m, t)
    return jax.eval_shape(init, cond, mask, tokens)


def save_nextscale(path, *, model_config: dict, layout: dict, variables, **info) -> str:
    """Writes a bundle to `path` (replacing an existing one once the new one is complete).
    layout: the LAYOUT_FIELDS; variables: {"params", "codes"}; info: extra JSON fields
    (tokenizer, text_tokenizer, condition, tokens, data, sharding_rules). Every process
    calls it in a multi-process run."""
    missing = [f for f in LAYOUT_FIELDS if f not in layout]
    if missing:
        raise ValueError(f"save_nextscale: layout lacks {missing}")
    model_config = dict(model_config)
    rules = info.pop("sharding_rules", model_config.pop("sharding_rules", None))
    layout = {k: list(v) if isinstance(v, tuple) else v for k, v in layout.items()}
    meta = {"format": FORMAT, "model": model_config, "layout": layout, **info}
    if rules is not None:
        meta["sharding_rules"] = [list(r) for r in rules_from_config(rules)]
    return save_bundle(path, meta, META, dict(variables))


def _field_of(meta: dict, keys: tuple) -> str:
    """The metadata field that defines the array at `keys` (named in load errors)."""
    layout = ("codes", "cond_emb", "cond_pos", "scale_pos", "scale_emb", "head")
    return "layout" if any(k in layout for k in keys) else "model"


def load_nextscale(path, mesh=None, rules=None) -> tuple[NextScale, dict, dict]:
    """(model, variables, meta) from a bundle directory, or from a next-scale trainer workdir
    holding one in `nextscale/`. mesh: restore sharded over it by `rules` (default: the
    rules it was trained with); None: onto one device."""

    def build(meta):
        return build_nextscale(meta["model"], **meta["layout"])

    meta, variables = load_bundle(
        path, META, FORMAT, "load_nextscale", "nextscale", mesh=mesh, rules=rules,
        abstract=lambda meta: abstract_variables(build(meta)), field_of=_field_of,
    )  # fmt: skip
    model = build(meta)
    if mesh is not None:
        model = model.clone(sharding_rules=bundle_rules(meta, rules))
    return model, variables, meta
