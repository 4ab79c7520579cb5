"""The run's metric writers: metrics.jsonl lines, and TensorBoard event files the Event protobuf parses."""

import json
import struct

import numpy as np
from conftest import test_seed
from tensorboardX.proto import event_pb2

from deepearth_jax.writers import MetricWriters


def read_events(directory) -> list:
    """Every Event of the one event file in `directory` (TFRecord framing: length, crc, data, crc)."""
    (path,) = directory.glob("events.out.tfevents.*")
    data, pos, events = path.read_bytes(), 0, []
    while pos < len(data):
        (n,) = struct.unpack_from("<Q", data, pos)
        event = event_pb2.Event()
        event.ParseFromString(data[pos + 12 : pos + 12 + n])
        events.append(event)
        pos += 16 + n
    return events


def test_scalars_reach_jsonl_and_tensorboard(tmp_path):
    rng = np.random.default_rng(test_seed())
    values = {f"test/m{i}": float(np.float32(rng.normal())) for i in range(3)}
    writer = MetricWriters(tmp_path, enabled=True, truncate_after=0)
    writer.write(7, 0.5, values)
    writer.write(2**40, 1.0, {"train/loss": 0.5})
    writer.close()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows == [{"step": 7, "epoch": 0.5, **values}, {"step": 2**40, "epoch": 1.0, "train/loss": 0.5}]
    events = read_events(tmp_path / "tensorboard")
    assert events[0].file_version == "brain.Event:2"
    scalars = [(e.step, v.tag, v.simple_value) for e in events[1:] for v in e.summary.value]
    assert scalars == [(7, k, np.float32(v)) for k, v in values.items()] + [(2**40, "train/loss", 0.5)]


def test_resumed_writer_drops_lines_after_the_checkpoint(tmp_path):
    writer = MetricWriters(tmp_path, enabled=True, truncate_after=0)
    for step in (1, 2, 3):
        writer.write(step, step / 3, {"train/loss": float(step)})
    writer.close()
    MetricWriters(tmp_path, enabled=True, truncate_after=2).close()
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]
    assert not MetricWriters(tmp_path / "other", enabled=False, truncate_after=0).path.parent.exists()
