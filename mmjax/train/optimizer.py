"""The optax optimizer from `config.optimizer`: AdamW, warmup + cosine, clipping."""

import jax
import optax

from mmjax.train.config_checks import check_config, check_total_steps


def decay_matrices(params):
    """Weight decay on matrices and tensors only: not on norms, biases (1-D parameters)."""
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def build_optimizer(config, total_steps: int):
    """(optax transformation, learning-rate schedule) from the optimizer config. Fields:
    learning_rate, warmup_steps, end_lr_factor, b1, b2, weight_decay, grad_clip,
    decay ('all', or 'matrices': no decay on norms and biases). A field out of its range (a
    non-finite learning rate, b2 >= 1, ...) is a `ConfigError` naming it."""
    check_config(config, section="optimizer")
    check_total_steps(total_steps)
    lr = config.learning_rate
    warmup = min(config.get("warmup_steps", 0), max(total_steps - 1, 0))
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0 if warmup else lr,
        peak_value=lr,
        warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1),
        end_value=lr * config.get("end_lr_factor", 0.1),
    )
    decay = config.get("decay", "all")
    if decay not in ("all", "matrices"):
        raise ValueError(f"optimizer.decay must be 'all' or 'matrices', got {decay!r}")
    chain = []
    if config.get("grad_clip", 0.0):
        chain.append(optax.clip_by_global_norm(config.grad_clip))
    chain.append(
        optax.adamw(
            schedule,
            b1=config.get("b1", 0.9),
            b2=config.get("b2", 0.99),
            weight_decay=config.get("weight_decay", 1e-4),
            mask=decay_matrices if decay == "matrices" else None,
        )
    )
    return optax.chain(*chain), schedule
