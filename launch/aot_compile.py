"""Compile a train step for a Cloud TPU topology on this (CPU) host and report whether it fits.

    python launch/aot_compile.py --config=configs/tokenizer_rgb.py:size=small --topology=v5e:2x2
    python launch/aot_compile.py --config=configs/fourm.py:size=xlarge,fsdp,bf16 \
        --topology=v5p:4x4x4 --step=generate_ar
    python launch/aot_compile.py --config=configs/fourm.py:size=base,fsdp,bf16,remat \
        --topology=v5p:4x4x4 --num_slices=2

Needs `jax[tpu]` installed (libtpu provides the real TPU compiler); no TPU is used. Prints
the per-chip memory from XLA's memory analysis, the chip's HBM, whether the step fits, and
the compiler's flop count. The mesh comes from `config.mesh` over the topology's chips.
With `--num_slices=K` the step is compiled for K slices joined over the data-center network
(DCN; `config.mesh.dcn_data` becomes K unless the dcn_* sizes are set), and the per-chip
bytes of the collectives that cross slices are printed too (see `cross_slice_bytes`).
With a 4M config, `--step` compiles a generation step instead: one MaskGIT step or one AR
decode step with the KV cache (mmjax.fourm.generation.lowering), for data.batch_size examples
with classifier-free guidance (2 variants), conditioned on every other modality.
"""

import argparse
import math
import os
import re
import sys
from collections.abc import Sequence

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# No TPU is used: no host-wide libtpu lock, so compiles run beside other libtpu processes.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

import jax
import numpy as np

from mmjax.train.registry import add_config_argument, get_trainer, load_config

STEPS = ("train", "generate_maskgit", "generate_ar")
# HBM per chip, bytes.
HBM = {"TPU v4": 32e9, "TPU v5 lite": 16e9, "TPU v5": 95e9, "TPU v6 lite": 32e9}


def compile_step(config, topology: str, step: str = "train", num_slices: int = 1):
    """(the compiled `step` of the trainer `config.trainer` names, the devices of
    `num_slices` slices of `topology` in the order of the executable's device assignment);
    `step` is one of STEPS."""
    from jax.experimental import topologies

    if step not in STEPS:
        raise ValueError(f"--step must be one of {STEPS}, got {step!r}")
    trainer_cls = get_trainer(config)
    if step != "train" and trainer_cls.kind != "fourm":
        raise ValueError(
            f"--step={step} needs a 4M config (trainer 'fourm'), got {config.trainer!r}"
        )
    if num_slices < 1:
        raise ValueError(f"--num_slices must be >= 1, got {num_slices}")
    slices = {"num_slices": num_slices} if num_slices > 1 else {}
    dcn = [config.mesh.get(f"dcn_{a}", 1) for a in ("data", "fsdp", "tensor")]
    if num_slices > 1 and math.prod(dcn) == 1:
        config.mesh.dcn_data = num_slices  # data parallel across slices
    devices = topologies.get_topology_desc(platform="tpu", topology_name=topology, **slices).devices
    trainer = trainer_cls(config, devices=devices)  # no workdir: nothing is written
    devices = list(trainer.mesh.devices.flat)  # partition i runs on devices[i]
    if step == "train":
        return trainer.lower_train_step().compile(), devices
    return lower_generation_step(trainer, step).compile(), devices


def lower_generation_step(trainer, step: str):
    """A 4M trainer's model, mesh and rules -> the lowered generation `step`."""
    from mmjax.fourm.generation import lowering

    lower = {
        "generate_maskgit": lowering.lower_parallel_step,
        "generate_ar": lowering.lower_decode_step,
    }[step]
    b = trainer.config.data.batch_size
    return lower(trainer.model, trainer.mesh, b, rules=trainer.rules)


COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all")
# "%x = f32[8]{0} all-reduce-start(" -> (x, "f32[8]{0}", "all-reduce-start")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*?)\s([a-z][a-z0-9\-]*)\(")
_SHAPE = re.compile(r"\b([a-z][a-z0-9]*)\[([0-9,]*)\]")
_TRANSFER = re.compile(r'_xla_megascale_transfer_type="(\w+)"')
_IOTA = re.compile(r"replica_groups=\[([0-9,]+)\]<=\[([0-9,]+)\](?:T\(([0-9,]+)\))?")
_LISTED = re.compile(r"replica_groups=\{((?:\{[0-9,]*\},?)*)\}")


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def shape_bytes(text: str, first_only: bool = False) -> int:
    """Bytes of the array shapes in HLO shape text ('(f32[4,8]{1,0}, bf16[2])' -> 144);
    the element size comes from the type's bit count (pred: 1 byte, token: 0)."""
    total = 0
    for dtype, dims in _SHAPE.findall(text):
        bits = re.search(r"\d+", dtype)
        size = 1 if dtype == "pred" else max(1, int(bits[0]) // 8) if bits else 0
        total += math.prod(_ints(dims)) * size
        if first_only:
            break
    return total


def replica_groups(line: str, num_devices: int) -> list[list[int]]:
    """The device groups of one HLO collective: `{{0,1},{2,3}}`, the iota form
    `[2,2]<=[4]` / `[2,2]<=[2,2]T(1,0)`, or none listed (`{}`: all devices in one group)."""
    if m := _IOTA.search(line):
        dims, reshape, perm = _ints(m[1]), _ints(m[2]), _ints(m[3] or "")
        ids = np.arange(math.prod(reshape)).reshape(reshape)
        ids = ids.transpose(perm) if perm else ids
        return ids.reshape(dims[0], -1).tolist()
    if (m := _LISTED.search(line)) and m[1]:
        return [_ints(g) for g in re.findall(r"\{([0-9,]*)\}", m[1])]
    return [list(range(num_devices))]


def _operands(line: str, start: int) -> str:
    """The text between the parenthesis at `start` and its match (layouts hold parentheses)."""
    depth = 0
    for i in range(start, len(line)):
        depth += {"(": 1, ")": -1}.get(line[i], 0)
        if depth == 0:
            return line[start + 1 : i]
    return line[start + 1 :]


def cross_slice_bytes(hlo_text: str, slice_of: Sequence[int]) -> dict[str, int]:
    """Bytes per chip that cross slices in one run of compiled HLO text, by collective kind;
    `slice_of[i]` is the slice of device i of the executable's device assignment.

    Method: the TPU compiler lowers the cross-slice part of a collective to DCN `send`s
    tagged `_xla_megascale_transfer_type` (ALL_REDUCE, ...), whose data shapes are summed;
    a collective (all-reduce, all-gather, reduce-scatter, all-to-all, sync or async start)
    whose replica groups hold devices of several slices adds its operand bytes. Each
    instruction counts once, also one in a loop body.
    """
    lines = hlo_text.splitlines()
    shapes = {m[1]: m[2] for line in lines if (m := _INSTRUCTION.match(line))}
    out: dict[str, int] = {}
    for line in lines:
        m = _INSTRUCTION.match(line)
        if not m:
            continue
        op = m[3].removesuffix("-start")
        if op == "send" and (t := _TRANSFER.search(line)):
            kind, nbytes = t[1].lower().replace("_", "-"), shape_bytes(m[2], first_only=True)
        elif op in COLLECTIVES:
            groups = replica_groups(line, len(slice_of))
            if all(len({slice_of[d] for d in g}) == 1 for g in groups):
                continue
            operands = _operands(line, m.end() - 1)
            kind, nbytes = op, shape_bytes(operands)
            if not _SHAPE.search(operands):  # operands by name only: look their shapes up
                names = re.findall(r"%([\w.\-]+)", operands)
                nbytes = sum(shape_bytes(shapes.get(n, "")) for n in names)
        else:
            continue
        out[kind] = out.get(kind, 0) + nbytes
    return out


def memory_report(compiled, devices) -> dict:
    """Per-chip memory from XLA's memory analysis, the chip's HBM, whether the step fits, the
    compiler's flop count and, over several slices, the cross-slice collective bytes."""
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
    slice_of = [getattr(d, "slice_index", 0) for d in devices]
    return {
        "chips": len(devices),
        "device_kind": kind,
        "per_chip_bytes": per_chip,
        "argument_bytes": mem.argument_size_in_bytes,
        "temp_bytes": mem.temp_size_in_bytes,
        "hbm_bytes": hbm,
        "fits": hbm is not None and per_chip < hbm,
        "flops": cost.get("flops", float("nan")) if cost else float("nan"),
        "slices": len(set(slice_of)),
        "cross_slice_bytes": cross_slice_bytes(compiled.as_text(), slice_of)
        if len(set(slice_of)) > 1
        else {},  # per collective kind
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
    p.add_argument(
        "--num_slices",
        type=int,
        default=1,
        help="slices of TOPOLOGY joined over DCN (multislice); config.mesh.dcn_data defaults "
        "to this",
    )
    p.add_argument(
        "--step",
        default="train",
        choices=STEPS,
        help="the train step, or (4M) one MaskGIT step / one AR decode step with the KV cache",
    )
    return p


def main(argv=None):
    p = parser()
    args, overrides = p.parse_known_args(sys.argv[1:] if argv is None else argv)
    try:
        config, _ = load_config(args.config, overrides, p.prog)
        compiled, devices = compile_step(config, args.topology, args.step, args.num_slices)
    except (ValueError, FileNotFoundError) as e:
        p.error(str(e))
    r = memory_report(compiled, devices)
    gib = 2**30
    slices = f"{r['slices']} slices of " if r["slices"] > 1 else ""
    print(f"topology {slices}{args.topology}: {r['chips']} x {r['device_kind']}")
    if args.step != "train":
        print(f"step {args.step}: batch {config.data.batch_size} x 2 guidance variants")
    print(
        f"per-chip memory: {r['per_chip_bytes'] / gib:.3f} GiB (arguments "
        f"{r['argument_bytes'] / gib:.3f}, temporaries {r['temp_bytes'] / gib:.3f})"
    )
    if r["hbm_bytes"]:
        verdict = "fits" if r["fits"] else "DOES NOT FIT"
        print(f"HBM per chip: {r['hbm_bytes'] / gib:.1f} GiB -> {verdict}")
    print(f"compiler flops per step (per chip): {r['flops']:.3e}")
    if r["slices"] > 1:
        cross = r["cross_slice_bytes"]
        kinds = ", ".join(f"{k} {v / 2**20:.1f}" for k, v in sorted(cross.items()))
        print(
            f"cross-slice collective bytes per step (per chip): "
            f"{sum(cross.values()) / 2**20:.1f} MiB ({kinds or 'none'})"
        )
    jax.effects_barrier()


if __name__ == "__main__":
    main()
