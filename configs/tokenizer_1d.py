"""A flexible-length 1D tokenizer for the `rgb` images of the embedded scenes (TiTok /
FlexTok / One-D-Piece style): a ViT encoder with K learned register tokens, an FSQ quantizer
and a ViT decoder; 32 px images -> up to 32 tokens, ordered coarse to fine by nested dropout.

    python -m mmjax.train --config=configs/tokenizer_1d.py --workdir=/tmp/tok_1d
    python -m mmjax.train --config=configs/tokenizer_1d.py:keep=uniform,quick --workdir=/tmp/q

The exported bundle encodes any prefix length: `Tokenizer.load(DIR).encode(images,
num_tokens=8)` gives [B, 8] tokens, and `decode` takes any [B, k] with 1 <= k <= K.

Variants (comma-separated): quantizer=fsq|vq|lfq|bsq|rvq, size=tiny|small|base,
keep=pow2|uniform|none (the nested-dropout distribution of kept lengths: powers of two up to
K, every length 1..K, or always K), resolution=32|64|128|256, and the flags quick (a short run
for smoke tests and CPUs), gan (PatchGAN hinge loss with VQGAN's adaptive weight from a
third of the run on) and bf16 (bfloat16 compute, float32 parameters). Registers are causal
(the first k tokens do not depend on later registers) unless
`--config.model.causal_registers=false`; `--config.model.num_registers=64` sets K.
"""

import ml_collections

from mmjax.configs.common import (
    QUANTIZERS,
    SHARDING_RULES,
    checkpoint,
    choose,
    mesh,
    optimizer,
    parse_arg,
    tokenizer_data,
)
from mmjax.tokenizers.flex1d import KEEP_DISTRIBUTIONS
from mmjax.tokenizers.flex1d_autoencoder import FLEX1D_PRESETS

VARIANTS = ("quantizer", "size", "keep", "resolution", "quick", "gan", "bf16")


def get_config(arg=None):
    v = parse_arg(arg, VARIANTS)
    quick, gan = bool(v.get("quick")), bool(v.get("gan"))
    quantizer = choose(v, "quantizer", QUANTIZERS, "fsq")
    size = choose(v, "size", tuple(FLEX1D_PRESETS), "tiny")
    preset = FLEX1D_PRESETS[size]

    c = ml_collections.ConfigDict()
    c.trainer = "tokenizer"
    c.modality = "rgb"
    c.seed = 0
    c.total_steps = 60 if quick else 3000
    c.log_every = 10 if quick else 50
    c.max_bad_steps = 20  # stop after this many non-finite steps in a row
    c.data = tokenizer_data(int(v.get("resolution", 32)), quick)
    c.model = dict(
        type="flex1d",
        size=size,  # the trunk (mmjax.tokenizers.FLEX1D_PRESETS)
        image_size=0,  # the decoder's output side: follows data.resolution
        patch_size=preset["patch_size"],
        num_registers=preset["num_registers"],  # K: the most tokens per image
        causal_registers=True,  # register i sees patches and registers 0..i only
        keep=choose(v, "keep", KEEP_DISTRIBUTIONS, "pow2"),  # nested dropout in training
        compute_dtype="bfloat16" if v.get("bf16") else "float32",
    )
    c.model.image_size = c.data.get_ref("resolution")
    c.quantizer = QUANTIZERS[quantizer]
    if "dim" in c.quantizer:  # lfq/bsq: one latent channel per bit of the code
        c.model.z_dim = c.quantizer.dim
    c.loss = dict(
        perceptual_weight=0.0,
        perceptual_path="",  # a local .npz (mmjax.tokenizers.perceptual)
        gan_weight=0.1 if gan else 0.0,
        gan_start=0,
        adaptive_max_weight=1e4,
    )
    c.loss.gan_start = c.get_ref("total_steps") // 3  # follows --config.total_steps
    c.discriminator = dict(channels=32, num_layers=2, learning_rate=1e-4, b1=0.5, b2=0.9)
    c.optimizer = optimizer(
        learning_rate=1e-3,
        warmup_steps=10 if quick else 200,
        end_lr_factor=0.1,
        b2=0.99,
        weight_decay=1e-4,
    )
    c.mesh = mesh()
    c.sharding_rules = SHARDING_RULES
    c.checkpoint = checkpoint(every=30 if quick else 500)
    c.eval = dict(
        every=30 if quick else 500,
        num_images=8,  # validation images reconstructed (from all K tokens), scored and drawn
        usage_images=64 if quick else 1024,  # codebook usage over this many (0 = off)
        split="validation",
        lpips_weights="",  # LPIPS / rFID weights files (see configs/tokenizer_rgb.py); "" = off
        fid_weights="",
    )
    return c
