"""4M with the architecture and modalities of a released ml-4m model (4M-7, 4M-21; B, L, XL).

    python launch/aot_compile.py --config=configs/fourm_ml4m.py:model=4M-21_XL,fsdp,bf16 \
        --topology=v5p:2x2x2 --step=generate_maskgit
    python -m mmjax.train --config=configs/fourm_ml4m.py:model=4M-7_B_CC12M --workdir=/tmp/ft \
        --config.model_init=/tmp/fourm7b --config.data.path=/tmp/pretok

Variants (comma-separated): model=<a mmjax.convert.ml4m_released.MODELS name> and the flags
of configs/fourm.py (quick, bf16, remat, fsdp). The model and registry are what
`python -m mmjax.convert ml4m` builds from that model's file (ml-4m's modality names, text
vocabulary of 30k, image tokens at 224 px), so the memory of a converted model on a TPU
topology is known before it is downloaded; `model_init` starts a fine-tuning run from a
converted bundle. Every other section is configs/fourm.py's; masking.budget_rule / span_rule
"ml4m" mask as ml-4m trained these models.
"""

from mmjax.configs import fourm
from mmjax.configs.common import choose, parse_arg
from mmjax.convert.ml4m_released import MODELS, released_fourm

VARIANTS = ("model", "quick", "bf16", "remat", "fsdp")
SIZES = {"B": "base", "L": "large", "XL": "xlarge"}


def get_config(arg=None):
    v = parse_arg(arg, VARIANTS)
    name = choose(v, "model", tuple(MODELS), "4M-21_B")
    flags = [k for k in ("quick", "bf16", "remat", "fsdp") if v.get(k)]
    c = fourm.get_config(",".join([f"size={SIZES[name.split('_')[1]]}", *flags]))
    model, registry = released_fourm(name)
    c.model.update(model)
    c.modalities = registry
    return c
