"""Tokenizer for the `rgb` images of the embedded scenes: a conv autoencoder with an FSQ
quantizer, 64 px images -> 8 x 8 tokens.

    python -m mmjax.train --config=configs/tokenizer_rgb.py --workdir=/tmp/tok_rgb
    python -m mmjax.train --config=configs/tokenizer_rgb.py:quantizer=vq,quick --workdir=/tmp/q

Variants (comma-separated): quantizer=fsq|vq|lfq|bsq|rvq|msrvq, model=conv|vit,
size=tiny|small|base, resolution=64|128|256, and the flags quick (a short run for smoke tests
and CPUs), gan (PatchGAN hinge loss with VQGAN's adaptive weight from a third of the run on)
and bf16 (bfloat16 compute, float32 parameters). msrvq (VAR) quantizes the latent grid as a
pyramid of scales 1, 2, 4, ... up to its side (85 tokens at 64 px), the tokens of
`configs/nextscale.py`. A perceptual term needs local weights:
`--config.loss.perceptual_weight=0.1 --config.loss.perceptual_path=/path/to/features.npz`.
Your own images (PNG/JPEG/WebP of any size, a directory searched recursively or a glob,
local or gs://; 1% held out for validation by file-name hash unless
`--config.data.eval_path=DIR` names validation images):

    python -m mmjax.train --config=configs/tokenizer_rgb.py --workdir=/tmp/tok_photos \
        --config.data.source=image_folder --config.data.path=/data/photos

Training crops are random resized crops (`--config.data.crop_scale`, `crop_ratio`,
`flip_prob`; `--config.data.resize=center_crop` for none), evaluation the centre crop.
Other data: `--config.data.source=array_record --config.data.paths=/data/train-*.array_record`,
or `--config.data.source=tfds --config.data.tfds_name=NAME --config.data.image_key=image`.
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
    pyramid_scales,
    tokenizer_data,
)
from mmjax.tokenizers import build_autoencoder

VARIANTS = ("quantizer", "model", "size", "resolution", "quick", "gan", "bf16")


def get_config(arg=None):
    v = parse_arg(arg, VARIANTS)
    quick, gan = bool(v.get("quick")), bool(v.get("gan"))
    quantizer = choose(v, "quantizer", QUANTIZERS, "fsq")

    c = ml_collections.ConfigDict()
    c.trainer = "tokenizer"
    c.modality = "rgb"
    c.seed = 0
    c.total_steps = 60 if quick else 3000
    c.log_every = 10 if quick else 50
    c.max_bad_steps = 20  # stop after this many non-finite steps in a row
    c.data = tokenizer_data(int(v.get("resolution", 64)), quick)
    c.model = dict(
        type=choose(v, "model", ("conv", "vit"), "conv"),
        size=choose(v, "size", ("tiny", "small", "base"), "tiny"),
        compute_dtype="bfloat16" if v.get("bf16") else "float32",
    )
    if c.model.type == "conv":
        c.model.encoder = "conv"  # or "patch": codes that see only their own patch
    c.quantizer = QUANTIZERS[quantizer]
    if "dim" in c.quantizer:  # lfq/bsq: one latent channel per bit of the code
        c.model["z_channels" if c.model.type == "conv" else "z_dim"] = c.quantizer.dim
    if quantizer == "msrvq":  # VAR's scale pyramid ends at the latent grid's side
        side = c.data.resolution // build_autoencoder(c.model, c.quantizer, "rgb").downsample_factor
        c.quantizer.scales = pyramid_scales(side)
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
        num_images=8,  # validation images reconstructed, scored and drawn
        usage_images=64 if quick else 1024,  # codebook usage over this many (0 = off)
        split="validation",
        # SSIM and MS-SSIM are logged with PSNR; LPIPS and rFID (over the num_images images:
        # raise num_images, e.g. to 2048, for an rFID worth reading) when given weights files
        # (python -m mmjax.eval.lpips convert / mmjax.eval.fid convert; "" = off).
        lpips_weights="",
        fid_weights="",
    )
    return c
