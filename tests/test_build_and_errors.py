"""build_quantizer from configs, and clear errors for bad arguments and inputs."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mmjax.quantizers import (
    FSQ,
    LFQ,
    MultiScaleResidualQuantizer,
    ResidualQuantizer,
    VectorQuantizer,
    build_quantizer,
)
from mmjax.quantizers.stats import code_usage_metrics
from tests.references import np_usage


def test_build_every_type_from_config_dict():
    cfg = ml_collections.ConfigDict(
        dict(type="rvq", depth=2, base=dict(type="vq", codebook_size=16, dim=4, metric="cosine"))
    )
    q = build_quantizer(cfg)
    assert isinstance(q, ResidualQuantizer) and q.codebook_size == 16
    assert q.quantizer.metric == "cosine"
    assert build_quantizer({"type": "fsq", "bits": 16}).levels == (8, 8, 8, 5, 5, 5)
    fsq = build_quantizer({"type": "fsq", "levels": [4, 4]})
    assert isinstance(fsq, FSQ) and fsq.codebook_size == 16
    bsq = build_quantizer({"type": "bsq", "dim": 9})
    assert isinstance(bsq, LFQ) and bsq.spherical and bsq.codebook_size == 512
    ms = build_quantizer({"type": "msrvq", "scales": [1, 2], "base": {"type": "lfq", "dim": 3}})
    assert isinstance(ms, MultiScaleResidualQuantizer) and ms.scales == (1, 2)
    # The built module quantizes like the directly constructed one.
    z = jax.random.normal(jax.random.key(0), (10, 4))
    direct = VectorQuantizer(16, 4, metric="cosine")
    built = build_quantizer({"type": "vq", "codebook_size": 16, "dim": 4, "metric": "cosine"})
    v = direct.init(jax.random.key(1), z)
    np.testing.assert_array_equal(built.apply(v, z).indices, direct.apply(v, z).indices)


@pytest.mark.parametrize(
    "config, match",
    [
        ({"type": "vqq"}, "type must be one of"),
        ({"codebook_size": 3}, "type must be one of"),
        (
            {"type": "vq", "codebook_size": 8, "dim": 4, "decay": 0.9},
            r"unknown key\(s\) \['decay'\]",
        ),
        ({"type": "rvq", "depth": 2}, "needs a `base`"),
        ({"type": "fsq", "bits": 9}, "bits must be one of"),
    ],
)
def test_build_errors(config, match):
    with pytest.raises(ValueError, match=match):
        build_quantizer(config)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: VectorQuantizer(0, 4), "codebook_size must be an int >= 1"),
        (lambda: VectorQuantizer(8, 0), "dim must be an int >= 1"),
        (lambda: VectorQuantizer(8, 4, metric="dot"), "metric must be one of"),
        (lambda: VectorQuantizer(8, 4, update="adam"), "update must be one of"),
        (lambda: VectorQuantizer(8, 4, ema_decay=1.5), r"ema_decay must lie in \[0.0, 1.0\]"),
        (lambda: FSQ((8, 1, 5)), r"levels\[1\] must be an int >= 2"),
        (lambda: FSQ(()), "levels must list at least one"),
        (lambda: LFQ(31), "dim must be <= 30"),
        (lambda: LFQ(16, entropy_mode="exact"), "entropy_mode='exact'"),
        (lambda: ResidualQuantizer(FSQ((3,)), depth=0), "depth must be an int >= 1"),
        (lambda: MultiScaleResidualQuantizer(FSQ((3,)), scales=(2, 1)), "strictly increasing"),
    ],
)
def test_bad_arguments_name_the_argument(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize(
    "q", [VectorQuantizer(8, 4), FSQ((3, 3, 3, 3)), LFQ(4)], ids=lambda q: type(q).__name__
)
def test_bad_inputs_name_the_input(q):
    v = q.init(jax.random.key(0), jnp.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"z must have shape \[\.\.\., 4\]"):
        q.apply(v, jnp.zeros((2, 5)))
    with pytest.raises(TypeError, match="z must be a float array"):
        q.apply(v, jnp.zeros((2, 4), jnp.int32))
    with pytest.raises(TypeError, match="indices must be an integer array"):
        q.apply(v, jnp.zeros((2,), jnp.float32), method=q.decode_indices)


def test_usage_metrics_match_numpy():
    idx = jax.random.randint(jax.random.key(0), (1000,), 0, 300)
    m = code_usage_metrics(idx, 512)
    usage, perplexity = np_usage(idx, 512)
    np.testing.assert_allclose(m["usage"], usage, rtol=1e-6)
    np.testing.assert_allclose(m["perplexity"], perplexity, rtol=1e-5)
    one = code_usage_metrics(jnp.full((50,), 7), 16)
    np.testing.assert_allclose([one["usage"], one["perplexity"]], [1 / 16, 1.0], rtol=1e-6)


def test_usage_metrics_sort_path_matches_histogram_path(monkeypatch):
    from mmjax.quantizers import stats

    idx = jax.random.randint(jax.random.key(1), (777,), 0, 200)
    hist = stats.code_usage_metrics(idx, 256)
    monkeypatch.setattr(stats, "HISTOGRAM_MAX_CODES", 16)
    by_sort = stats.code_usage_metrics(idx, 256)
    for k in hist:
        np.testing.assert_allclose(by_sort[k], hist[k], rtol=1e-6)
