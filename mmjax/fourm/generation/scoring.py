"""Scoring: how likely a trained 4M finds given image tokens under some conditioning.

`image_token_log_probs` returns log p(token_i | conditioning) for every position of an
image-token target with all its positions masked: the distribution MaskGIT's first step
samples from. Comparing it under two conditionings measures what a model reads from a
condition without sampling noise, e.g. the tok_rgb log-probability of a scene's caption
against another scene's caption (does the model draw the colours the caption names?), or
ranks candidates (zero-shot: which caption explains these tokens best).
"""

import contextlib
from collections.abc import Mapping
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from mmjax.fourm.generation.conditioning import condition_blocks, normalize_conditioning
from mmjax.fourm.generation.placement import place_batch, place_variables
from mmjax.fourm.modalities import IMAGE_TOKEN_KINDS, MASK_INPUT, Registry
from mmjax.parallel import to_host


def image_token_log_probs(
    model,
    variables,
    registry: Registry,
    conditioning: Mapping,
    target: str,
    tokens,
    *,
    mesh: jax.sharding.Mesh | None = None,
    rules=None,
) -> np.ndarray:
    """float32 [B, N]: log p(tokens[b, i] | conditioning[b]) of each position i of the
    image-token modality `target` (2D or 1D), every position of it masked (none is input).

    conditioning: as for `mmjax.fourm.generate` (name -> tokens, sequences or pixels), with
    no entry for `target`; tokens: int [B, h*w] or [B, h, w]. mesh, rules: run on a device
    mesh as `generate` does (parameters by the rules, batch over the data axes); the result
    is a host array either way. Raises ValueError for a target that is not an image-token
    modality of the registry, a conditioning on the target itself, or tokens of the wrong
    shape or range."""
    if target not in registry or registry[target].kind not in IMAGE_TOKEN_KINDS:
        kinds = [s.name for s in registry if s.kind in IMAGE_TOKEN_KINDS]
        raise ValueError(f"image_token_log_probs: target {target!r} is not one of {kinds}")
    if target in conditioning:
        raise ValueError(
            f"image_token_log_probs: {target!r} is the target; it cannot also be conditioning"
        )
    want, b = normalize_conditioning(registry, {target: tokens})
    tokens = want[target]  # checked: int32 [B, N] within the vocabulary
    cond, _ = normalize_conditioning(registry, conditioning, b)
    on_mesh = contextlib.nullcontext()
    if mesh is not None:
        model, variables = place_variables(model, variables, mesh, rules)
        cond, tokens = place_batch((cond, tokens), mesh, model.sharding_rules)
        on_mesh = jax.set_mesh(mesh)
    with on_mesh:
        return to_host(_score(model, variables, registry, cond, target, tokens, b))


def _score(model, variables, registry: Registry, cond: dict, target: str, tokens, b: int):
    """The log-probabilities as a device array (sharded when the inputs are)."""
    spec = registry[target]
    blocks = condition_blocks(registry, cond, list(cond), b)
    blocks.pop("block")
    n = spec.num_tokens
    dec = (
        jnp.full((b, n), MASK_INPUT, jnp.int32),  # all masked (1D tokens: MaskGIT's inputs)
        jnp.full((b, n), registry.index(target), jnp.int32),
        jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (b, n)),
        jnp.ones((b, n), bool),
    )
    return _log_probs(variables, blocks, dec, tokens, model=model, vocab=spec.vocab_size)


@partial(jax.jit, static_argnames=("model", "vocab"))
def _log_probs(variables, blocks, dec, tokens, *, model, vocab: int) -> jax.Array:
    """The decoder's log-probabilities of `tokens` [B, N] given the encoder `blocks`."""
    context, cmask = model.apply(variables, blocks, method=model.encode)
    logits = model.apply(variables, context, cmask, *dec, method=model.decode)
    logp = jax.nn.log_softmax(logits[..., :vocab].astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(logp, tokens[..., None], axis=-1)[..., 0]
