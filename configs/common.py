"""What the experiment configs share: the variant-string parser, the quantizer presets, the
sections both trainers read (optimizer, mesh, sharding rules, checkpoint) and integer min/max
as FieldReference arithmetic (so a derived value follows a later `--config.total_steps=N`).

Every field has a typed default (no None), so each can be set with `--config.a.b=VALUE`. The
ranges of the numeric fields are checked when a trainer is built (`mmjax.train.config_checks`,
one rule per dotted field): a new numeric field gets its rule there.
"""

import ml_collections

from mmjax.parallel import DEFAULT_RULES

# Codebooks of about 10 bits; `dim` (lfq, bsq) is also the model's latent width.
QUANTIZERS = {
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
    # VAR's multi-scale residual tokens: one shared codebook over a pyramid of scales, the
    # last the latent grid's side (8 x 8 at 64 px: 1 + 4 + 16 + 64 = 85 tokens per image).
    "msrvq": dict(
        type="msrvq",
        scales=(1, 2, 4, 8),
        base=dict(
            type="vq",
            codebook_size=512,
            kmeans_init=True,
            restart_dead_codes=True,
            dead_threshold=0.1,
        ),
    ),
}


def pyramid_scales(side: int) -> tuple[int, ...]:
    """Side lengths 1, 2, 4, ... doubling up to the latent grid's `side` (which ends it)."""
    scales = [1]
    while scales[-1] * 2 < side:
        scales.append(scales[-1] * 2)
    return tuple(sorted({*scales, side}))


# mmjax.parallel.DEFAULT_RULES: logical axis name -> mesh axes (None: replicated). Data
# parallel over ('data', 'fsdp'), parameters over 'fsdp' on their embedding axis and over
# 'tensor' on their wide axes. On the command line a tuple of pairs:
# --config.sharding_rules="(('act_batch', ('data', 'fsdp')), ('embed', 'fsdp'), ...)".
SHARDING_RULES = DEFAULT_RULES


def parse_arg(arg: str | None, known: tuple) -> dict:
    """'quantizer=fsq,quick' -> {'quantizer': 'fsq', 'quick': True}; names outside `known`
    are refused."""
    out = {}
    for part in filter(None, (arg or "").split(",")):
        key, _, value = part.partition("=")
        out[key.strip()] = value.strip() if value else True
    unknown = sorted(set(out) - set(known))
    if unknown:
        raise ValueError(f"unknown config variant(s) {unknown}; known: {', '.join(known)}")
    return out


def choose(variants: dict, key: str, options, default: str) -> str:
    """variants[key] (or default), checked against `options`."""
    value = variants.get(key, default)
    if value not in options:
        raise ValueError(f"{key} must be one of {tuple(options)}, got {value!r}")
    return value


def optimizer(
    *,
    learning_rate: float,
    warmup_steps,
    end_lr_factor: float,
    b2: float,
    weight_decay: float,
    decay: str = "all",
) -> ml_collections.ConfigDict:
    """AdamW with linear warmup and cosine decay to learning_rate * end_lr_factor.

    decay: 'all' or 'matrices' (no weight decay on norms and biases); ema_decay > 0 keeps an
    EMA of the parameters; grad_clip > 0 clips the global gradient norm.
    """
    return ml_collections.ConfigDict(
        dict(
            learning_rate=learning_rate,
            warmup_steps=warmup_steps,
            end_lr_factor=end_lr_factor,
            b1=0.9,
            b2=b2,
            weight_decay=weight_decay,
            decay=decay,
            grad_clip=1.0,
            ema_decay=0.0,
        )
    )


def mesh(fsdp: bool = False) -> ml_collections.ConfigDict:
    """Mesh axis sizes per slice; -1 takes the slice's remaining devices: all on 'data', or all
    on 'fsdp'. dcn_* sizes: how many slices each axis spans (multislice: dcn_data=K)."""
    sizes = dict(data=1, fsdp=-1, tensor=1) if fsdp else dict(data=-1, fsdp=1, tensor=1)
    return ml_collections.ConfigDict(dict(**sizes, dcn_data=1, dcn_fsdp=1, dcn_tensor=1))


def checkpoint(every) -> ml_collections.ConfigDict:
    """Save every `every` steps, keep the last `keep`, write in the background."""
    return ml_collections.ConfigDict(dict(every=every, keep=3, async_save=True))


def tokenizer_data(resolution: int, quick: bool) -> ml_collections.ConfigDict:
    """The `data` section of the tokenizer configs: the source and its fields (see
    mmjax.data.sources; "" / () / {} are "not set"), the resize-and-crop policy
    (mmjax.data.resize) and the pipeline (mmjax.data.pipeline)."""
    return ml_collections.ConfigDict(
        dict(
            source="scenes",  # scenes | image_folder | array_record | tfds
            split="train",  # scenes, tfds: the split trained on
            eval_split="",  # scenes, tfds: validation split; "" = scenes' validation / hold-out
            resolution=resolution,  # the tokenizer's input size (scenes: rendered size)
            num_examples=100_000,  # scenes: epoch length (scene i is always the same)
            path="",  # image_folder: a directory (searched recursively) or a glob; gs:// ok
            eval_path="",  # image_folder, array_record: validation files; "" = hold-out
            validation_fraction=0.01,  # held out by file-name hash when no eval_path/split
            skip_bad_files=False,  # image_folder: skip (and count) undecodable files
            paths=(),  # array_record: files or glob patterns
            required_keys=(),  # array_record: features every record must hold
            tfds_name="",  # tfds: dataset name
            data_dir="",  # tfds: "" = the TFDS default
            image_key="",  # tfds: the image feature read as rgb (e.g. "image")
            keys={},  # tfds: mmjax name -> TFDS feature; {} = the TFDS names
            resize="auto",  # auto | random_resized_crop | center_crop | none
            crop_scale=(0.8, 1.0),  # random_resized_crop: area / (shorter side)**2
            crop_ratio=(0.9, 1.1),  # random_resized_crop: width / height
            batch_size=16 if quick else 32,  # global
            seed=0,
            shuffle=True,
            crop_size=0,  # resize=none: aligned random crop to this size; 0 = none
            flip_prob=0.5,
            worker_count=0,  # processes for the per-example work; 0 = in-process
            prefetch=2,
        )
    )


def ref_max(a, b):
    """max(a, b) of integers or integer FieldReferences, itself a FieldReference that follows
    later changes of its inputs."""
    return (a + b + abs(a - b)) // 2


def ref_min(a, b):
    """min(a, b) of integers or integer FieldReferences (see `ref_max`)."""
    return (a + b - abs(a - b)) // 2
