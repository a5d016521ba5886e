"""A flexible-length 1D tokenizer for the `rgb` images of the embedded scenes (TiTok /
FlexTok / One-D-Piece style): a ViT encoder with K learned register tokens, an FSQ quantizer
and a ViT decoder; 32 px images -> up to 32 tokens, ordered coarse to fine by nested dropout.

    python -m mmjax.train --config=configs/tokenizer_1d.py --workdir=/tmp/tok_1d
    python -m mmjax.train --config=configs/tokenizer_1d.py:keep=uniform,quick --workdir=/tmp/q

The exported bundle encodes any prefix length: `Tokenizer.load(DIR).encode(images,
num_tokens=8)` gives [B, 8] tokens, and `decode` takes any [B, k] with 1 <= k <= K.

Variants (comma-separated): quantizer=fsq|vq|lfq|bsq|rvq, size=tiny|small|base,
trunk=vit|mlp (registers in a ViT, or each token a readout of one hidden layer over the image
and an MLP decoder: `mmjax.tokenizers.flex1d_mlp`, the trunk that learns at CPU budgets),
keep=pow2|uniform|none (the nested-dropout distribution of kept lengths: powers of two up to
K, every length 1..K, or always K), resolution=32|64|128|256, and the flags quick (a short run
for smoke tests and CPUs), gan (PatchGAN hinge loss with VQGAN's adaptive weight from a
third of the run on) and bf16 (bfloat16 compute, float32 parameters). Registers are causal
(the first k tokens do not depend on later registers) unless
`--config.model.causal_registers=false`; `--config.model.num_registers=64` sets K.
"""

from mmjax.configs import tokenizer_rgb
from mmjax.configs.common import QUANTIZERS, choose, parse_arg
from mmjax.tokenizers.flex1d import KEEP_DISTRIBUTIONS
from mmjax.tokenizers.flex1d_autoencoder import FLEX1D_PRESETS, FLEX1D_TRUNKS

VARIANTS = ("quantizer", "size", "trunk", "keep", "resolution", "quick", "gan", "bf16")


def get_config(arg=None):
    """configs/tokenizer_rgb.py's run (data, losses, optimizer, evaluation) with the 1D model."""
    v = parse_arg(arg, VARIANTS)
    size = choose(v, "size", tuple(FLEX1D_PRESETS), "tiny")
    preset = FLEX1D_PRESETS[size]
    shared = [f"quantizer={choose(v, 'quantizer', QUANTIZERS, 'fsq')}"]
    shared += [f"resolution={int(v.get('resolution', 32))}"]
    shared += [k for k in ("quick", "gan", "bf16") if v.get(k)]
    c = tokenizer_rgb.get_config(",".join(shared))
    c.model = dict(
        type="flex1d",
        size=size,  # the trunk (mmjax.tokenizers.FLEX1D_PRESETS)
        image_size=0,  # the decoder's output side: follows data.resolution
        patch_size=preset["patch_size"],
        num_registers=preset["num_registers"],  # K: the most tokens per image
        causal_registers=True,  # register i sees patches and registers 0..i only
        keep=choose(v, "keep", KEEP_DISTRIBUTIONS, "pow2"),  # nested dropout in training
        compute_dtype="bfloat16" if v.get("bf16") else "float32",
        trunk=choose(v, "trunk", FLEX1D_TRUNKS, "vit"),
    )
    if c.model.trunk == "mlp":  # one hidden layer over the image; per-patch decoder features
        c.model.update(width=64, mlp_dim=1024)
    c.model.image_size = c.data.get_ref("resolution")
    if "dim" in c.quantizer:  # lfq/bsq: one latent channel per bit of the code
        c.model.z_dim = c.quantizer.dim
    return c
