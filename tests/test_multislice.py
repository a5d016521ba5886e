"""launch/aot_compile.py over several TPU slices: the cross-slice collective bytes read from
compiled HLO (on a hand-written snippet), and a two-slice compile with the real TPU compiler."""

from pathlib import Path

import jax
import pytest

ROOT = Path(__file__).resolve().parent.parent
SLICE_OF = [0, 0, 0, 0, 1, 1, 1, 1]  # devices 0-3 in slice 0, 4-7 in slice 1
SUM = "use_global_device_ids=true, to_apply=%add"
TILED = "f32[1024,128]{1,0:T(8,128)}"


def _dcn(kind):
    return f'is_host_transfer=true, frontend_attributes={{_xla_megascale_transfer_type="{kind}"}}'


HLO = "\n".join(
    [
        "HloModule snippet",
        "",
        "%add (a: f32[], b: f32[]) -> f32[] {",
        "  %a = f32[] parameter(0)",
        "  %b = f32[] parameter(1)",
        "  ROOT %sum = f32[] add(%a, %b)",
        "}",
        "",
        "ENTRY %main (p0: f32[1024,128], p1: bf16[64,256]) -> f32[1024,128] {",
        f"  %p0 = {TILED} parameter(0)",
        "  %p1 = bf16[64,256]{1,0} parameter(1)",
        f"  %in_slice = {TILED} all-reduce(%p0), channel_id=1,"
        f" replica_groups={{{{0,1,2,3}},{{4,5,6,7}}}}, {SUM}",
        f"  %across = {TILED} all-reduce-start(%p0), channel_id=2,"
        f" replica_groups={{{{0,4}},{{1,5}},{{2,6}},{{3,7}}}}, {SUM}",
        f"  %done = {TILED} all-reduce-done(%across)",
        "  %gather = bf16[128,256]{1,0} all-gather(bf16[64,256]{1,0} %p1),"
        " replica_groups=[4,2]<=[2,4]T(1,0), dimensions={0}",
        "  %gather_in = bf16[128,256]{1,0} all-gather(%p1), replica_groups=[4,2]<=[8],"
        " dimensions={0}",
        "  %scatter = f32[128,128]{1,0} reduce-scatter(%p0), replica_groups={},"
        " dimensions={0}, to_apply=%add",
        "  %token = token[] after-all()",
        "  %send = (f32[4,8,128]{2,1,0:T(8,128)}, u32[], token[]) send(%p0, %token),"
        f" channel_id=3, {_dcn('ALL_REDUCE')}",
        "  %recv = (f32[4,8,128]{2,1,0:T(8,128)}, u32[], token[]) recv(%token),"
        f" channel_id=4, {_dcn('ALL_REDUCE')}",
        f"  %send.1 = (bf16[16]{{0}}, u32[], token[]) send(%p1, %token), {_dcn('ALL_GATHER')}",
        f"  ROOT %out = {TILED} add(%in_slice, %done)",
        "}",
    ]
)


def test_replica_groups_forms(aot_compile):
    groups = aot_compile.replica_groups
    assert groups("replica_groups=[4,2]<=[2,4]T(1,0), x", 8) == [[0, 4], [1, 5], [2, 6], [3, 7]]
    assert groups("replica_groups=[2,4]<=[8]", 8) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert groups("replica_groups={{0,2},{1,3}}, dimensions={0}", 4) == [[0, 2], [1, 3]]
    assert groups("replica_groups={}, dimensions={0}", 3) == [[0, 1, 2]]
    assert aot_compile.shape_bytes("(f32[4,8]{1,0:T(8,128)}, bf16[2], pred[3], token[])") == 135


def test_cross_slice_bytes_of_a_hand_written_hlo(aot_compile):
    got = aot_compile.cross_slice_bytes(HLO, SLICE_OF)
    assert got == {
        # %across (by name: f32[1024,128]) + the DCN send of f32[4,8,128]
        "all-reduce": 1024 * 128 * 4 + 4 * 8 * 128 * 4,
        # %gather (inline operand, groups {0,4} ...) + the DCN send of bf16[16]
        "all-gather": 64 * 256 * 2 + 16 * 2,
        "reduce-scatter": 1024 * 128 * 4,  # no groups listed: all devices
    }
    # one slice: only the DCN sends remain (a real one-slice program has none)
    assert aot_compile.cross_slice_bytes(HLO, [0] * 8) == {
        "all-reduce": 4 * 8 * 128 * 4,
        "all-gather": 16 * 2,
    }


@pytest.mark.tpu_aot
def test_two_slice_train_step_compiles_with_data_parallel_across_slices(aot_compile, capsys):
    """A tiny 4M over two v5e:2x2 slices: the mesh's data axis spans them and the gradients
    are summed over DCN, within an independent bound (each chip sends between 1/8 of the
    float32 gradients, the least that 2 slices x 4 chips can share, and all of them)."""
    import re

    from mmjax.configs import fourm
    from mmjax.train.fourm_trainer import FourMTrainer

    config = f"--config={ROOT}/configs/fourm.py:size=tiny,quick"
    argv = [config, "--topology=v5e:2x2", "--num_slices=2"]
    aot_compile.main(argv)
    out = capsys.readouterr().out
    assert "topology 2 slices of v5e:2x2: 8 x TPU v5 lite" in out, out
    assert re.search(r"HBM per chip: \S+ GiB -> fits", out), out
    line = re.search(r"cross-slice collective bytes per step \(per chip\): (\S+) MiB \((.*)\)", out)
    assert line and "all-reduce" in line[2], out
    trainer = FourMTrainer(fourm.get_config("size=tiny,quick"), devices=jax.devices()[:1])
    n = sum(x.size for x in jax.tree.leaves(trainer._abstract_state().params))
    assert 4 * n / 8 <= float(line[1]) * 2**20 <= 4 * n, (n, out)
    with pytest.raises(SystemExit):
        aot_compile.main(
            [config, "--topology=v5e:2x2", "--num_slices=2", "--config.mesh.dcn_data=4"]
        )
    assert "--config.mesh.dcn_data=2" in capsys.readouterr().err
