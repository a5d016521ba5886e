"""Starting a 4M run from a bundle's weights (`config.model_init`): a converted ml-4m model or
another run's export, fine-tuned with the 4M trainer. Only the parameters are taken; the
optimizer starts afresh."""

import jax

from mmjax.fourm.bundle import load_fourm


def _shapes(tree) -> dict:
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {jax.tree_util.keystr(path): tuple(leaf.shape) for path, leaf in flat}


def params_from_bundle(path: str, params, registry, mesh, rules):
    """`params` (the fresh train state's) replaced by the bundle's at `path`, in their dtypes
    and shardings; a ValueError names the modality or parameter that differs."""
    _, variables, bundle_registry, _ = load_fourm(path, mesh=mesh, rules=rules)
    if tuple(bundle_registry.names) != tuple(registry.names):
        raise ValueError(
            f"model_init {path}: its modalities {list(bundle_registry.names)} differ from the "
            f"config's {list(registry.names)} (same names, same order)"
        )
    want, got = _shapes(params), _shapes(variables["params"])
    for key in sorted(set(want) | set(got)):
        if want.get(key) != got.get(key):
            raise ValueError(
                f"model_init {path}: parameter {key} is {got.get(key, 'missing')} in the "
                f"bundle, {want.get(key, 'absent')} in the config's model"
            )
    return jax.tree.map(
        lambda old, new: jax.device_put(new.astype(old.dtype), old.sharding),
        params,
        variables["params"],
    )
