"""`python -m mmjax.demo.quantizers`: the quantizer library at work, in about a minute on a CPU.

Trains a small patch autoencoder (4x4 RGB patches -> MLP -> quantizer -> MLP) on
procedurally drawn images, once per quantizer, all at 10 bits per token: VQ (EMA, k-means
init, dead-code restarts), residual VQ (2 x 5 bits), FSQ [8, 5, 5, 5], LFQ and BSQ. Prints
PSNR, codebook usage and perplexity on held-out images and writes a PNG grid of
reconstructions to the work directory.

"""

import argparse
import os
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mmjax.eval import psnr, save_image_grid
from mmjax.quantizers import STATS, build_quantizer

PATCH = 4

# name -> (quantizer config, encoder output dim)
QUANTIZERS = {
    "vq-ema": (
        dict(
            type="vq",
            codebook_size=1024,
            dim=16,
            kmeans_init=True,
            restart_dead_codes=True,
            dead_threshold=0.05,
        ),
        16,
    ),
    "rvq-2x32": (
        dict(type="rvq", depth=2, base=dict(type="vq", codebook_size=32, dim=16, kmeans_init=True)),
        16,
    ),
    "fsq-8555": (dict(type="fsq", levels=(8, 5, 5, 5)), 4),
    "lfq-10": (dict(type="lfq", dim=10, entropy_weight=0.02), 10),
    "bsq-10": (dict(type="bsq", dim=10, entropy_weight=0.02), 10),
}


def toy_images(n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    """[n, size, size, 3] float32 in [0, 1]: a colour gradient with a few discs and boxes."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / (size - 1)
    out = np.empty((n, size, size, 3), np.float32)
    for i in range(n):
        c0, c1 = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
        angle = rng.uniform(0, 2 * np.pi)
        t = np.clip((np.cos(angle) * xx + np.sin(angle) * yy + 1) / 2, 0, 1)[..., None]
        img = (1 - t) * c0 + t * c1
        for _ in range(rng.integers(1, 4)):
            cx, cy, r = rng.uniform(0.15, 0.85), rng.uniform(0.15, 0.85), rng.uniform(0.08, 0.25)
            if rng.random() < 0.5:
                mask = (xx - cx) ** 2 + (yy - cy) ** 2 < r**2
            else:
                mask = (np.abs(xx - cx) < r) & (np.abs(yy - cy) < r * rng.uniform(0.4, 1))
            img[mask] = rng.uniform(0, 1, 3)
        out[i] = img
    return out


def patchify(images: jax.Array) -> jax.Array:
    b, h, w, c = images.shape
    x = images.reshape(b, h // PATCH, PATCH, w // PATCH, PATCH, c)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, h // PATCH, w // PATCH, PATCH * PATCH * c)


def unpatchify(patches: jax.Array) -> jax.Array:
    b, gh, gw, _ = patches.shape
    x = patches.reshape(b, gh, gw, PATCH, PATCH, 3).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, gh * PATCH, gw * PATCH, 3)


class PatchAutoencoder(nn.Module):
    """MLP encoder per patch -> quantizer -> MLP decoder per patch."""

    quantizer: nn.Module
    latent: int
    hidden: int = 128

    @nn.compact
    def __call__(self, images, train: bool = False):
        x = patchify(images * 2.0 - 1.0)
        x = nn.Dense(self.latent)(nn.gelu(nn.Dense(self.hidden)(x)))
        out = self.quantizer(x, train=train)
        y = nn.Dense(PATCH * PATCH * 3)(nn.gelu(nn.Dense(self.hidden)(out.quantized)))
        return unpatchify(y) * 0.5 + 0.5, out


def train_one(name: str, train_images, test_images, steps: int, batch: int, seed: int):
    config, latent = QUANTIZERS[name]
    model = PatchAutoencoder(build_quantizer(config), latent)
    key = jax.random.key(seed)
    variables = model.init(key, jnp.asarray(train_images[:batch]))  # k-means sees a batch
    params, stats = variables["params"], {STATS: variables.get(STATS, {})}
    tx = optax.adam(2e-3)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, stats, opt_state, images, key):
        def loss_fn(p):
            (recon, out), new_stats = model.apply(
                {"params": p, **stats},
                images,
                train=True,
                rngs={"quantizer": key},
                mutable=[STATS],
            )
            return jnp.mean((recon - images) ** 2) + out.loss, new_stats

        (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (
            optax.apply_updates(params, updates),
            {STATS: new_stats.get(STATS, {})},
            opt_state,
            loss,
        )

    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    for i in range(steps):
        images = jnp.asarray(train_images[rng.integers(0, len(train_images), batch)])
        params, stats, opt_state, loss = step(
            params, stats, opt_state, images, jax.random.fold_in(key, i)
        )
    loss.block_until_ready()
    seconds = time.perf_counter() - start
    recon, out = jax.jit(model.apply)({"params": params, **stats}, jnp.asarray(test_images))
    return {
        "name": name,
        "bits": np.log2(model.quantizer.codebook_size) * (config.get("depth", 1)),
        "psnr": psnr(test_images, np.clip(np.asarray(recon), 0, 1)),
        "usage": float(out.metrics["usage"]),
        "perplexity": float(out.metrics["perplexity"]),
        "seconds": seconds,
        "recon": np.clip(np.asarray(recon), 0, 1),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m mmjax.demo.quantizers",
        description=__doc__.split("\n\n")[1],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--workdir", default="outputs/demo", help="where the PNG grid goes")
    parser.add_argument("--steps", type=int, default=400, help="training steps per quantizer")
    parser.add_argument("--batch", type=int, default=32, help="images per training step")
    parser.add_argument(
        "--quantizers",
        default=",".join(QUANTIZERS),
        help=f"comma-separated subset of {', '.join(QUANTIZERS)}",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the images and the models")
    args = parser.parse_args(argv)
    names = [n for n in args.quantizers.split(",") if n]
    unknown = [n for n in names if n not in QUANTIZERS]
    if unknown:
        parser.error(f"unknown quantizer(s) {unknown}; choose from {list(QUANTIZERS)}")

    train_images, test_images = toy_images(2048, seed=args.seed), toy_images(8, seed=10**6)
    print(
        f"mmjax quantizer demo on {jax.devices()[0].platform}: {args.steps} steps each, "
        f"{len(names)} quantizers, 32x32 images, 4x4 patches (64 tokens/image)"
    )
    print(
        f"{'quantizer':<10} {'bits/tok':>8} {'PSNR dB':>8} {'usage':>6} {'perplex':>8} "
        f"{'train s':>8}"
    )
    results = []
    for name in names:
        r = train_one(name, train_images, test_images, args.steps, args.batch, args.seed)
        results.append(r)
        print(
            f"{r['name']:<10} {r['bits']:>8.1f} {r['psnr']:>8.2f} {r['usage']:>6.3f} "
            f"{r['perplexity']:>8.1f} {r['seconds']:>8.1f}",
            flush=True,
        )
    path = save_image_grid(
        [list(test_images)] + [list(r["recon"]) for r in results],
        os.path.join(args.workdir, "reconstructions.png"),
        labels=["input"] + [r["name"] for r in results],
        scale=3,
    )
    print(f"wrote {path}")
    return results


if __name__ == "__main__":
    main()
