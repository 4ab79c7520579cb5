"""Our TensorBoard event files: CRC-32C framing and Event protos that TensorBoard's own parser accepts."""

import struct

import numpy as np
import pytest
from conftest import test_seed

from deepearth_jax.tensorboard import ScalarWriter, crc32c, read_scalars


def test_crc32c_check_value():
    assert crc32c(b"123456789") == 0xE3069283  # the standard CRC-32C check value
    assert crc32c(b"") == 0


def test_scalars_round_trip(tmp_path):
    rng = np.random.default_rng(test_seed())
    values = {f"test/m{i}": float(np.float32(rng.normal())) for i in range(5)}
    writer = ScalarWriter(tmp_path)
    writer.add_scalars(7, values)
    writer.add_scalars(2**40, {"train/loss": 0.5})
    writer.close()
    read = read_scalars(writer.path)
    assert read == [(7, k, v) for k, v in values.items()] + [(2**40, "train/loss", 0.5)]
    corrupt = bytearray(writer.path.read_bytes())
    corrupt[-6] ^= 0xFF
    writer.path.write_bytes(bytes(corrupt))
    with pytest.raises(ValueError, match="corrupt record"):
        read_scalars(writer.path)


def test_tensorboard_protobuf_parses_our_events(tmp_path):
    event_pb2 = pytest.importorskip("tensorboardX.proto.event_pb2")
    writer = ScalarWriter(tmp_path)
    writer.add_scalars(3, {"train/loss": 1.25})
    writer.close()
    data, pos, events = writer.path.read_bytes(), 0, []
    while pos < len(data):
        (n,) = struct.unpack_from("<Q", data, pos)
        event = event_pb2.Event()
        event.ParseFromString(data[pos + 12 : pos + 12 + n])
        events.append(event)
        pos += 16 + n
    assert events[0].file_version == "brain.Event:2"
    assert events[1].step == 3
    assert [(v.tag, v.simple_value) for v in events[1].summary.value] == [("train/loss", 1.25)]
