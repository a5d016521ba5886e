"""Small trainer configs for the multi-process tests (tests/test_multiprocess.py), run through
the real command line in every process:

    python -m mmjax.train --config=tests/multiprocess_config.py:tokenizer --workdir=DIR
    python -m mmjax.train --config=tests/multiprocess_config.py:fourm --workdir=DIR \\
        --config.data.path=TRAIN --config.data.val_path=VAL

Models far below the `quick` presets, so that several short runs (each one compiling its
steps, two processes sharing the test machine's cores) fit in a test. A constant learning
rate: a run to N steps resumed with --config.total_steps=2N follows the same schedule as a
run straight to 2N.
"""

from mmjax.configs import fourm, tokenizer_rgb


def _common(c, steps: int):
    c.total_steps = steps
    c.log_every = 1
    c.eval.every = steps
    c.checkpoint.every = 2
    c.checkpoint.async_save = False
    c.data.batch_size = 8
    c.optimizer.warmup_steps = 0
    c.optimizer.end_lr_factor = 1.0
    return c


def get_config(arg: str = "tokenizer"):
    if arg == "tokenizer":
        c = tokenizer_rgb.get_config("quantizer=fsq,model=vit,quick,resolution=32")
        # 32 px, patch 8 -> 4 x 4 tokens; a one-block ViT compiles in seconds.
        c.model.update(dict(patch_size=8, width=32, depth=1, heads=2, mlp_dim=64, z_dim=8))
        c.eval.num_images = 8
        c.eval.usage_images = 0
        c = _common(c, 4)
        c.mesh = dict(data=1, fsdp=-1, tensor=1)  # parameters sharded across processes
        return c
    if arg == "fourm":
        c = fourm.get_config("quick")
        c.model.update(dict(width=64, encoder_depth=1, decoder_depth=1, num_heads=2))
        c.masking.input_budget = c.masking.target_budget = 16
        c.eval.num_examples = 16
        c.eval.batch_size = 8
        c = _common(c, 4)
        c.mesh = dict(data=2, fsdp=-1, tensor=1)  # a process per data row
        return c
    raise ValueError(f"multiprocess_config: expected 'tokenizer' or 'fourm', got {arg!r}")
