"""`python -m mmjax.train --config=configs/X.py[:variants] --workdir=DIR [--config.key=value]`

The config's `trainer` field picks the trainer. Re-running the same command resumes from
the latest checkpoint in DIR. Multi-process runs (every process runs the same command) take
their settings from the environment: see `mmjax.parallel.distributed` and launch/README.md.
"""

from absl import app, flags
from ml_collections import config_flags

from mmjax.parallel import maybe_initialize

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config file")
_WORKDIR = flags.DEFINE_string("workdir", None, "directory for checkpoints, logs, exports")
flags.mark_flags_as_required(["config", "workdir"])

TRAINERS = ("tokenizer", "fourm")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    maybe_initialize()  # before anything touches the devices
    config = _CONFIG.value
    trainer = config.get("trainer", None)
    if trainer == "tokenizer":
        from mmjax.train.tokenizer_trainer import train_tokenizer

        final = train_tokenizer(config, _WORKDIR.value)
    elif trainer == "fourm":
        from mmjax.train.fourm_trainer import train_fourm

        final = train_fourm(config, _WORKDIR.value)
    else:
        raise app.UsageError(f"config.trainer must be one of {TRAINERS}, got {trainer!r}")
    print(" ".join(f"{k}={v:.4g}" for k, v in sorted(final.items())))


if __name__ == "__main__":
    app.run(main)
