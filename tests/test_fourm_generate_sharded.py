"""4M generation and scoring on a device mesh against the single-device run: on the 8 forced
CPU devices as (data=2, fsdp=2, tensor=2), with the parameters sharded by the logical rules,
the batch over the data axes and the KV cache over batch and heads, MaskGIT, ROAR and AR with
the cache, all with classifier-free guidance, give the same tokens at temperature 0 and the
same log-probabilities; scoring likewise. The generation steps also compile for a TPU slice."""

import os
from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mmjax.fourm import build_fourm, example_batch
from mmjax.fourm.generation.conditioning import condition_blocks, normalize_conditioning
from mmjax.fourm.generation.generate import START_ID, GenerationStep, generate
from mmjax.fourm.generation.placement import place_batch, place_variables
from mmjax.fourm.generation.scoring import image_token_log_probs
from mmjax.fourm.generation.steps import decode_step
from mmjax.parallel import DEFAULT_RULES, create_mesh
from tests.test_fourm_generate import REG, tiny_model

B = 4  # divides the 4 data-parallel devices
BATCH = ("data", "fsdp")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def setup():
    model, variables = tiny_model()
    rng = np.random.default_rng(0)
    cond = {"rgb": rng.random((B, 8, 8, 3)).astype(np.float32)}
    return model, variables, cond


@pytest.fixture(scope="module")
def tp_mesh():
    """Batch over data x fsdp, parameters over fsdp (embed) and tensor (heads, mlp, vocab)."""
    return create_mesh({"data": 2, "fsdp": 2, "tensor": 2})


def test_variables_are_placed_by_the_rules(setup, tp_mesh):
    model, variables, _ = setup
    ruled, placed = place_variables(model, variables, tp_mesh)
    assert ruled.sharding_rules == DEFAULT_RULES and model.sharding_rules is None
    kernel = placed["params"]["decoder_blocks_0"]["self_attn"]["query"]["kernel"]  # [64, 2, 32]
    assert kernel.sharding.spec == P("fsdp", "tensor", None)
    assert kernel.addressable_shards[0].data.shape == (32, 1, 32)
    np.testing.assert_array_equal(
        kernel, variables["params"]["decoder_blocks_0"]["self_attn"]["query"]["kernel"]
    )
    other = build_fourm({"size": "tiny", "width": 32, "num_heads": 2}, REG)
    shapes = nn.unbox(jax.eval_shape(other.init, jax.random.key(0), example_batch(REG, 1, 4, 4)))
    with pytest.raises(ValueError, match="do not match the model's parameters"):
        place_variables(model, shapes, tp_mesh)


def test_generation_on_the_mesh_equals_single_device(setup, tp_mesh):
    model, variables, cond = setup
    schedule = [
        GenerationStep("tok_a", scheme="maskgit", steps=4, temperature=0.0, guidance=2.0),
        GenerationStep("tok_b", scheme="roar", steps=3, temperature=0.0, guidance=2.0),
        GenerationStep(
            "cap", scheme="ar", temperature=0.0,
            guidance=((("rgb",), 1.5), (("tok_a", "tok_b"), 0.5)),
        ),
    ]  # fmt: skip
    key = jax.random.key(3)
    want = generate(model, variables, REG, cond, schedule, key, eos_id=None)
    got, history = generate(
        model, variables, REG, cond, schedule, key, eos_id=None, mesh=tp_mesh, return_history=True
    )
    for name, k in (("tok_a", 2), ("tok_b", 2), ("cap", 3)):
        assert len(history[name]["variants"]) == k  # guidance ran
        assert len(got[name].sharding.device_set) == 8, name  # computed on the mesh
        np.testing.assert_array_equal(np.asarray(got[name]), np.asarray(want[name]), err_msg=name)
    # the outputs are not degenerate: the greedy random model draws varied tokens
    assert len(np.unique(np.asarray(want["tok_a"]))) > 3
    assert history["cap"]["steps_run"] == REG["cap"].max_length


def _cached_decoding(model, variables, blocks, steps: int):
    """Greedy AR decoding of `cap` with the KV cache: (log-probs [steps, B, V], final cache)."""
    vocab, length, rows = REG["cap"].vocab_size, REG["cap"].max_length, B
    encode = jax.jit(partial(model.apply, method=model.encode))
    context, cmask = encode(variables, blocks)
    init = jax.jit(partial(model.apply, method=model.init_cache), static_argnums=(1, 2))
    cache = init(variables, rows, length, context)
    token, out = jnp.full((rows,), START_ID, jnp.int32), []
    for i in range(steps):
        logits, cache = decode_step(
            variables, context, cmask, cache, token, jnp.int32(i), model=model,
            modality_id=REG.index("cap"),
        )  # fmt: skip
        logp = jax.nn.log_softmax(logits[:, :vocab].astype(jnp.float32), axis=-1)
        out.append(np.asarray(logp))
        token = jnp.argmax(logp, axis=-1).astype(jnp.int32)
    return np.stack(out), cache


def test_kv_cache_is_sharded_and_cached_log_probs_match(setup, tp_mesh):
    model, variables, cond = setup
    rng = np.random.default_rng(1)
    cond = {**cond, "tok_a": rng.integers(0, 24, (B, 16))}
    normalized, b = normalize_conditioning(REG, cond)
    blocks = condition_blocks(REG, normalized, ["rgb", "tok_a"], b)
    blocks.pop("block")
    want, _ = _cached_decoding(model, variables, blocks, 4)
    ruled, placed = place_variables(model, variables, tp_mesh)
    with jax.set_mesh(tp_mesh):
        got, cache = _cached_decoding(ruled, placed, place_batch(blocks, tp_mesh, DEFAULT_RULES), 4)
    # [B, L, heads, head_dim]: batch over the data axes, heads over tensor
    for name in ("k", "v", "cross_k", "cross_v"):
        want_sharding = NamedSharding(tp_mesh, P(BATCH, None, "tensor", None))
        assert cache[name][0].sharding.is_equivalent_to(want_sharding, 4), name
        assert cache[name][1].addressable_shards[0].data.shape[::2] == (1, 1), name
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert np.ptp(want[..., 5:], axis=-1).min() > 0.1  # the log-probs are not flat


@pytest.mark.parametrize("batch", [B, 3])  # 3 does not divide the data axes: replicated
def test_scoring_on_the_mesh_equals_single_device(setup, tp_mesh, batch):
    model, variables, cond = setup
    rng = np.random.default_rng(2)
    cond = {"rgb": cond["rgb"][:batch], "cap": rng.integers(5, 40, (batch, 7))}
    tokens = rng.integers(0, 24, (batch, 4, 4))
    want = image_token_log_probs(model, variables, REG, cond, "tok_a", tokens)
    got = image_token_log_probs(model, variables, REG, cond, "tok_a", tokens, mesh=tp_mesh)
    assert isinstance(got, np.ndarray) and got.shape == (batch, 16)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert want.max() < 0 and np.ptp(want) > 0.5


@pytest.mark.tpu_aot
def test_generation_steps_compile_for_a_tpu_slice(aot_compile, capsys):
    """One MaskGIT step and one AR decode step with the KV cache of a tiny 4M, FSDP over a
    v5e:2x2 slice: the compiler's memory report, the parameters and the cache sharded."""
    from mmjax.configs import fourm

    module = aot_compile
    config = fourm.get_config("size=tiny,quick,fsdp")
    compiled, devices = module.compile_step(config, "v5e:2x2", "generate_maskgit")
    report = module.memory_report(compiled, devices)
    assert report["fits"] and report["per_chip_bytes"] > 0 and report["flops"] > 0, report
    variables = compiled.input_shardings[0][0]
    kernel = variables["params"]["decoder_blocks_0"]["self_attn"]["query"]["kernel"]
    assert kernel.spec[0] == "fsdp"
    compiled, _ = module.compile_step(config, "v5e:2x2", "generate_ar")
    cache = compiled.input_shardings[0][3]
    assert cache["k"][0].spec[0] == "fsdp" and cache["cross_v"][1].spec[0] == "fsdp"
    assert module.memory_report(compiled, devices)["fits"]
    with pytest.raises(SystemExit):
        module.main([f"--config={ROOT}/configs/tokenizer_rgb.py", "--step=generate_ar"])
    assert "needs a 4M config" in capsys.readouterr().err
