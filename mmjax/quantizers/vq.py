"""Vector quantization with a learned codebook (VQ-VAE, VQGAN, ViT-VQGAN variants)."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.kernels import codebook_search
from mmjax.kernels.codebook_search import IMPLS as SEARCH_IMPLS
from mmjax.kernels.codebook_search.reference import l2_normalize, partial_distances
from mmjax.quantizers.codebook_updates import (
    dead_code_mask,
    ema_update,
    kmeans,
    restart_samples,
)
from mmjax.quantizers.output import STATS, QuantizerOutput
from mmjax.quantizers.stats import code_usage_metrics, entropy_penalty
from mmjax.quantizers.straight_through import rotation_trick, sg, straight_through
from mmjax.quantizers.validation import (
    check_choice,
    check_index_range,
    check_indices,
    check_input,
    check_positive_int,
    check_range,
    lookup_codes,
    nonfinite_fraction,
)

RESTART_RNG = "quantizer"


class VectorQuantizer(nn.Module):
    """Nearest-neighbour quantizer over a codebook of `codebook_size` vectors.

    Attributes:
      codebook_size: K, number of codes.
      dim: last dimension of the input `z`.
      codebook_dim: if set and != dim, look up in a low-dimensional space: z is
        projected to codebook_dim, quantized there and projected back (ViT-VQGAN's
        factorized codes).
      metric: "l2", or "cosine" (inputs and codes l2-normalized before lookup).
      update: "ema" (codebook = EMA of assigned vectors, in the STATS collection) or
        "grad" (codebook is a parameter trained by the codebook loss).
      beta: commitment loss weight, beta * mean((z - sg(c))^2).
      codebook_weight: weight of mean((sg(z) - c)^2) when update="grad".
      ema_decay, ema_epsilon: EMA decay and Laplace smoothing of the cluster sizes.
      entropy_weight, entropy_temperature: optional entropy penalty on the soft
        assignment softmax(-d / T): weight * (mean per-sample entropy - entropy of the
        batch-mean assignment). Needs the full N x K distance matrix.
      kmeans_init, kmeans_iters: at `init`, set the codebook by k-means on the batch
        passed to `init` (pass a real first batch, not zeros).
      dead_threshold: a code is dead when its EMA assignment count per batch is below
        this; `metrics["dead_fraction"]` reports the fraction of dead codes.
      restart_dead_codes: in training, replace dead codes by random batch vectors.
        Needs `rngs={"quantizer": key}`. With update="grad" the replacement lives in
        a STATS offset added to the parameter, so the code keeps training from there.
      gradient: "ste" (straight-through) or "rotation" (rotation trick).
      search_impl, search_block_n, search_block_k: `impl` and block sizes of
        `mmjax.kernels.codebook_search` ("auto": Pallas kernel on TPU/GPU, tiled XLA on CPU).
      stored_codes_out: with metric="cosine", `quantized` and `decode_indices` give the
        stored codebook rows rather than their l2-normalized versions (the lookup is still
        by cosine similarity; ml-4m's VectorQuantizerLucid decodes that way, from EMA codes
        whose norms are below 1).

    Quantization always runs in float32; `quantized` comes back in the input dtype.
    An input vector with a NaN or inf entry (or any vector, when the codebook is not
    finite) gets index -1 and a NaN `quantized` row, is left out of the usage statistics
    and codebook updates, and is counted in `metrics["nonfinite_inputs"]` (a fraction).
    """

    codebook_size: int
    dim: int
    codebook_dim: int | None = None
    metric: str = "l2"
    update: str = "ema"
    beta: float = 0.25
    codebook_weight: float = 1.0
    ema_decay: float = 0.99
    ema_epsilon: float = 1e-5
    entropy_weight: float = 0.0
    entropy_temperature: float = 0.01
    kmeans_init: bool = False
    kmeans_iters: int = 10
    dead_threshold: float = 1.0
    restart_dead_codes: bool = False
    gradient: str = "ste"
    search_impl: str = "auto"
    search_block_n: int | None = None
    search_block_k: int | None = None
    stored_codes_out: bool = False

    def __post_init__(self):
        owner = type(self).__name__
        check_positive_int(owner, "codebook_size", self.codebook_size)
        check_positive_int(owner, "dim", self.dim)
        if self.codebook_dim is not None:
            check_positive_int(owner, "codebook_dim", self.codebook_dim)
        check_choice(owner, "metric", self.metric, ("l2", "cosine"))
        check_choice(owner, "update", self.update, ("ema", "grad"))
        check_choice(owner, "gradient", self.gradient, ("ste", "rotation"))
        check_choice(owner, "search_impl", self.search_impl, SEARCH_IMPLS)
        check_range(owner, "ema_decay", self.ema_decay, 0.0, 1.0)
        check_range(owner, "beta", self.beta, 0.0, float("inf"))
        check_positive_int(owner, "kmeans_iters", self.kmeans_iters, minimum=0)
        if self.entropy_temperature <= 0:
            raise ValueError(f"{owner}: entropy_temperature must be > 0")
        super().__post_init__()

    @property
    def _cdim(self) -> int:
        return self.codebook_dim or self.dim

    @property
    def _factorized(self) -> bool:
        return self._cdim != self.dim

    def setup(self):
        shape = (self.codebook_size, self._cdim)
        init = nn.initializers.variance_scaling(1.0, "fan_out", "uniform")
        if self._factorized:
            self.project_in = nn.Dense(self._cdim, dtype=jnp.float32)
            self.project_out = nn.Dense(self.dim, dtype=jnp.float32)
        if self.update == "grad":
            self.param("codebook", init, shape)
            if self.restart_dead_codes:
                self.variable(STATS, "codebook_offset", jnp.zeros, shape)
        else:
            codebook = self.variable(
                STATS, "codebook", lambda: init(self.make_rng("params"), shape)
            )
            self.variable(STATS, "embed_sum", lambda: codebook.value)
        self.variable(STATS, "cluster_size", jnp.ones, (self.codebook_size,))

    def _stored_codebook(self) -> jax.Array:
        """The codes [K, codebook_dim] as stored (never normalized), float32."""
        if self.update == "grad":
            cb = self.get_variable("params", "codebook")
            if self.restart_dead_codes:
                cb = cb + self.get_variable(STATS, "codebook_offset")
        else:
            cb = self.get_variable(STATS, "codebook")
        return cb.astype(jnp.float32)

    def codebook(self) -> jax.Array:
        """The codes [K, codebook_dim] as looked up (normalized for cosine), float32."""
        cb = self._stored_codebook()
        return l2_normalize(cb) if self.metric == "cosine" else cb

    def _output_codes(self, codebook: jax.Array, idx: jax.Array) -> jax.Array:
        """The codes `quantized` carries for `idx` (see `stored_codes_out`)."""
        if self.stored_codes_out and self.metric == "cosine":
            return lookup_codes(self._stored_codebook(), idx)
        return lookup_codes(codebook, idx)

    def _set_codebook(self, codes: jax.Array) -> None:
        if self.update == "grad":
            self.put_variable("params", "codebook", codes)
        else:
            self.put_variable(STATS, "codebook", codes)
            self.put_variable(STATS, "embed_sum", codes)

    def _embed(self, z: jax.Array) -> jax.Array:
        x = z.reshape(-1, self.dim).astype(jnp.float32)
        if self._factorized:
            x = self.project_in(x)
        return l2_normalize(x) if self.metric == "cosine" else x

    def __call__(self, z: jax.Array, train: bool = False) -> QuantizerOutput:
        check_input(type(self).__name__, z, self.dim)
        ze = self._embed(z)  # [N, Dc] float32
        if self.is_initializing() and self.kmeans_init and self.kmeans_iters > 0:
            centroids, _ = kmeans(
                sg(ze), self.codebook_size, self.make_rng("params"), self.kmeans_iters, self.metric
            )
            self._set_codebook(centroids)
        codebook = self.codebook()
        # Inputs and codes are already normalized for cosine, so L2 search is exact.
        idx = codebook_search(
            ze,
            codebook,
            metric="l2",
            impl=self.search_impl,
            block_n=self.search_block_n,
            block_k=self.search_block_k,
        )
        codes = lookup_codes(codebook, idx)  # [N, Dc]; NaN where idx is -1
        loss = self.beta * jnp.mean(jnp.square(ze - sg(codes)))
        if self.update == "grad":
            loss += self.codebook_weight * jnp.mean(jnp.square(sg(ze) - codes))
        metrics = code_usage_metrics(idx, self.codebook_size)
        metrics["nonfinite_inputs"] = nonfinite_fraction(idx)
        if self.entropy_weight > 0:
            logits = -partial_distances(ze, codebook, jnp.sum(codebook**2, -1))
            per_sample, batch = entropy_penalty(logits / self.entropy_temperature)
            loss += self.entropy_weight * (per_sample - batch)
            metrics.update(entropy_per_sample=per_sample, entropy_batch=batch)
        out_codes = codes if not self.stored_codes_out else self._output_codes(codebook, idx)
        q = (
            rotation_trick(ze, out_codes)
            if self.gradient == "rotation"
            else straight_through(ze, out_codes)
        )
        if self._factorized:
            q = self.project_out(q)
        if train and not self.is_initializing():
            self._update_codebook(sg(ze), idx)
        cluster_size = self.get_variable(STATS, "cluster_size")
        metrics["dead_fraction"] = jnp.mean(dead_code_mask(cluster_size, self.dead_threshold))
        return QuantizerOutput(
            quantized=q.reshape(z.shape).astype(z.dtype),
            indices=idx.reshape(z.shape[:-1]),
            loss=loss,
            metrics=metrics,
        )

    def _update_codebook(self, ze: jax.Array, idx: jax.Array) -> None:
        cluster_size = self.get_variable(STATS, "cluster_size")
        if self.update == "ema":
            cluster_size, embed_sum, codebook = ema_update(
                cluster_size,
                self.get_variable(STATS, "embed_sum"),
                ze,
                idx,
                self.ema_decay,
                self.ema_epsilon,
            )
        else:
            counts = jax.ops.segment_sum(jnp.ones_like(idx, jnp.float32), idx, self.codebook_size)
            cluster_size = self.ema_decay * cluster_size + (1.0 - self.ema_decay) * counts
        if self.restart_dead_codes:
            if not self.has_rng(RESTART_RNG):
                raise ValueError(
                    f"{type(self).__name__}: restart_dead_codes=True needs a PRNG key in "
                    f"training: apply(..., rngs={{'{RESTART_RNG}': key}})"
                )
            dead = dead_code_mask(cluster_size, self.dead_threshold)[:, None]
            samples = restart_samples(ze, self.codebook_size, self.make_rng(RESTART_RNG))
            # A non-finite input row is never a replacement code.
            dead = dead & jnp.all(jnp.isfinite(samples), axis=-1, keepdims=True)
            if self.update == "ema":
                codebook = jnp.where(dead, samples, codebook)
                embed_sum = jnp.where(dead, samples, embed_sum)
                cluster_size = jnp.where(dead[:, 0], 1.0, cluster_size)
            else:
                param = self.get_variable("params", "codebook")
                offset = self.get_variable(STATS, "codebook_offset")
                self.put_variable(
                    STATS, "codebook_offset", jnp.where(dead, samples - param, offset)
                )
        if self.update == "ema":
            self.put_variable(STATS, "embed_sum", embed_sum)
            self.put_variable(STATS, "codebook", codebook)
        self.put_variable(STATS, "cluster_size", cluster_size)

    def decode_indices(self, indices: jax.Array) -> jax.Array:
        """Codes for int indices [...] -> [..., dim] float32, as `__call__` produces them.

        Indices outside [0, codebook_size): a ValueError when they are concrete (eager
        calls, numpy arrays); inside `jit`, NaN codes (-1, the index of a non-finite
        input, decodes to NaN as `__call__` produced it). `valid_indices` gives the mask.
        """
        check_indices(type(self).__name__, indices)
        check_index_range(type(self).__name__, "indices", indices, self.codebook_size)
        codes = self._output_codes(self.codebook(), jnp.asarray(indices))
        return self.project_out(codes) if self._factorized else codes
