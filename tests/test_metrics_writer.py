"""MetricsWriter: JSONL lines and TensorBoard event records read back independently.

The event file is parsed with this file's own TFRecord reader (bitwise CRC-32C, not the
writer's table) and protobuf's own decoder over the tensorboard Event schema declared here.
ProgressLog: plain lines off a terminal, a tqdm bar on one.
"""

import io
import json
import struct

import numpy as np
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from PIL import Image

from mmjax.train import MetricsWriter
from mmjax.train.metrics_writer import ProgressLog, crc32c


def _event_classes():
    """tensorboard's Event / Summary messages (the fields the writer uses), from their
    published field numbers, compiled by protobuf itself."""
    f = descriptor_pb2.FileDescriptorProto(name="mmjax_test_event.proto", package="tb")
    T = descriptor_pb2.FieldDescriptorProto

    def message(name, fields):
        m = f.message_type.add(name=name)
        for fname, number, ftype, label, type_name in fields:
            field = m.field.add(name=fname, number=number, type=ftype, label=label)
            if type_name:
                field.type_name = type_name

    opt, rep = T.LABEL_OPTIONAL, T.LABEL_REPEATED
    message(
        "Image",
        [
            ("height", 1, T.TYPE_INT32, opt, None),
            ("width", 2, T.TYPE_INT32, opt, None),
            ("colorspace", 3, T.TYPE_INT32, opt, None),
            ("encoded_image_string", 4, T.TYPE_BYTES, opt, None),
        ],
    )
    message(
        "Value",
        [
            ("tag", 1, T.TYPE_STRING, opt, None),
            ("simple_value", 2, T.TYPE_FLOAT, opt, None),
            ("image", 4, T.TYPE_MESSAGE, opt, ".tb.Image"),
        ],
    )
    message("Summary", [("value", 1, T.TYPE_MESSAGE, rep, ".tb.Value")])
    message(  # status is the SessionStatus enum (START = 1): a varint on the wire, as int32
        "SessionLog",
        [
            ("status", 1, T.TYPE_INT32, opt, None),
            ("checkpoint_path", 2, T.TYPE_STRING, opt, None),
            ("msg", 3, T.TYPE_STRING, opt, None),
        ],
    )
    message(
        "Event",
        [
            ("wall_time", 1, T.TYPE_DOUBLE, opt, None),
            ("step", 2, T.TYPE_INT64, opt, None),
            ("file_version", 3, T.TYPE_STRING, opt, None),
            ("summary", 5, T.TYPE_MESSAGE, opt, ".tb.Summary"),
            ("session_log", 6, T.TYPE_MESSAGE, opt, ".tb.SessionLog"),
        ],
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tb.Event"))


Event = _event_classes()


def _crc32c_bitwise(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 * (crc & 1))
    return crc ^ 0xFFFFFFFF


def _masked(data: bytes) -> int:
    c = _crc32c_bitwise(data)
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def read_events(path):
    """Every Event in a TFRecord file, checking both CRCs of every record."""
    raw, pos, events = path.read_bytes(), 0, []
    while pos < len(raw):
        header = raw[pos : pos + 8]
        (length,) = struct.unpack("<Q", header)
        (length_crc,) = struct.unpack("<I", raw[pos + 8 : pos + 12])
        assert length_crc == _masked(header)
        data = raw[pos + 12 : pos + 12 + length]
        (data_crc,) = struct.unpack("<I", raw[pos + 12 + length : pos + 16 + length])
        assert data_crc == _masked(data)
        events.append(Event.FromString(data))
        pos += 16 + length
    assert pos == len(raw)
    return events


def test_crc32c_known_vector():
    assert crc32c(b"123456789") == 0xE3069283 == _crc32c_bitwise(b"123456789")


def test_jsonl_lines_parse_back(tmp_path):
    with MetricsWriter(tmp_path, enabled=True) as w:
        w.write_scalars(1, {"loss": 0.5, "acc": np.float32(0.25), "n": np.int32(7)})
        w.write_scalars(2, {"loss": 0.125})
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2]
    assert lines[0]["loss"] == 0.5 and lines[0]["acc"] == 0.25 and lines[0]["n"] == 7
    assert lines[1]["loss"] == 0.125 and "acc" not in lines[1]
    assert all(isinstance(x["time"], float) and x["time"] > 1e9 for x in lines)
    # A resumed run appends rather than overwrites.
    with MetricsWriter(tmp_path, enabled=True) as w:
        w.write_scalars(3, {"loss": 1.0})
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 3


def test_event_file_holds_scalars_and_images(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.uniform(size=(5, 7, 3)).astype(np.float32)
    with MetricsWriter(tmp_path, enabled=True) as w:
        w.write_scalars(10, {"loss": 1.5, "lr": 3e-4})
        w.write_scalars(20, {"loss": -0.75})
        w.write_images(20, {"recon": image})
        w.flush()
    (path,) = list(tmp_path.glob("events.out.tfevents.*"))
    events = read_events(path)
    assert events[0].file_version == "brain.Event:2"
    scalars = [
        (e.step, v.tag, v.simple_value)
        for e in events[1:]
        for v in e.summary.value
        if not v.HasField("image")
    ]
    assert scalars == [(10, "loss", 1.5), (10, "lr", pytest.approx(3e-4)), (20, "loss", -0.75)]
    (img_event,) = [e for e in events if any(v.HasField("image") for v in e.summary.value)]
    value = img_event.summary.value[0]
    assert img_event.step == 20 and value.tag == "recon"
    assert (value.image.height, value.image.width, value.image.colorspace) == (5, 7, 3)
    decoded = np.asarray(Image.open(io.BytesIO(value.image.encoded_image_string)))
    np.testing.assert_array_equal(decoded, np.round(image * 255).astype(np.uint8))
    # Images go to TensorBoard only.
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2


def _tensorboard_scalars(workdir) -> list:
    """(step, tag, value) as TensorBoard shows them: the event files in name order, and a
    SessionLog START at step s purges the events seen before it at steps >= s."""
    seen = []
    for path in sorted(workdir.glob("events.out.tfevents.*")):
        for e in read_events(path):
            if e.HasField("session_log") and e.session_log.status == 1:
                seen = [x for x in seen if x[0] < e.step]
            seen += [(e.step, v.tag, v.simple_value) for v in e.summary.value]
    return seen


def test_resume_drops_the_rows_and_events_past_the_restored_step(tmp_path):
    with MetricsWriter(tmp_path, enabled=True) as w:  # the run that was killed after step 8
        for step in range(1, 9):
            w.write_scalars(step, {"loss": float(step)})
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 9, "ti')  # a row cut short by the kill
    with MetricsWriter(tmp_path, enabled=True) as w:  # resumed from the checkpoint of step 5
        w.resume(5)
        assert [json.loads(x)["step"] for x in (tmp_path / "metrics.jsonl").open()] == [
            1, 2, 3, 4, 5,
        ]  # fmt: skip
        for step in range(6, 10):
            w.write_scalars(step, {"loss": -float(step)})
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    expected = [(s, float(s) if s <= 5 else -float(s)) for s in range(1, 10)]
    assert [(r["step"], r["loss"]) for r in rows] == expected
    assert [(s, v) for s, _, v in _tensorboard_scalars(tmp_path)] == expected
    (start,) = [
        e
        for p in tmp_path.glob("events.out.*")
        for e in read_events(p)
        if e.HasField("session_log")
    ]
    assert start.step == 6 and "step 5" in start.session_log.msg
    # Nothing past the step: the file is left as it is.
    before = (tmp_path / "metrics.jsonl").stat().st_ino
    with MetricsWriter(tmp_path, enabled=True) as w:
        w.resume(9)
    assert (tmp_path / "metrics.jsonl").stat().st_ino == before
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 9


def test_disabled_writer_writes_nothing(tmp_path):
    workdir = tmp_path / "run"
    with MetricsWriter(workdir, enabled=False) as w:
        w.write_scalars(1, {"loss": 1.0})
        w.write_images(1, {"x": np.zeros((2, 2, 3))})
        w.flush()
    assert not workdir.exists()


def test_bad_input_is_refused(tmp_path):
    with MetricsWriter(tmp_path, enabled=True) as w:
        with pytest.raises(ValueError, match="'loss' must be a scalar"):
            w.write_scalars(1, {"loss": np.zeros(3)})
        with pytest.raises(ValueError, match=r"'img' must be \[H, W, 3\]"):
            w.write_images(1, {"img": np.zeros((4, 4))})
        with pytest.raises(ValueError, match="reserved"):
            w.write_scalars(1, {"step": 1})
    assert (tmp_path / "metrics.jsonl").read_text() == ""
    with pytest.raises(ValueError, match="closed"):
        w.write_scalars(2, {"loss": 1.0})


def test_progress_log_prints_plain_lines_off_a_terminal():
    out = io.StringIO()  # isatty() is False, as for a log file or a pipe
    log = ProgressLog("run", 100, 3000, throughput_name="images_per_s", enabled=True, stream=out)
    log.message("starting")
    log.advance(20)
    log.log(120, {"loss": "0.1234"}, 512.4, 0.5)  # 2880 steps left x 0.5 s = 24 minutes
    log.log(3000, {"loss": "0.0500", "usage": "0.91"}, 12.345, 0.5)
    log.eval(3000, {"eval/psnr": 25.123456, "eval/usage": 0.5})
    log.close()
    assert out.getvalue().splitlines() == [
        "starting",
        "run step 120/3000 loss 0.1234 images_per_s 512 eta 0:24:00",
        "run step 3000/3000 loss 0.0500 usage 0.91 images_per_s 12.3 eta 0:00:00",
        "run eval step 3000: psnr 25.12 usage 0.5",
    ]
    assert "\r" not in out.getvalue()


def test_progress_log_draws_a_bar_on_a_terminal_and_nothing_when_disabled():
    out = io.StringIO()
    log = ProgressLog("run", 0, 10, enabled=True, stream=out, tty=True)
    log.advance(4)
    log.log(4, {"loss": "0.5000"}, 100.0, 0.1)
    log.message("a note")
    log.close()
    text = out.getvalue()
    assert "\r" in text and "4/10" in text and "loss=0.5000" in text
    assert "a note\n" in text and "run step" not in text
    quiet = io.StringIO()
    log = ProgressLog("run", 0, 10, enabled=False, stream=quiet, tty=True)
    log.advance(1)
    log.log(1, {"loss": "1"}, 1.0, 1.0)
    log.message("x")
    log.eval(1, {"eval/loss": 1.0})
    log.close()
    assert quiet.getvalue() == ""
