"""4M's training loss: cross-entropy over the valid target tokens, per modality.

Default (`per_token=False`, as in 4M): the mean cross-entropy of each target modality present
in the batch, averaged over those modalities, so a modality with few target tokens (a short
caption) weighs as much as one with many (an image). `per_token=True`: the mean over all valid
target tokens instead. Maths in float32 whatever the logits' dtype.
"""

import jax
import jax.numpy as jnp

from mmjax.fourm.modalities import Registry


def fourm_loss(
    logits: jax.Array, batch, registry: Registry, per_token: bool = False
) -> tuple[jax.Array, dict]:
    """logits [B, T, V_max] (any float dtype); batch with dec_target_tokens, dec_modality,
    dec_mask [B, T]. Returns (loss, metrics): metrics has `loss`, `acc` (all valid target
    tokens), `num_tokens`, `num_modalities`, and per target modality `loss/<name>`,
    `acc/<name>`, `count/<name>` (0, 0, 0 when the modality is absent: never NaN)."""
    for key in ("dec_target_tokens", "dec_modality", "dec_mask"):
        if key not in batch:
            raise ValueError(f"fourm_loss: batch is missing {key!r}")
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
        count = w.sum()
        denom = jnp.maximum(count, 1.0)
        metrics[f"loss/{spec.name}"] = (nll * w).sum() / denom
        metrics[f"acc/{spec.name}"] = (correct * w).sum() / denom
        metrics[f"count/{spec.name}"] = count
        losses.append(metrics[f"loss/{spec.name}"])
        present.append((count > 0).astype(jnp.float32))
    losses, present = jnp.stack(losses), jnp.stack(present)
    num_tokens = all_w.sum()
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
