"""The torch-free TensorBoard event file: TFRecord CRCs as TensorBoard checks them, no torch import."""

import struct
import subprocess
import sys

from tensorboardX.record_writer import masked_crc32c

from deepearth_jax.writers import EventFile, _masked_crc


def test_masked_crc_matches_tensorboardx():
    for data in (b"", b"abc", bytes(range(256)) * 3):
        assert _masked_crc(data) == masked_crc32c(data)


def test_event_records_carry_valid_crcs(tmp_path):
    events = EventFile(tmp_path)
    events.add_scalar("train/loss", 0.25, 3)
    events.close()
    (path,) = tmp_path.glob("events.out.tfevents.*")
    data, pos, records = path.read_bytes(), 0, 0
    while pos < len(data):
        head = data[pos : pos + 8]
        (n,) = struct.unpack("<Q", head)
        assert struct.unpack_from("<I", data, pos + 8)[0] == masked_crc32c(head)
        body = data[pos + 12 : pos + 12 + n]
        assert struct.unpack_from("<I", data, pos + 12 + n)[0] == masked_crc32c(body)
        pos, records = pos + 16 + n, records + 1
    assert records == 2


def test_writers_do_not_import_torch(tmp_path):
    code = (
        "import sys; from deepearth_jax.writers import MetricWriters; "
        f"w = MetricWriters({str(tmp_path)!r}, enabled=True, truncate_after=0); "
        "w.write(1, 1.0, {'a': 1.0}); w.close(); print('torch' in sys.modules, 'tensorboardX' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
