"""4M's training loss: cross-entropy over the valid target tokens, per modality.

Default (`per_token=False`, as in 4M): the mean cross-entropy of each target modality present
in the batch, averaged over those modalities, so a modality with few target tokens (a short
caption) weighs as much as one with many (an image). `per_token=True`: the mean over all valid
target tokens instead. Maths in float32 whatever the logits' dtype.

Gradient accumulation: pass `counts` (`target_counts` of the whole batch) to the loss of each
microbatch; every denominator then comes from the whole batch, so the microbatch losses,
gradients and metrics (except the counts themselves) add up exactly to the whole batch's.
"""

import jax
import jax.numpy as jnp

from mmjax.fourm.modalities import Registry


def _check(batch) -> None:
    for key in ("dec_target_tokens", "dec_modality", "dec_mask"):
        if key not in batch:
            raise ValueError(f"fourm_loss: batch is missing {key!r}")


def target_counts(batch, registry: Registry) -> jax.Array:
    """float32 [M]: the number of valid target tokens of each registry modality."""
    _check(batch)
    modality = jnp.asarray(batch["dec_modality"])
    valid = jnp.asarray(batch["dec_mask"]).astype(bool)
    ids = jnp.arange(len(registry))
    return ((modality[..., None] == ids) & valid[..., None]).sum(tuple(range(modality.ndim)))


def fourm_loss(
    logits: jax.Array, batch, registry: Registry, per_token: bool = False, counts=None
) -> tuple[jax.Array, dict]:
    """logits [B, T, V_max] (any float dtype); batch with dec_target_tokens, dec_modality,
    dec_mask [B, T]; counts: optional [M] denominators (see the module docstring).
    Returns (loss, metrics): metrics has `loss`, `acc` (all valid target tokens),
    `num_tokens`, `num_modalities`, and per target modality `loss/<name>`, `acc/<name>`,
    `count/<name>` (0, 0, 0 when the modality is absent: never NaN)."""
    _check(batch)
    counts = target_counts(batch, registry) if counts is None else jnp.asarray(counts)
    counts = counts.astype(jnp.float32)
    targets = jnp.asarray(batch["dec_target_tokens"], jnp.int32)
    modality = jnp.asarray(batch["dec_modality"])
    valid = jnp.asarray(batch["dec_mask"]).astype(bool)
    if logits.shape[:-1] != targets.shape or logits.shape[-1] != registry.max_vocab_size:
        raise ValueError(
            f"fourm_loss: logits {logits.shape} do not match targets {targets.shape} and "
            f"max_vocab_size {registry.max_vocab_size}"
        )
    logits = logits.astype(jnp.float32)
    tgt = jnp.clip(targets, 0, logits.shape[-1] - 1)
    picked = jnp.take_along_axis(logits, tgt[..., None], axis=-1)[..., 0]
    nll = jax.nn.logsumexp(logits, axis=-1) - picked  # [B, T]
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)

    metrics, losses, present = {}, [], []
    all_w = jnp.zeros_like(nll)
    for i, spec in enumerate(registry):
        if not spec.is_target:
            continue
        w = (valid & (modality == i)).astype(jnp.float32)
        all_w = all_w + w
        count = counts[i]
        denom = jnp.maximum(count, 1.0)
        metrics[f"loss/{spec.name}"] = (nll * w).sum() / denom
        metrics[f"acc/{spec.name}"] = (correct * w).sum() / denom
        metrics[f"count/{spec.name}"] = count
        losses.append(metrics[f"loss/{spec.name}"])
        present.append((count > 0).astype(jnp.float32))
    losses, present = jnp.stack(losses), jnp.stack(present)
    num_tokens = sum(counts[i] for i, s in enumerate(registry) if s.is_target)
    token_mean = (nll * all_w).sum() / jnp.maximum(num_tokens, 1.0)
    modality_mean = (losses * present).sum() / jnp.maximum(present.sum(), 1.0)
    loss = token_mean if per_token else modality_mean
    metrics.update(
        loss=loss,
        acc=(correct * all_w).sum() / jnp.maximum(num_tokens, 1.0),
        num_tokens=num_tokens,
        num_modalities=present.sum(),
    )
    return loss, metrics
