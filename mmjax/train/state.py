"""The train state: a pytree that is born sharded, checkpointed and donated whole."""

import functools

import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class TrainState:
    """step; params; opt_state; stats (non-parameter collections, e.g. quantizer EMA);
    ema_params (an EMA of params for evaluation, or None); skipped (steps dropped for a
    non-finite loss, gradient or update); bad_streak (how many of the last steps in a row were);
    disc_params / disc_opt_state (a GAN discriminator and its optimizer, or None)."""

    step: jax.Array
    params: dict
    opt_state: object
    stats: dict
    ema_params: dict | None
    skipped: jax.Array
    bad_streak: jax.Array
    disc_params: dict | None = None
    disc_opt_state: object = None

    @classmethod
    def create(cls, params, opt_state, stats, ema: bool, disc_params=None, disc_opt_state=None):
        return cls(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=opt_state,
            stats=stats,
            ema_params=jax.tree.map(jnp.copy, params) if ema else None,
            skipped=jnp.zeros((), jnp.int32),
            bad_streak=jnp.zeros((), jnp.int32),
            disc_params=disc_params,
            disc_opt_state=disc_opt_state,
        )


def all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


@functools.lru_cache(maxsize=8)
def _leaf_finite(out_sharding):
    return jax.jit(
        lambda xs: jnp.stack([jnp.all(jnp.isfinite(x)) for x in xs]), out_shardings=out_sharding
    )


def nonfinite_leaves(tree, out_sharding=None) -> list[str]:
    """The 'a/b/c' key paths of the leaves of `tree` (arrays, sharded or not) that hold a NaN
    or an inf, in tree order. One jitted reduction whose result `out_sharding` (e.g. replicated
    over the mesh) places, so that every process reads the same answer."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    if not flat:
        return []
    finite = _leaf_finite(out_sharding)([x for _, x in flat])
    names = ["/".join(_key_name(k) for k in path) for path, _ in flat]
    return [name for name, ok in zip(names, jax.device_get(finite), strict=True) if not ok]


def _key_name(key) -> str:
    for attr in ("name", "key", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def keep_if(ok: jax.Array, new, old):
    """`new` where ok, else `old`, leaf by leaf (a skipped step changes nothing)."""
    return jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)
