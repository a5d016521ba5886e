"""Default configs of the tokenizer trainer, one per modality, with variants.

configs/tokenizer_<modality>.py call `tokenizer_config(modality, arg)`; the arg string
picks variants: `quantizer=fsq|vq|lfq|bsq|rvq`, `model=conv|vit`, `size=tiny|small|base`,
`resolution=64`, and the flags `quick` (a short run for smoke tests and CPUs), `gan` (PatchGAN
hinge loss with VQGAN's adaptive weight from a third of the run on; rgb only) and `bf16`
(bfloat16 compute, float32 parameters). A perceptual term needs local weights:
`--config.loss.perceptual_weight=0.1 --config.loss.perceptual_path=/path/to/features.npz`.
"""

import ml_collections

from mmjax.data.scenes.constants import IMAGE_MODALITIES as MODALITIES

QUANTIZERS = {
    # 10-bit-ish codebooks; `dim` is filled from the model's latent width.
    "fsq": dict(type="fsq", levels=(8, 5, 5, 5)),
    "vq": dict(
        type="vq", codebook_size=1024, kmeans_init=True, restart_dead_codes=True, dead_threshold=0.1
    ),
    "lfq": dict(type="lfq", dim=10, entropy_weight=0.05),
    "bsq": dict(type="bsq", dim=10, entropy_weight=0.05),
    "rvq": dict(
        type="rvq",
        depth=2,
        base=dict(
            type="vq",
            codebook_size=256,
            kmeans_init=True,
            restart_dead_codes=True,
            dead_threshold=0.1,
        ),
    ),
}


VARIANTS = ("quantizer", "model", "size", "resolution", "quick", "gan", "bf16")


def parse_arg(arg: str | None) -> dict:
    """'quantizer=fsq,quick' -> {'quantizer': 'fsq', 'quick': True}."""
    out = {}
    for part in filter(None, (arg or "").split(",")):
        key, _, value = part.partition("=")
        out[key.strip()] = value.strip() if value else True
    return out


def tokenizer_config(modality: str, arg: str | None = None) -> ml_collections.ConfigDict:
    if modality not in MODALITIES:
        raise ValueError(f"tokenizer modality must be one of {MODALITIES}, got {modality!r}")
    v = parse_arg(arg)
    unknown = sorted(set(v) - set(VARIANTS))
    if unknown:
        raise ValueError(f"unknown config variant(s) {unknown}; known: {', '.join(VARIANTS)}")
    qname = v.get("quantizer", "fsq")
    if qname not in QUANTIZERS:
        raise ValueError(f"quantizer must be one of {tuple(QUANTIZERS)}, got {qname!r}")
    quick = bool(v.get("quick", False))
    resolution = int(v.get("resolution", 64))

    c = ml_collections.ConfigDict()
    c.trainer = "tokenizer"
    c.modality = modality
    c.seed = 0
    c.total_steps = 60 if quick else 3000
    c.log_every = 10 if quick else 50
    c.max_bad_steps = 20
    c.data = dict(
        source="scenes",
        split="train",
        resolution=resolution,
        num_examples=100_000,
        batch_size=16 if quick else 32,
        seed=0,
        shuffle=True,
        crop_size=None,
        flip_prob=0.5,
        worker_count=0,
        prefetch=2,
    )
    c.model = dict(
        type=v.get("model", "conv"),
        size=v.get("size", "tiny"),
        compute_dtype="bfloat16" if v.get("bf16") else "float32",
    )
    if c.model.type == "conv":  # "patch": codes that see only their own patch
        c.model.encoder = "conv"
    if "dim" in QUANTIZERS[qname]:  # lfq/bsq: one latent channel per bit of the code
        width = "z_channels" if c.model.type == "conv" else "z_dim"
        c.model[width] = QUANTIZERS[qname]["dim"]
    gan = bool(v.get("gan", False))
    if gan and modality != "rgb":
        raise ValueError(f"the gan variant is for rgb tokenizers, not {modality!r}")
    c.loss = dict(
        perceptual_weight=0.0,
        perceptual_path="",
        gan_weight=0.1 if gan else 0.0,
        gan_start=0,
        adaptive_max_weight=1e4,
    )
    c.loss.gan_start = c.get_ref("total_steps") // 3  # follows --config.total_steps
    c.discriminator = dict(channels=32, num_layers=2, learning_rate=1e-4, b1=0.5, b2=0.9)
    c.quantizer = dict(QUANTIZERS[qname])
    c.optimizer = dict(
        learning_rate=1e-3,
        warmup_steps=10 if quick else 200,
        end_lr_factor=0.1,
        b1=0.9,
        b2=0.99,
        weight_decay=1e-4,
        grad_clip=1.0,
        ema_decay=0.0,
    )
    c.mesh = dict(data=-1, fsdp=1, tensor=1)
    c.sharding_rules = None  # None: mmjax.parallel.DEFAULT_RULES
    c.checkpoint = dict(every=30 if quick else 500, keep=3, async_save=True)
    # usage_images: codebook usage over this many validation images (64 tokens each at 64 px)
    c.eval = dict(
        every=30 if quick else 500,
        num_images=8,
        usage_images=64 if quick else 1024,
        split="validation",
    )
    return c
