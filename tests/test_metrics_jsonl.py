"""The one reader of metrics.jsonl (io.read_json_lines): torn last lines dropped, damage before them named."""

import json
import logging

import pytest

from deepearth_jax.errors import UserError, WorkdirError
from deepearth_jax.io import read_json_lines
from deepearth_jax.writers import MetricWriters

RECORDS = [{"step": 1, "epoch": 0.5, "train/loss": 2.25}, {"step": 2, "epoch": 1.0, "train/loss": 1.5}]


def _write(path, text: str):
    path.write_text(text)
    return path


def test_records_come_back_in_order(tmp_path):
    path = _write(tmp_path / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in RECORDS) + "\n")
    assert read_json_lines(path) == RECORDS


@pytest.mark.parametrize("tail", ['{"step": 3, "epoch": 1.5, "train/lo', '{"epoch": 1.5}\n', "[3]"])
def test_a_torn_last_line_is_dropped_with_a_warning(tmp_path, caplog, tail):
    path = _write(tmp_path / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in RECORDS) + tail)
    with caplog.at_level(logging.WARNING):
        assert read_json_lines(path) == RECORDS
    assert f"{path}: dropping a torn last line 3" in caplog.text


def test_damage_before_the_last_line_names_the_file_and_line(tmp_path):
    text = json.dumps(RECORDS[0]) + "\nnot json\n" + json.dumps(RECORDS[1])
    path = _write(tmp_path / "metrics.jsonl", text)
    with pytest.raises(WorkdirError, match=rf"^{path}: line 2 is not a metrics record \(.*\); repair or"):
        read_json_lines(path)
    assert issubclass(WorkdirError, UserError)


def test_a_record_without_step_is_damage(tmp_path):
    path = _write(tmp_path / "m.jsonl", '{"epoch": 0.5}\n' + json.dumps(RECORDS[0]) + "\n")
    with pytest.raises(WorkdirError, match=r"line 1 is not a metrics record \(not an object with step\)"):
        read_json_lines(path)
    assert read_json_lines(path, required=()) == [{"epoch": 0.5}, RECORDS[0]]


def test_resumed_writer_reads_through_the_same_reader(tmp_path, caplog):
    """MetricWriters keeps the records up to the checkpoint's step and drops a torn last line."""
    path = _write(tmp_path / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in RECORDS) + '{"st')
    with caplog.at_level(logging.WARNING):
        MetricWriters(tmp_path, enabled=True, truncate_after=1).close()
    assert read_json_lines(path) == RECORDS[:1]
    assert "dropping a torn last line 3" in caplog.text
