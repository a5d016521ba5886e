"""Bad values into quantizers and tokenizers: out-of-range token ids, non-finite inputs,
integer images. Each gives a clear error (concrete values) or the documented result
(traced values, NaN rows), never a normal-looking wrong answer."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.eval.image_metrics import psnr, psnr_per_image
from mmjax.quantizers import (
    FSQ,
    LFQ,
    STATS,
    MultiScaleResidualQuantizer,
    ResidualQuantizer,
    VectorQuantizer,
    stats,
    valid_indices,
)
from tests.references import np_usage

D = 4
QUANTIZERS = {
    "vq": lambda: VectorQuantizer(37, D),
    "vq_factorized": lambda: VectorQuantizer(37, D, codebook_dim=2, update="grad"),
    "fsq": lambda: FSQ((10, 10, 10), dim=D),  # 1000 codes
    "lfq": lambda: LFQ(D),
    "bsq": lambda: LFQ(D, spherical=True),
    "rvq": lambda: ResidualQuantizer(VectorQuantizer(37, D), depth=3),
    "rfsq": lambda: ResidualQuantizer(FSQ((5, 4), dim=D), depth=2),
}
ROW_WISE = list(QUANTIZERS)  # each row is quantized on its own
ALL = [*QUANTIZERS, "msvq"]


def _make(name):
    if name == "msvq":
        return MultiScaleResidualQuantizer(VectorQuantizer(37, D), scales=(1, 2, 4))
    return QUANTIZERS[name]()


@pytest.fixture(scope="module")
def built():
    """{name: (module, variables)}, initialized on a normal batch."""
    z = jnp.asarray(np.random.default_rng(0).normal(size=(2, 4, 4, D)), jnp.float32)
    out = {}
    for name in ALL:
        m = _make(name)
        out[name] = (m, jax.jit(m.init)(jax.random.key(0), z))
    return out


def _indices(name, m, values):
    """An index array of the quantizer's token layout holding `values`."""
    values = np.asarray(values, np.int32)
    if name == "msvq":
        tokens = np.zeros((1, m.num_tokens), np.int32)
    elif name.startswith("r"):
        tokens = np.zeros((1, len(values), m.depth), np.int32)
    else:
        tokens = np.zeros((1, len(values)), np.int32)
    flat = tokens.reshape(-1)
    flat[: len(values)] = values
    return flat.reshape(tokens.shape)


# ------------------------------------------------------------------ out-of-range token ids
@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("where", ["eager", "numpy"])
def test_out_of_range_indices_raise_when_concrete(built, name, where):
    m, v = built[name]
    k = m.codebook_size
    for bad in (k, 5000 + k, -1, -k - 3):
        tokens = _indices(name, m, [0, bad, 1])
        tokens = jnp.asarray(tokens) if where == "eager" else tokens
        with pytest.raises(ValueError) as err:
            m.apply(v, tokens, method="decode_indices")
        msg = str(err.value)
        assert "indices" in msg and f"[0, {k})" in msg and f"codebook_size={k}" in msg, msg
        # The range reported is that of the array (residual: of the first bad level).
        levels = [tokens[..., i] for i in range(m.depth)] if name.startswith("r") else [tokens]
        part = np.asarray(next(t for t in levels if bad in np.asarray(t)))
        assert f"got values in [{part.min()}, {part.max()}]" in msg, msg
        if bad == -1:
            assert "-1 marks an input vector that was not finite" in msg


def test_residual_error_names_the_level(built):
    m, v = built["rvq"]
    tokens = np.zeros((1, 3, 3), np.int32)
    tokens[0, 1, 2] = 37
    with pytest.raises(ValueError, match=r"indices\[\.\.\., 2\] \(level 2\) must lie in \[0, 37\)"):
        m.apply(v, tokens, method="decode_indices")


def test_fsq_1000_codes_refuses_5000():
    fsq = FSQ((10, 10, 10))
    with pytest.raises(ValueError, match=r"FSQ: indices must lie in \[0, 1000\).*\[5000, 5000\]"):
        fsq.apply({}, np.array([5000]), method="decode_indices")


@pytest.mark.parametrize("name", ALL)
def test_out_of_range_indices_decode_to_nan_under_jit(built, name):
    m, v = built[name]
    k = m.codebook_size
    good = _indices(name, m, [0, 1, 2, 3])
    bad = _indices(name, m, [0, k, 2, -1])
    decode = jax.jit(lambda t: m.apply(v, t, method="decode_indices"))
    ref = np.asarray(m.apply(v, good, method="decode_indices"))
    got = np.asarray(decode(bad))
    ok = np.asarray(valid_indices(bad, k))
    np.testing.assert_array_equal(ok, (bad >= 0) & (bad < k))
    if name == "msvq":  # bad tokens of the 2 x 2 scale spread NaN once upsampled
        assert np.isnan(got).any() and np.isfinite(ref).all()
        return
    # A token (all its levels, for residual) decodes to NaN iff it is invalid.
    token_ok = ok.reshape(ok.shape[0], ok.shape[1], -1).all(-1)
    assert np.isnan(got[~token_ok]).all()
    np.testing.assert_array_equal(got[token_ok], ref[token_ok])


# ---------------------------------------------------------------------- non-finite inputs
def _batch_with_bad_rows(seed=1):
    z = np.random.default_rng(seed).normal(size=(2, 4, 4, D)).astype(np.float32)
    z[0, 1, 2, 3] = np.nan
    z[1, 3, 0, 0] = np.inf
    z[1, 0, 1, 1] = -np.inf
    bad = ~np.isfinite(z).all(-1)
    return z, bad


@pytest.mark.parametrize("name", ROW_WISE)
def test_non_finite_rows_get_minus_one_and_nan(built, name):
    m, v = built[name]
    z, bad = _batch_with_bad_rows()
    out = jax.jit(lambda z: m.apply(v, z))(z)
    idx, q = np.asarray(out.indices), np.asarray(out.quantized)
    idx_rows = idx if idx.ndim == 4 else idx[..., None]  # [..., depth]
    np.testing.assert_array_equal(idx_rows[bad], -1)
    assert np.isnan(q[bad]).all()  # NaN propagates: never a real code (e.g. the last one)
    # Every other row is quantized as it would be without the bad rows.
    clean = m.apply(v, z[~bad][None])
    np.testing.assert_array_equal(idx[~bad], np.asarray(clean.indices)[0])
    np.testing.assert_array_equal(q[~bad], np.asarray(clean.quantized)[0])
    assert float(out.metrics["nonfinite_inputs"]) == pytest.approx(bad.mean())
    assert float(clean.metrics["nonfinite_inputs"]) == 0.0
    # Usage statistics cover the valid rows only.
    for key in ("usage", "perplexity"):
        np.testing.assert_allclose(out.metrics[key], clean.metrics[key], rtol=1e-6)
    if idx.ndim == 3:
        usage, perplexity = np_usage(idx[~bad], m.codebook_size)
        np.testing.assert_allclose(out.metrics["usage"], usage, rtol=1e-6)
        np.testing.assert_allclose(out.metrics["perplexity"], perplexity, rtol=1e-5)
    # -1 decodes (under jit) to the NaN that __call__ produced.
    dec = jax.jit(lambda t: m.apply(v, t, method="decode_indices"))(out.indices)
    assert np.isnan(np.asarray(dec)[bad]).all()


def test_multiscale_counts_non_finite_inputs(built):
    m, v = built["msvq"]
    z, bad = _batch_with_bad_rows()
    out = m.apply(v, z)
    assert np.isnan(np.asarray(out.quantized)[bad]).all()
    finest = np.asarray(out.indices)[:, -16:].reshape(2, 4, 4)
    np.testing.assert_array_equal(finest[bad], -1)
    assert float(out.metrics["nonfinite_inputs"]) > 0
    assert float(m.apply(v, np.nan_to_num(z, posinf=0, neginf=0)).metrics["nonfinite_inputs"]) == 0


@pytest.mark.parametrize("update", ["ema", "grad"])
def test_vq_training_ignores_non_finite_rows(update):
    z, bad = _batch_with_bad_rows(2)
    rngs = {"quantizer": jax.random.key(1)}

    def step(vq, z):
        v = vq.init(jax.random.key(0), np.nan_to_num(z))
        fn = jax.jit(lambda v, z: vq.apply(v, z, train=True, mutable=[STATS], rngs=rngs))
        return fn(v, z)

    # The statistics (EMA codebook, cluster sizes) see exactly the valid rows.
    vq = VectorQuantizer(8, D, update=update, ema_decay=0.5)
    out, new = step(vq, z)
    _, clean = step(vq, z[~bad])
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), new, clean)
    assert float(out.metrics["nonfinite_inputs"]) == pytest.approx(bad.mean())
    # Dead-code restarts (every code dead at threshold 100) never draw a NaN row.
    vq = VectorQuantizer(32, D, update=update, restart_dead_codes=True, dead_threshold=100.0)
    for seed in range(3):
        rngs = {"quantizer": jax.random.key(seed)}
        _, new = step(vq, z)
        for leaf in jax.tree.leaves(new):
            assert np.isfinite(np.asarray(leaf)).all()


def test_usage_statistics_skip_minus_one_on_both_paths(monkeypatch):
    idx = jnp.asarray([3, -1, 3, 5, -1, 0, 5, 5], jnp.int32)
    usage, perplexity = np_usage(np.asarray(idx)[np.asarray(idx) >= 0], 8)
    hist = stats.code_usage_metrics(idx, 8)
    monkeypatch.setattr(stats, "HISTOGRAM_MAX_CODES", 4)  # the sort-based path
    sort = stats.code_usage_metrics(idx, 8)
    for got in (hist, sort):
        np.testing.assert_allclose(got["usage"], usage, rtol=1e-6)
        np.testing.assert_allclose(got["perplexity"], perplexity, rtol=1e-6)


# -------------------------------------------------------------- tokenizer encode / decode
TOK_MODEL = {"type": "conv", "size": "tiny", "channels": 8, "channel_mult": [1, 1, 2, 2]}
TOK_QUANT = {"type": "fsq", "levels": [5, 5, 4, 4]}  # 400 codes


@pytest.fixture(scope="module")
def tokenizers(untrained_tokenizers):
    from mmjax.tokenizers import Tokenizer

    dirs = untrained_tokenizers(("rgb", "depth"), TOK_MODEL, TOK_QUANT, 32)
    return {m: Tokenizer.load(d) for m, d in dirs.items()}


@pytest.mark.parametrize("bad", [400, 5000, -1])
@pytest.mark.parametrize("kind", ["numpy", "jax"])
def test_tokenizer_decode_refuses_out_of_range_tokens(tokenizers, bad, kind):
    tok = tokenizers["rgb"]
    tokens = np.zeros((1, *tok.grid_shape), np.int32)
    tokens[0, 2, 1] = bad
    tokens = jnp.asarray(tokens) if kind == "jax" else tokens
    with pytest.raises(ValueError) as err:
        tok.decode(tokens)
    msg = str(err.value)
    assert "Tokenizer[rgb].decode: tokens must lie in [0, 400) (codebook_size=400)" in msg
    assert f"got values in [{min(bad, 0)}, {max(bad, 0)}]" in msg


def test_tokenizer_uint8_rgb_is_read_as_x_over_255(tokenizers):
    tok = tokenizers["rgb"]
    rng = np.random.default_rng(3)
    mask = rng.integers(0, 2, size=(2, 32, 32, 3)).astype(np.uint8)  # a 0/1 binary mask
    got = np.asarray(tok.encode(mask))
    np.testing.assert_array_equal(got, np.asarray(tok.encode(mask.astype(np.float32) / 255.0)))
    # ... which is not what the same 0/1 values mean as floats in [0, 1].
    assert not np.array_equal(got, np.asarray(tok.encode(mask.astype(np.float32))))
    full = rng.integers(0, 256, size=(2, 32, 32, 3)).astype(np.uint8)
    np.testing.assert_array_equal(tok.encode(full), tok.encode(full.astype(np.float32) / 255.0))


@pytest.mark.parametrize("dtype", [np.int32, np.uint16, bool])
def test_tokenizer_refuses_other_integer_images(tokenizers, dtype):
    images = np.ones((1, 32, 32, 3), dtype)
    with pytest.raises(
        TypeError,
        match=rf"Tokenizer\[rgb\]: images must be float values in "
        rf"\[0.0, 1.0\], got dtype {np.dtype(dtype).name}",
    ):
        tokenizers["rgb"].encode(images)


def test_tokenizer_refuses_uint8_depth_and_out_of_range_floats(tokenizers):
    with pytest.raises(TypeError, match=r"Tokenizer\[depth\]: .*got dtype uint8 \(uint8 is read"):
        tokenizers["depth"].encode(np.ones((1, 32, 32), np.uint8))
    with pytest.raises(ValueError, match=r"'rgb': values must lie in \[0.0, 1.0\], got \[0, 255\]"):
        tokenizers["rgb"].encode(np.zeros((1, 32, 32, 3), np.float32) + np.eye(32)[..., None] * 255)


# --------------------------------------------------------------------------- image metrics
def test_psnr_reads_uint8_as_full_scale():
    rng = np.random.default_rng(4)
    mask = rng.integers(0, 2, size=(2, 8, 8, 3)).astype(np.uint8)
    ref = rng.uniform(size=(2, 8, 8, 3))
    assert psnr(mask, ref) == psnr(mask / 255.0, ref)
    np.testing.assert_array_equal(psnr_per_image(ref, mask), psnr_per_image(ref, mask / 255.0))
    a = rng.integers(0, 256, size=(2, 8, 8, 3)).astype(np.uint8)
    b = rng.integers(0, 256, size=(2, 8, 8, 3)).astype(np.uint8)
    mse = np.mean((a.astype(np.float64) - b) ** 2)
    assert psnr(a, b, max_value=255.0) == pytest.approx(10 * np.log10(255.0**2 / mse), rel=1e-12)
    assert psnr(a, b) == pytest.approx(psnr(a, b, max_value=255.0), rel=1e-12)


@pytest.mark.parametrize("dtype", [np.int32, np.uint16, bool])
def test_psnr_refuses_other_integer_images(dtype):
    with pytest.raises(
        TypeError,
        match=rf"psnr: reconstruction must be float values in \[0, "
        rf"1.0\] or uint8, got dtype {np.dtype(dtype).name}",
    ):
        psnr(np.zeros((1, 8, 8, 3)), np.ones((1, 8, 8, 3), dtype))


@pytest.mark.parametrize("low, high", [(0.0, 255.0), (-1.0, 1.0)])
def test_psnr_refuses_floats_out_of_range(low, high):
    other = np.linspace(low, high, 2 * 8 * 8 * 3).reshape(2, 8, 8, 3)
    with pytest.raises(
        ValueError,
        match=r"psnr_per_image: reference values must lie in "
        r"\[0, 1.0\] \(max_value\)",
    ):
        psnr_per_image(other, np.zeros_like(other))
    # A slight overshoot of an unclipped reconstruction is accepted.
    assert np.isfinite(psnr(np.full((1, 4, 4, 3), 1.05), np.full((1, 4, 4, 3), 0.95)))
