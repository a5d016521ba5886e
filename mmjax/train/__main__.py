"""`python -m mmjax.train --config=configs/X.py[:variants] --workdir=DIR [--config.key=value]`

The config's `trainer` field picks the trainer (`mmjax.train.registry`). Re-running the same
command resumes from the latest checkpoint in DIR. On SIGTERM (a preemption notice) the run
saves a checkpoint at the next step boundary and exits with status 0. Multi-process runs
(every process runs the same command) take their settings from the environment: see
`mmjax.parallel.distributed` and launch/README.md.

An error prints one line (`python -m mmjax.train: error: ...`) and exits with status 2 for a bad
command line or config (checked before any device is touched), 1 for a failure during the run;
`--verbose` prints the traceback too.
"""

import argparse
import sys

from mmjax.cli import REPORTED, VERBOSE_HELP, fail
from mmjax.parallel import maybe_initialize
from mmjax.train.config_checks import check_config
from mmjax.train.preemption import Preempted
from mmjax.train.registry import TRAINERS, add_config_argument, get_trainer, load_config

DESCRIPTION = (
    "Trains the model that the config's `trainer` field names "
    f"({', '.join(TRAINERS)}) and writes checkpoints, metrics, the resolved config and the "
    "final export to the workdir. Re-running the same command resumes from the latest "
    "checkpoint there."
)
EPILOG = (
    "Any config field can be overridden after the options: --config.KEY=VALUE, e.g. "
    "--config.total_steps=1000 --config.data.batch_size=64."
)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m mmjax.train",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        allow_abbrev=False,
    )
    add_config_argument(p)
    p.add_argument(
        "--workdir",
        required=True,
        default=argparse.SUPPRESS,
        metavar="DIR",
        help="directory for checkpoints, metrics, config.json and exports; local or gs:// "
        "(required)",
    )
    p.add_argument(
        "--verbose",
        action="store_true",
        help=VERBOSE_HELP,
    )
    return p


def main(argv=None) -> dict:
    p = parser()
    args, overrides = p.parse_known_args(sys.argv[1:] if argv is None else argv)
    try:  # the command line and the config: status 2, before any device is touched
        config, changed = load_config(args.config, overrides, p.prog)
        check_config(config)
        trainer_cls = get_trainer(config)
    except (ValueError, FileNotFoundError) as e:
        fail(p.prog, e, 2, args.verbose)
    distributed = maybe_initialize()  # before anything touches the devices
    import jax

    if distributed:  # every process says who it is, in its own log
        print(
            f"jax.distributed: process {jax.process_index()} of {jax.process_count()}, "
            f"{jax.local_device_count()} local of {jax.device_count()} devices",
            flush=True,
        )
    if jax.process_index() == 0:
        print(f"config: {args.config}", flush=True)
        shown = ", ".join(f"{k}={v!r}" for k, v in changed.items()) or "none"
        print(f"overrides: {shown}", flush=True)
    try:  # building the trainer checks what the config names (data, modalities, mesh)
        trainer = trainer_cls(config, args.workdir)
    except (ValueError, OSError) as e:
        fail(p.prog, e, 2, args.verbose)
    try:
        final = trainer.run()
    except Preempted as e:  # saved: a clean exit, so that schedulers see no failure
        print(f"{p.prog}: {e}", flush=True)  # in every process's log
        sys.exit(0)
    except REPORTED as e:  # a foreign workdir, non-finite training, ...: no traceback needed
        fail(p.prog, e, 1, args.verbose)
    if jax.process_index() == 0:
        print(" ".join(f"{k}={v:.4g}" for k, v in sorted(final.items())), flush=True)
    return final


if __name__ == "__main__":
    main()
