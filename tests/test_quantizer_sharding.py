"""A sharded jitted training step equals the single-device step: indices, losses, metrics,
EMA statistics and restarted codes (global statistics, identical on every device)."""

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mmjax.quantizers import STATS, build_quantizer

CONFIGS = {
    "vq_ema_restart": dict(
        type="vq",
        codebook_size=64,
        dim=8,
        restart_dead_codes=True,
        dead_threshold=0.9,
        ema_decay=0.5,
    ),
    "vq_grad_cosine_restart": dict(
        type="vq",
        codebook_size=64,
        dim=8,
        update="grad",
        metric="cosine",
        restart_dead_codes=True,
        ema_decay=0.5,
    ),
    "rvq_dropout": dict(
        type="rvq", depth=3, dropout_prob=0.5, base=dict(type="vq", codebook_size=32, dim=8)
    ),
    "lfq": dict(type="lfq", dim=8),
    "fsq": dict(type="fsq", levels=[8, 5, 5], dim=8),
}


def _step(q):
    def step(variables, z, key):
        out, new = q.apply(variables, z, train=True, rngs={"quantizer": key}, mutable=[STATS])
        return out, new

    return step


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_sharded_step_equals_single_device(mesh, name):
    q = build_quantizer(CONFIGS[name])
    z = jax.random.normal(jax.random.key(0), (16, 8, 8, 8)) + 0.5
    variables = q.init(jax.random.key(1), z)
    key = jax.random.key(2)
    cpu0 = jax.devices()[0]
    single = jax.jit(_step(q))(
        jax.device_put(variables, cpu0), jax.device_put(z, cpu0), jax.device_put(key, cpu0)
    )
    replicated = NamedSharding(mesh, P())
    data = NamedSharding(mesh, P(("data", "fsdp")))
    z_sharded = jax.device_put(z, data)
    assert len(z_sharded.addressable_shards) == 8
    sharded = jax.jit(
        _step(q), in_shardings=(replicated, data, replicated), out_shardings=(None, replicated)
    )(jax.device_put(variables, replicated), z_sharded, jax.device_put(key, replicated))
    out1, stats1 = single
    out8, stats8 = sharded
    np.testing.assert_array_equal(out8.indices, out1.indices)
    np.testing.assert_allclose(out8.quantized, out1.quantized, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out8.loss, out1.loss, rtol=1e-5)
    for k in out1.metrics:
        np.testing.assert_allclose(out8.metrics[k], out1.metrics[k], rtol=1e-5, err_msg=k)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), stats8, stats1
    )
    # Every device holds the same (replicated) statistics.
    for leaf in jax.tree.leaves(stats8):
        shards = [np.asarray(s.data) for s in leaf.addressable_shards]
        for s in shards[1:]:
            np.testing.assert_array_equal(s, shards[0])
    if name == "vq_ema_restart":
        # Some codes were restarted, and to the same batch vectors on both runs.
        codebook = np.asarray(stats8[STATS]["codebook"])
        rows = np.asarray(z).reshape(-1, 8)
        restarted = [np.min(np.abs(rows - c).max(1)) == 0 for c in codebook]
        assert 0 < sum(restarted) < len(codebook)
