"""Scalars to `metrics.jsonl` and scalars/images to a TensorBoard event file, from process 0;
and the progress a run shows on stdout (`ProgressLog`).

The event file is written here directly (TFRecord framing around hand-encoded `Event`
protos), so neither TensorFlow nor tensorboard is needed to write it; `tensorboard --logdir`
reads it as usual.
"""

import datetime
import io
import json
import os
import socket
import struct
import sys
import time

import jax
import numpy as np
from tqdm import tqdm

from mmjax.storage import paths

# -- TFRecord framing: length, masked CRC32C of length, data, masked CRC32C of data ----------


def _crc32c_table():
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), the checksum TFRecord framing uses."""
    crc, table = 0xFFFFFFFF, _CRC_TABLE
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _record(data: bytes) -> bytes:
    length = struct.pack("<Q", len(data))
    return (
        length
        + struct.pack("<I", _masked_crc(length))
        + data
        + struct.pack("<I", _masked_crc(data))
    )


# -- protobuf wire encoding of tensorboard's Event / Summary / Image messages ----------------


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # negative int64 as two's complement, as protobuf does
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field_varint(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value)


def _field_bytes(number: int, value: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(value)) + value


def _field_double(number: int, value: float) -> bytes:
    return _varint(number << 3 | 1) + struct.pack("<d", value)


def _field_float(number: int, value: float) -> bytes:
    return _varint(number << 3 | 5) + struct.pack("<f", value)


def _event(
    wall_time: float, step: int | None = None, *, summary=None, file_version=None, session_log=None
):
    # Event: wall_time = 1 (double), step = 2 (int64), file_version = 3, summary = 5,
    # session_log = 6.
    out = _field_double(1, wall_time)
    if step is not None:
        out += _field_varint(2, step)
    if file_version is not None:
        out += _field_bytes(3, file_version.encode())
    if summary is not None:
        out += _field_bytes(5, summary)
    if session_log is not None:
        out += _field_bytes(6, session_log)
    return out


SESSION_START = 1  # SessionLog.SessionStatus.START


def _session_log(status: int, msg: str = "") -> bytes:
    # SessionLog: status = 1 (enum), checkpoint_path = 2, msg = 3.
    return _field_varint(1, status) + (_field_bytes(3, msg.encode()) if msg else b"")


def _scalar_value(tag: str, value: float) -> bytes:
    # Summary.Value: tag = 1, simple_value = 2 (float).
    return _field_bytes(1, tag.encode()) + _field_float(2, value)


def _image_value(tag: str, png: bytes, height: int, width: int, channels: int) -> bytes:
    # Summary.Image: height = 1, width = 2, colorspace = 3, encoded_image_string = 4;
    # Summary.Value: tag = 1, image = 4.
    image = (
        _field_varint(1, height)
        + _field_varint(2, width)
        + _field_varint(3, channels)
        + _field_bytes(4, png)
    )
    return _field_bytes(1, tag.encode()) + _field_bytes(4, image)


def _summary(values: list[bytes]) -> bytes:
    # Summary: repeated Value value = 1.
    return b"".join(_field_bytes(1, v) for v in values)


# -- the writer ------------------------------------------------------------------------------


def _scalar(name: str, value):
    arr = np.asarray(value)
    if arr.size != 1:
        raise ValueError(f"metric {name!r} must be a scalar, got shape {arr.shape}")
    item = arr.reshape(()).item()
    if isinstance(item, bool | int | float):
        return item
    raise ValueError(f"metric {name!r} must be a number, got {type(item).__name__}: {item!r}")


def _png(name: str, image) -> tuple[bytes, int, int, int]:
    from PIL import Image

    arr = np.asarray(image, dtype=np.float32)
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3):
        raise ValueError(f"image {name!r} must be [H, W, 3] (or [H, W, 1]), got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"image {name!r} has non-finite values")
    # Values a little outside [0, 1] (a decoder's output) are clipped, as TensorBoard does.
    pixels = np.round(np.clip(arr, 0.0, 1.0) * 255.0).astype(np.uint8)
    h, w, c = pixels.shape
    buf = io.BytesIO()
    Image.fromarray(pixels[..., 0] if c == 1 else pixels).save(buf, format="PNG")
    return buf.getvalue(), h, w, c


def _row_up_to(line: str, step: int) -> bool:
    """Whether a metrics.jsonl line is a whole row of a step <= `step` (or not a row of
    ours, kept as it is)."""
    if not line.endswith("\n"):
        return False  # cut short by a crash
    try:
        row = json.loads(line)
    except ValueError:
        return False
    row_step = row.get("step") if isinstance(row, dict) else None
    return not isinstance(row_step, int) or row_step <= step


class MetricsWriter:
    """Writes `workdir/metrics.jsonl` (one JSON object per write: step, time, values) and a
    TensorBoard event file `workdir/events.out.tfevents.*`; `workdir` may be local or gs://.

    Only one process writes (default: process 0); elsewhere every method is a no-op and no
    file or directory is created. metrics.jsonl is appended to, so a resumed run continues it;
    `resume(step)` first drops what a run cut short wrote past its restored checkpoint.
    On GCS, where objects cannot be appended to, both files are rewritten whole on flush (at
    most every `remote_flush_s` seconds, and on close), and the event file moves on to a new
    one past `EVENTS_PART_BYTES` so that a rewrite stays small; TensorBoard reads them all.
    """

    EVENTS_PART_BYTES = 4 << 20

    def __init__(self, workdir, *, enabled: bool | None = None, remote_flush_s: float = 30.0):
        self.enabled = jax.process_index() == 0 if enabled is None else bool(enabled)
        self.workdir = os.fspath(workdir)
        self.jsonl_path = paths.join(self.workdir, "metrics.jsonl")
        self.event_path = None
        self._jsonl = self._events = None
        self._flush_s, self._part = remote_flush_s, 0
        if not self.enabled:
            return
        paths.makedirs(self.workdir)
        self._jsonl = paths.open_append(self.jsonl_path, min_interval=remote_flush_s)
        self._open_events()

    def _open_events(self, stamp: int | None = None):
        now = time.time()
        stamp = int(now) if stamp is None else stamp
        name = f"events.out.tfevents.{stamp}.{socket.gethostname()}.{id(self) % 100000}"
        if self._events is not None:  # a later part of this run's events
            self._events.close()
            name += f".{self._part}"
        self._part += 1
        self.event_path = paths.join(self.workdir, name)
        self._events = paths.open_append(self.event_path, binary=True, min_interval=self._flush_s)
        self._events.write(_record(_event(now, file_version="brain.Event:2")))

    def _check_open(self):
        if self._jsonl is None:
            raise ValueError(f"MetricsWriter for {self.workdir} is closed")

    def write_scalars(self, step: int, scalars: dict):
        """One JSONL line {"step", "time", **scalars} and one TensorBoard scalar per entry."""
        if not self.enabled:
            return
        self._check_open()
        values = {str(k): _scalar(k, v) for k, v in scalars.items()}
        if {"step", "time"} & set(values):
            raise ValueError("metric names 'step' and 'time' are reserved")
        now = time.time()
        line = {"step": int(step), "time": now, **values}
        self._jsonl.write(json.dumps(line) + "\n")
        summary = _summary([_scalar_value(k, float(v)) for k, v in values.items()])
        self._events.write(_record(_event(now, int(step), summary=summary)))
        self.flush()  # readable while the run goes on (tail -f metrics.jsonl)

    def resume(self, step: int):
        """Continues the logs of a run restored from its checkpoint at `step`: the rows of
        metrics.jsonl past `step` (and a line cut short), written before the run stopped and
        about to be written again, are dropped (the file is rewritten atomically), so a reader
        sees one row per step; and a SessionLog START at `step + 1` goes into the new event
        file, so TensorBoard drops the old events past `step` (it purges the events at and
        after a START's step)."""
        if not self.enabled:
            return
        self._check_open()
        self._jsonl.close()
        if paths.exists(self.jsonl_path):
            text = paths.read_text(self.jsonl_path)
            lines = text.splitlines(keepends=True)
            kept = "".join(line for line in lines if _row_up_to(line, step))
            if kept != text:
                paths.write_text(self.jsonl_path, kept)
        self._jsonl = paths.open_append(self.jsonl_path, min_interval=self._flush_s)
        # TensorBoard reads the event files in name order: the START must come after them.
        ours = self.event_path.rsplit("/", 1)[-1].rsplit(os.sep, 1)[-1]
        older = [n for n in paths.listdir(self.workdir) if n.startswith("events.out.tfevents.")]
        if max(older, default="") > ours:
            stamps = [n.split(".")[3] for n in older]
            latest = max((int(t) for t in stamps if t.isdigit()), default=int(time.time()))
            self._open_events(stamp=latest + 1)
        log = _session_log(SESSION_START, f"resumed from the checkpoint of step {int(step)}")
        self._events.write(_record(_event(time.time(), int(step) + 1, session_log=log)))
        self.flush()

    def write_images(self, step: int, images: dict):
        """TensorBoard images from {name: [H, W, 3] float array in [0, 1]} (not in JSONL)."""
        if not self.enabled:
            return
        self._check_open()
        values = [_image_value(str(k), *_png(k, v)) for k, v in images.items()]
        self._events.write(_record(_event(time.time(), int(step), summary=_summary(values))))

    def flush(self):
        if self.enabled and self._jsonl is not None:
            self._jsonl.flush()
            self._events.flush()
            if self._events.remote and self._events.size > self.EVENTS_PART_BYTES:
                self._open_events()

    def close(self):
        if self.enabled and self._jsonl is not None:
            self._jsonl.close()
            self._events.close()
            self._jsonl = self._events = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# -- the console -----------------------------------------------------------------------------


def _rate(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


class ProgressLog:
    """What a run prints on stdout, from one process (default: process 0).

    On a terminal: a tqdm bar whose postfix shows the latest logged values. Elsewhere (a log
    file, nohup, a pipe) a bar's carriage-return updates would pile into one line, so each
    log step prints one plain line instead:
    `NAME step 120/3000 loss 0.1234 images_per_s 512 eta 0:12:34`.
    """

    def __init__(
        self,
        name: str,
        start: int,
        total: int,
        *,
        throughput_name: str = "examples_per_s",
        enabled: bool | None = None,
        stream=None,
        tty: bool | None = None,
    ):
        self.name, self.total, self.throughput_name = name, int(total), throughput_name
        self.enabled = jax.process_index() == 0 if enabled is None else bool(enabled)
        self.stream = sys.stdout if stream is None else stream
        isatty = getattr(self.stream, "isatty", None)
        self.tty = bool(isatty and isatty()) if tty is None else bool(tty)
        self.bar = None
        if self.enabled and self.tty:
            self.bar = tqdm(total=self.total, initial=int(start), desc=name, file=self.stream)

    def message(self, text: str):
        """A line of its own (above the bar on a terminal)."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def advance(self, steps: int = 1):
        if self.bar is not None:
            self.bar.update(steps)

    def log(self, step: int, fields: dict, throughput: float, seconds_per_step: float):
        """The values of one log step: `fields` (name -> formatted value), the throughput and
        the time left at `seconds_per_step`."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.set_postfix(fields)
            return
        eta = datetime.timedelta(seconds=round(max(self.total - step, 0) * seconds_per_step))
        values = " ".join(f"{k} {v}" for k, v in fields.items())
        self.message(
            f"{self.name} step {step}/{self.total} {values} "
            f"{self.throughput_name} {_rate(throughput)} eta {eta}"
        )

    def eval(self, step: int, metrics: dict):
        """One line of evaluation metrics (the `eval/` prefix dropped)."""
        values = " ".join(
            f"{k.removeprefix('eval/')} {float(v):.4g}" for k, v in sorted(metrics.items())
        )
        self.message(f"{self.name} eval step {step}: {values}")

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
