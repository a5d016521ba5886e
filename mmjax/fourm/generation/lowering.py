"""Generation steps lowered for a mesh from abstract values (shapes + shardings, nothing is
allocated): one MaskGIT / ROAR step of an image-token target (2D or 1D) and one AR decode
step of a sequence or 1D image-token target against the KV cache, with classifier-free
guidance, on the inputs `generate` feeds them. `.compile()` the result for a TPU topology on a
CPU host to read the per-chip memory (launch/aot_compile.py --step=generate_maskgit / generate_ar).

The conditioning is every other modality of the registry (the longest encoder input a chain
can reach), B examples, K guidance variants (K = 2: a guidance scale).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from mmjax.fourm.generation.placement import variable_shardings, with_rules
from mmjax.fourm.generation.steps import ENC_FIELDS, decode_step, parallel_step
from mmjax.fourm.modalities import IMAGE_TOKEN_KINDS
from mmjax.fourm.model import FourM, abstract_variables
from mmjax.parallel import batch_sharding, logical_to_spec
from mmjax.parallel.constrain import KV_CACHE_AXES

# What one AR decode step writes: sequences and 1D image-token sequences (causal decoders).
AR_KINDS = ("sequence", "image_tokens_1d")


def _target(registry, target: str | None, kinds: tuple[str, ...]) -> str:
    names = [s.name for s in registry if s.kind in kinds]
    if target is None and names:
        return names[0]
    if target not in names:
        raise ValueError(
            f"generation step: target {target!r} is not one of the {'/'.join(kinds)} {names}"
        )
    return target


def _inputs(model: FourM, mesh: Mesh, rules, rows: int, names) -> tuple[dict, int]:
    """Abstract conditioning blocks of `names` for `rows` examples: ({enc_tokens,
    enc_modality, enc_positions [rows, Ec], pixels_* [rows, H, W, C]}, Ec)."""
    registry = model.registry
    ec = sum(registry[n].num_tokens for n in names) or 1
    blocks = {f: _abstract((rows, ec), jnp.int32, mesh, rules) for f in ENC_FIELDS}
    for spec in registry:
        if spec.kind == "pixels":
            shape = (rows, *spec.image_size, spec.channels)
            blocks[f"pixels_{spec.name}"] = _abstract(shape, jnp.float32, mesh, rules)
    return blocks, ec


def _abstract(shape, dtype, mesh, rules, names=None) -> jax.ShapeDtypeStruct:
    """A batch input (leading axis over the data axes), or one with the logical `names`."""
    if names is None:
        sharding = batch_sharding(mesh, shape, rules)
    else:
        sharding = NamedSharding(mesh, logical_to_spec(names, shape, mesh, rules))
    return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)


def _scalar(dtype, mesh) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct((), dtype, sharding=NamedSharding(mesh, P()))


def _variables(model: FourM, mesh: Mesh):
    """The variables' shapes with their shardings on `mesh`."""
    return jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        nn.unbox(abstract_variables(model)),
        variable_shardings(model, mesh),
    )


def lower_parallel_step(
    model: FourM,
    mesh: Mesh,
    batch_size: int,
    *,
    rules=None,
    target: str | None = None,
    guidance_variants: int = 2,
    random_order: bool = False,
):
    """One MaskGIT (or ROAR) step of image-token `target` (2D or 1D; default: the registry's
    first)
    for `batch_size` examples, lowered for `mesh` by the logical `rules`."""
    model = with_rules(model, rules)
    rules, registry = model.sharding_rules, model.registry
    target = _target(registry, target, IMAGE_TOKEN_KINDS)
    b, k, n = batch_size, guidance_variants, registry[target].num_tokens
    cond, ec = _inputs(model, mesh, rules, b, [m for m in registry.names if m != target])
    masks = _abstract((k, b, ec), jnp.bool_, mesh, rules, (None, "act_batch"))
    key = jax.eval_shape(lambda: jax.random.key(0)).dtype
    args = (
        _variables(model, mesh), cond, masks,
        jax.ShapeDtypeStruct((k,), jnp.float32, sharding=NamedSharding(mesh, P())),
        _abstract((b, n), jnp.int32, mesh, rules),  # tokens
        _abstract((b, n), jnp.bool_, mesh, rules),  # known
        _abstract((b,), jnp.int32, mesh, rules),  # n_commit
        _scalar(jnp.float32, mesh), _scalar(jnp.int32, mesh), _scalar(jnp.float32, mesh),
        _scalar(key, mesh),
    )  # fmt: skip
    static = dict(
        model=model,
        modality_id=registry.index(target),
        vocab=registry[target].vocab_size,
        random_order=random_order,
    )
    with jax.set_mesh(mesh):
        return parallel_step.lower(*args, **static)


def lower_decode_step(
    model: FourM,
    mesh: Mesh,
    batch_size: int,
    *,
    rules=None,
    target: str | None = None,
    guidance_variants: int = 2,
):
    """One AR decode step of sequence or 1D image-token `target` (default: the registry's
    first) against a KV cache of its length, with the cross-attention keys/values of the encoded
    conditioning cached, for `batch_size` examples x `guidance_variants` rows, lowered for
    `mesh` by the logical `rules`. The cache is donated (updated in place)."""
    model = with_rules(model, rules)
    rules, registry = model.sharding_rules, model.registry
    target = _target(registry, target, AR_KINDS)
    rows, length = guidance_variants * batch_size, registry[target].num_tokens
    variables = _variables(model, mesh)
    enc, ec = _inputs(model, mesh, rules, rows, [m for m in registry.names if m != target])
    enc["enc_mask"] = _abstract((rows, ec), jnp.bool_, mesh, rules)

    def context_and_cache(variables, enc):
        context, cmask = model.apply(variables, enc, method=model.encode)
        cache = model.apply(variables, rows, length, context, method=model.init_cache)
        return context, cmask, cache

    context, cmask, cache = jax.eval_shape(context_and_cache, variables, enc)
    context = _abstract(context.shape, context.dtype, mesh, rules)
    cmask = _abstract(cmask.shape, cmask.dtype, mesh, rules)
    cache = jax.tree.map(lambda a: _abstract(a.shape, a.dtype, mesh, rules, KV_CACHE_AXES), cache)
    tokens = _abstract((rows,), jnp.int32, mesh, rules)
    with jax.set_mesh(mesh):
        return decode_step.lower(
            variables, context, cmask, cache, tokens, _scalar(jnp.int32, mesh),
            model=model, modality_id=registry.index(target),
        )  # fmt: skip
