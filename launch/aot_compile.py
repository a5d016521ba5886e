"""Compile a train step for a Cloud TPU topology on this (CPU) host and report whether it fits.

    python launch/aot_compile.py --config=configs/tokenizer_rgb.py:size=small --topology=v5e:2x2

Needs `jax[tpu]` installed (libtpu provides the real TPU compiler); no TPU is used. Prints
the per-chip memory from XLA's memory analysis, the chip's HBM, whether the step fits, and
the compiler's flop count. The mesh comes from `config.mesh` over the topology's chips.
"""

import argparse
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax

from mmjax.train.registry import add_config_argument, get_trainer, load_config

# HBM per chip, bytes.
HBM = {"TPU v4": 32e9, "TPU v5 lite": 16e9, "TPU v5": 95e9, "TPU v6 lite": 32e9}


def compile_step(config, topology: str):
    """(the compiled train step of the trainer `config.trainer` names, the topology's devices)."""
    from jax.experimental import topologies

    trainer_cls = get_trainer(config)
    devices = topologies.get_topology_desc(platform="tpu", topology_name=topology).devices
    trainer = trainer_cls(config, devices=devices)  # no workdir: nothing is written
    return trainer.lower_train_step().compile(), devices


def memory_report(compiled, devices) -> dict:
    """Per-chip memory from XLA's memory analysis, the chip's HBM, whether the step fits, and
    the compiler's flop count."""
    mem = compiled.memory_analysis()
    per_chip = (
        mem.argument_size_in_bytes
        + mem.output_size_in_bytes
        - mem.alias_size_in_bytes
        + mem.temp_size_in_bytes
    )
    kind = devices[0].device_kind
    hbm = next(
        (v for k, v in sorted(HBM.items(), key=lambda kv: -len(kv[0])) if kind.startswith(k)), None
    )
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    return {
        "chips": len(devices),
        "device_kind": kind,
        "per_chip_bytes": per_chip,
        "argument_bytes": mem.argument_size_in_bytes,
        "temp_bytes": mem.temp_size_in_bytes,
        "hbm_bytes": hbm,
        "fits": hbm is not None and per_chip < hbm,
        "flops": cost.get("flops", float("nan")) if cost else float("nan"),
    }


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n")[2] + " Config fields can be overridden after the options: "
        "--config.KEY=VALUE.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        allow_abbrev=False,
    )
    add_config_argument(p)
    p.add_argument("--topology", default="v5e:2x2", help="TPU topology name, e.g. v5p:4x4x4")
    return p


def main(argv=None):
    p = parser()
    args, overrides = p.parse_known_args(sys.argv[1:] if argv is None else argv)
    try:
        config, _ = load_config(args.config, overrides, p.prog)
        compiled, devices = compile_step(config, args.topology)
    except (ValueError, FileNotFoundError) as e:
        p.error(str(e))
    r = memory_report(compiled, devices)
    gib = 2**30
    print(f"topology {args.topology}: {r['chips']} x {r['device_kind']}")
    print(
        f"per-chip memory: {r['per_chip_bytes'] / gib:.3f} GiB (arguments "
        f"{r['argument_bytes'] / gib:.3f}, temporaries {r['temp_bytes'] / gib:.3f})"
    )
    if r["hbm_bytes"]:
        verdict = "fits" if r["fits"] else "DOES NOT FIT"
        print(f"HBM per chip: {r['hbm_bytes'] / gib:.1f} GiB -> {verdict}")
    print(f"compiler flops per step (per chip): {r['flops']:.3e}")
    jax.effects_barrier()


if __name__ == "__main__":
    main()
