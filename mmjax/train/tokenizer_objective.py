"""The tokenizer's training objective: reconstruction + quantizer loss, optionally a
perceptual term and a PatchGAN adversarial term with VQGAN's adaptive weight, and the
discriminator's own hinge loss. Also the bfloat16 compute option.

Generator gradient (VQGAN): g = grad(L_rec) + lambda * grad(L_gan), where
lambda = |grad_last L_rec| / (|grad_last L_gan| + 1e-4) (clipped, no gradient) on the
decoder's last layer, times the GAN weight from `gan_start` on. Both gradients come from one
forward pass (`jax.vjp` pulled back twice), so the GAN costs one extra backward pass.

Config (`config.loss`): perceptual_weight, perceptual_path (a local .npz, see
mmjax.tokenizers.perceptual), gan_weight, gan_start, adaptive_max_weight;
`config.discriminator`: channels, num_layers, learning_rate, b1, b2.
`config.model.compute_dtype`: "float32" (default) or "bfloat16": encoder and decoder run
in bfloat16 on bfloat16 copies of the float32 parameters; the quantizer stays float32.
"""

import jax
import jax.numpy as jnp
import optax

from mmjax.quantizers import STATS
from mmjax.tokenizers import (
    NESTED_DROPOUT,
    PatchDiscriminator,
    PerceptualLoss,
    adaptive_weight_from_grads,
    d_hinge_loss,
    g_hinge_loss,
    gan_start_step,
)
from mmjax.train.state import keep_if

# The decoder's output layer, per autoencoder type (the layer VQGAN's lambda is taken at).
LAST_LAYER = {"conv": "conv_out", "vit": "to_patches", "flex1d": "to_patches"}
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def _get(section, key, default):
    return section.get(key, default) if section is not None else default


class TokenizerObjective:
    """Losses and gradients of one tokenizer train step; stateless apart from constants."""

    def __init__(self, model, codec, config):
        self.model, self.codec = model, codec
        loss = config.get("loss", None)
        self.perceptual_weight = float(_get(loss, "perceptual_weight", 0.0))
        self.gan_weight = float(_get(loss, "gan_weight", 0.0))
        self.gan_start = int(_get(loss, "gan_start", 0))
        self.adaptive_max = float(_get(loss, "adaptive_max_weight", 1e4))
        dtype_name = config.model.get("compute_dtype", "float32")
        if dtype_name not in COMPUTE_DTYPES:
            raise ValueError(
                f"model.compute_dtype must be one of {tuple(COMPUTE_DTYPES)}, got {dtype_name!r}"
            )
        self.compute_dtype = COMPUTE_DTYPES[dtype_name]
        if (self.perceptual_weight or self.gan_weight) and codec.name != "rgb":
            raise ValueError(
                f"loss.perceptual_weight and loss.gan_weight apply to rgb tokenizers only; "
                f"this one is for {codec.name!r}: set them to 0"
            )
        self.perceptual = None
        if self.perceptual_weight:
            path = _get(loss, "perceptual_path", None)
            if not path:
                raise ValueError(
                    "loss.perceptual_weight > 0 needs loss.perceptual_path: a local .npz of the "
                    "feature net's weights (see mmjax.tokenizers.perceptual)"
                )
            self.perceptual = PerceptualLoss.from_file(path)
        self.disc, self.disc_tx = None, None
        if self.gan_weight:
            d = config.get("discriminator", None)
            self.disc = PatchDiscriminator(
                channels=int(_get(d, "channels", 64)), num_layers=int(_get(d, "num_layers", 3))
            )
            self.disc_tx = optax.adam(
                float(_get(d, "learning_rate", 1e-4)),
                b1=float(_get(d, "b1", 0.5)),
                b2=float(_get(d, "b2", 0.9)),
            )
        self.last_layer = LAST_LAYER[config.model.type]

    @property
    def uses_gan(self) -> bool:
        return self.disc is not None

    def init_disc(self, key, x):
        """(discriminator params, its optimizer state) for model-space images x."""
        params = self.disc.init(key, x)["params"]
        return params, self.disc_tx.init(params)

    def _cast(self, params):
        if self.compute_dtype == jnp.float32:
            return params
        # Only encoder and decoder run in low precision; codebooks stay float32.
        return {
            k: v if k == "quantizer" else jax.tree.map(lambda p: p.astype(self.compute_dtype), v)
            for k, v in params.items()
        }

    def _forward(self, params, stats, raw, key, disc_params):
        x = self.codec.preprocess(raw)
        (y, q), new_stats = self.model.apply(
            {"params": self._cast(params), **stats},
            x.astype(self.compute_dtype),
            train=True,
            # nested dropout (1D tokenizers) draws its kept lengths from a stream of its own
            rngs={"quantizer": key, NESTED_DROPOUT: jax.random.fold_in(key, 1)},
            mutable=list(stats) or [STATS],
        )
        y = y.astype(jnp.float32)
        rec, terms = self.codec.loss(y, raw)
        rec = rec + q.loss
        if self.perceptual is not None:
            p = self.perceptual(x, y)
            terms["perceptual"] = p
            rec = rec + self.perceptual_weight * p
        g = jnp.zeros((), jnp.float32)
        if self.uses_gan:
            g = g_hinge_loss(self.disc.apply({"params": disc_params}, y))
        return (rec, g), (terms, q, new_stats, y)

    def generator_grads(self, params, stats, raw, key, step, disc_params=None):
        """(loss, grads, aux) where aux = (terms, quantizer output, new stats, model-space
        reconstruction)."""
        (rec, g), pullback, (terms, q, new_stats, y) = jax.vjp(
            lambda p: self._forward(p, stats, raw, key, disc_params), params, has_aux=True
        )
        one, zero = jnp.ones((), jnp.float32), jnp.zeros((), jnp.float32)
        (grads,) = pullback((one, zero))
        loss = rec
        terms = {**terms, "quantizer_loss": q.loss}
        if self.uses_gan:
            (g_grads,) = pullback((zero, one))
            lam = adaptive_weight_from_grads(
                grads["decoder"][self.last_layer],
                g_grads["decoder"][self.last_layer],
                self.adaptive_max,
            )
            lam = lam * gan_start_step(step, self.gan_start, self.gan_weight)
            grads = jax.tree.map(lambda a, b: a + lam * b, grads, g_grads)
            loss = rec + lam * g
            terms.update({"gan/g_loss": g, "gan/adaptive_weight": lam})
        return loss, grads, (terms, q, new_stats, y)

    def disc_update(self, disc_params, disc_opt_state, real, fake, step):
        """One discriminator step on model-space real and (stopped) fake images, applied
        only from `gan_start` on. Returns (params, opt state, d_loss, grads)."""

        def d_loss_fn(dp):
            real_logits = self.disc.apply({"params": dp}, real)
            fake_logits = self.disc.apply({"params": dp}, jax.lax.stop_gradient(fake))
            return d_hinge_loss(real_logits, fake_logits)

        d_loss, grads = jax.value_and_grad(d_loss_fn)(disc_params)
        updates, new_opt = self.disc_tx.update(grads, disc_opt_state, disc_params)
        new_params = optax.apply_updates(disc_params, updates)
        active = jnp.asarray(step) >= self.gan_start
        return (
            keep_if(active, new_params, disc_params),
            keep_if(active, new_opt, disc_opt_state),
            d_loss,
            grads,
        )
