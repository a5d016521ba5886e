"""The released ml-4m models as configs (mmjax.convert.ml4m_released, configs/fourm_ml4m.py):
trunk sizes against the parameter counts ml-4m publishes for its models, the modality table
against the reference's copy of ml-4m's modality_info, and the config a trainer builds."""

import flax.linen as nn
import jax
import numpy as np
import pytest

from mmjax.convert.ml4m_released import MODELS, released_config, released_fourm
from mmjax.fourm import build_fourm, build_registry
from mmjax.fourm.model import abstract_variables
from tests import ml4m_reference_config as ref

# ml-4m's model zoo (README): parameters of the encoder-decoder trunk, 4M-7 B / L / XL.
PUBLISHED = {"B": (198e6, 0.005), "L": (705e6, 0.005), "XL": (2.8e9, 0.02)}


def _trunk_params(name: str) -> int:
    model_config, registry = released_fourm(name)
    model = build_fourm(model_config, build_registry(registry))
    params = nn.unbox(abstract_variables(model))["params"]
    blocks = [v for k, v in params.items() if k.startswith(("encoder_blocks", "decoder_blocks"))]
    return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(blocks))


@pytest.mark.parametrize("size", ["B", "L", "XL"])
def test_trunk_sizes_are_the_published_ones(size):
    want, rtol = PUBLISHED[size]
    got = _trunk_params(f"4M-7_{size}_CC12M")
    assert abs(got - want) <= rtol * want, (size, got, want)
    assert _trunk_params(f"4M-21_{size}") == got  # same trunks, more modalities


@pytest.mark.parametrize("name", ["4M-7_B_CC12M", "4M-21_XL"])
def test_registry_is_ml4m_modality_table(name):
    config = released_config(f"EPFL-VILAB/{name}")
    _, registry = released_fourm(name)
    info = ref.ml4m_modality_info(config)
    assert sorted(registry) == sorted(info)
    for mod, entry in registry.items():
        want = info[mod]
        if want["type"] == "img":
            assert tuple(entry["grid"]) == want["grid"], mod
            assert entry.get("learned_positions", False) == (not want["sincos_pos_emb"]), mod
        if want["type"] == "seq_emb":
            assert (entry["max_length"], entry["embed_dim"]) == (
                want["max_length"],
                want["orig_emb_dim"],
            )
        elif want["encoder"] == "pixels":
            assert (entry["patch_size"], entry["channels"]) == (16, want["num_channels"])
        else:
            assert entry["vocab_size"] == want["vocab_size"], mod
            assert entry.get("max_length") == want.get("max_length"), mod


def test_unknown_model_is_refused_by_name():
    with pytest.raises(ValueError, match=r"4M-21_XXL.*4M-21_B"):
        released_config("4M-21_XXL")


def test_config_file_builds_the_released_model():
    from mmjax.configs import load
    from mmjax.train.registry import get_trainer

    config = load("fourm_ml4m", "model=4M-21_B,quick")
    trainer = get_trainer(config)(config)  # no workdir, no data: what aot_compile builds
    assert set(trainer.registry.names) == set(MODELS["4M-21_B"]["domains_in"])
    assert trainer.model.width == 768 and trainer.model.mlp_dim == int(2 * 4 * 768 / 3)
    assert trainer.model.decoder_tables and not trainer.model.qkv_bias
