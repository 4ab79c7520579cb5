"""A minimal TensorBoard scalar writer: event files (TFRecord of `Event` protos) with no heavy imports.

TensorBoard reads `events.out.tfevents.*` files: records framed as `uint64 length, uint32 masked
crc32c(length), data, uint32 masked crc32c(data)`, each data an `Event` protocol buffer. Scalars are all the
trainer writes, so the few protobuf fields needed are encoded here by hand (tensorboardX pulls in PyTorch when
it is installed: seconds per process start).
"""

from __future__ import annotations

import os
import socket
import struct
import time
from pathlib import Path


def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), as TFRecord framing uses."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        bits = value & 0x7F
        value >>= 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def _field(number: int, wire_type: int, payload: bytes) -> bytes:
    return _varint((number << 3) | wire_type) + payload


def _length_delimited(number: int, payload: bytes) -> bytes:
    return _field(number, 2, _varint(len(payload)) + payload)


def encode_event(
    wall_time: float, step: int, *, file_version: str | None = None, scalars: dict | None = None
) -> bytes:
    """An `Event` proto: wall_time (1, double), step (2, int64), file_version (3) or summary (5)."""
    out = _field(1, 1, struct.pack("<d", wall_time)) + _field(2, 0, _varint(step & 0xFFFFFFFFFFFFFFFF))
    if file_version is not None:
        out += _length_delimited(3, file_version.encode())
    if scalars:
        values = b"".join(
            # Summary.Value: tag (1, string), simple_value (2, float)
            _length_delimited(
                1, _length_delimited(1, tag.encode()) + _field(2, 5, struct.pack("<f", float(v)))
            )
            for tag, v in scalars.items()
        )
        out += _length_delimited(5, values)
    return out


def frame_record(data: bytes) -> bytes:
    """TFRecord framing of one record."""
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", _masked_crc(length)) + data + struct.pack("<I", _masked_crc(data))


class ScalarWriter:
    """Appends scalar summaries to a new event file in `logdir` (one file per writer)."""

    def __init__(self, logdir: str | os.PathLike):
        self.logdir = Path(logdir)
        self.logdir.mkdir(parents=True, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}"
        self.path = self.logdir / name
        self._file = open(self.path, "ab")
        self._file.write(frame_record(encode_event(time.time(), 0, file_version="brain.Event:2")))
        self._file.flush()

    def add_scalars(self, step: int, scalars: dict[str, float]) -> None:
        self._file.write(frame_record(encode_event(time.time(), int(step), scalars=scalars)))
        self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()


def read_scalars(path: str | os.PathLike) -> list[tuple[int, str, float]]:
    """Reads `(step, tag, value)` back from an event file, checking every CRC (for tests and tools)."""
    data = Path(path).read_bytes()
    out, pos = [], 0
    while pos < len(data):
        (length,) = struct.unpack_from("<Q", data, pos)
        (length_crc,) = struct.unpack_from("<I", data, pos + 8)
        if length_crc != _masked_crc(data[pos : pos + 8]):
            raise ValueError(f"{path}: corrupt record length at byte {pos}")
        record = data[pos + 12 : pos + 12 + length]
        (record_crc,) = struct.unpack_from("<I", data, pos + 12 + length)
        if record_crc != _masked_crc(record):
            raise ValueError(f"{path}: corrupt record at byte {pos}")
        pos += 16 + length
        out.extend(_decode_scalars(record))
    return out


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes):
    pos = 0
    while pos < len(buf):
        key, pos = _read_varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _read_varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos : pos + 8], pos + 8
        elif wire == 5:
            value, pos = buf[pos : pos + 4], pos + 4
        elif wire == 2:
            n, pos = _read_varint(buf, pos)
            value, pos = buf[pos : pos + n], pos + n
        else:
            raise ValueError(f"unsupported wire type {wire}")
        yield number, value


def _decode_scalars(event: bytes) -> list[tuple[int, str, float]]:
    step, values = 0, []
    for number, value in _fields(event):
        if number == 2:
            step = value
        elif number == 5:
            for vnum, vbytes in _fields(value):
                if vnum != 1:
                    continue
                tag, simple = "", None
                for fnum, fval in _fields(vbytes):
                    if fnum == 1:
                        tag = fval.decode()
                    elif fnum == 2:
                        (simple,) = struct.unpack("<f", fval)
                if simple is not None:
                    values.append((tag, simple))
    return [(step, tag, v) for tag, v in values]
