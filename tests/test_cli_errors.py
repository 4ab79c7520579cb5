"""Bad input is one `error:` line and exit 2; anything else is a bug: its traceback, a line saying so, exit 1.

Each command line goes through `cli.run_command`; an internal ValueError or KeyError injected into what a
command calls must never be dressed up as bad input (with or without -v).
"""

from __future__ import annotations

import logging

import pytest

from deepearth_jax import cli, config_utils, train
from deepearth_jax.data import __main__ as data_main
from deepearth_jax.data.split import cli as split_cli
from deepearth_jax.errors import (
    CliError,
    ConfigError,
    SplitError,
    StoreError,
    TrainError,
    UserError,
    WorkdirError,
)


@pytest.fixture(autouse=True)
def _quiet_logging_after():
    """The commands' setup_logging (DEBUG with -v) binds handlers to this test's captured stderr: drop them,
    so that jax's debug line at interpreter exit is not written to a closed stream."""
    yield
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.setLevel(logging.WARNING)
    for name in ("absl", "jax", "orbax"):
        logging.getLogger(name).setLevel(logging.WARNING)


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


def test_every_user_error_derives_from_user_error():
    for cls in (CliError, ConfigError, SplitError, StoreError, TrainError, WorkdirError):
        assert issubclass(cls, UserError)
    from deepearth_jax.data.convert.errors import ConvertError
    from deepearth_jax.data.split.regions import RegionsDoNotFit

    assert issubclass(ConvertError, StoreError) and issubclass(RegionsDoNotFit, SplitError)


@pytest.mark.parametrize("cls", [CliError, ConfigError, SplitError, StoreError, TrainError, WorkdirError])
def test_user_error_is_one_line_and_exit_2(capsys, cls):
    def command():
        raise cls("the thing is wrong; pass --other")

    assert cli.run_command(command) == 2
    err = capsys.readouterr().err
    assert err == "error: the thing is wrong; pass --other\n"


@pytest.mark.parametrize("bug", [ValueError("shapes (3,) and (4,) differ"), KeyError("species_index")])
def test_internal_error_keeps_its_traceback_and_is_not_exit_2(capsys, bug):
    def command():
        raise bug

    status = cli.run_command(command)
    assert status == cli.BUG_STATUS == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last):" in err
    assert f"{type(bug).__name__}: " in err and "in command" in err
    lines = error_lines(err)
    assert len(lines) == 1 and "this is a bug in deepearth_jax" in lines[0] and "report it" in lines[0]
    assert lines[0] == err.rstrip("\n").splitlines()[-1]  # the last line, after the traceback


def test_os_error_and_interrupt_keep_their_one_line(capsys):
    def refused():
        raise PermissionError(13, "Permission denied", "/data/store")

    assert cli.run_command(refused) == 2
    assert capsys.readouterr().err == "error: /data/store: Permission denied\n"

    def interrupted():
        raise KeyboardInterrupt

    assert cli.run_command(interrupted, "stopped") == 130
    assert capsys.readouterr().err == "error: stopped\n"


@pytest.mark.parametrize("verbose", [[], ["-v"]])
def test_train_cli_bad_config_field_is_one_line(capsys, verbose):
    argv = ["--config", "configs/vision.py:tiny", "--config.batch_sise=3", *verbose]
    assert train.main(argv) == 2
    err = capsys.readouterr().err
    assert error_lines(err) == [
        "error: unknown config field 'batch_sise' ('batch_sise' is not in config); "
        "did you mean batch_size, eval_batch_size?"
    ]
    assert "Traceback" not in err


@pytest.mark.parametrize("verbose", [[], ["-v"]])
def test_train_cli_internal_value_error_gives_traceback(capsys, monkeypatch, verbose):
    """A plain ValueError from deep inside (here: the config loader) is a bug, with -v or without."""

    def broken(spec, overrides=()):
        raise ValueError("an internal invariant broke")

    monkeypatch.setattr(config_utils, "load_config", broken)
    status = train.main(["--config", "configs/vision.py:tiny", *verbose])
    assert status not in (0, 2) and status == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last):" in err and "ValueError: an internal invariant broke" in err
    assert len(error_lines(err)) == 1 and "bug" in error_lines(err)[0]


@pytest.mark.parametrize("verbose", [[], ["-v"]])
def test_data_cli_user_error_and_injected_key_error(tmp_path, capsys, monkeypatch, verbose):
    missing = tmp_path / "nowhere"
    assert data_main.main([*verbose, "split", str(missing), "--out", str(tmp_path / "s.json")]) == 2
    err = capsys.readouterr().err
    assert len(error_lines(err)) == 1 and str(missing) in err and "Traceback" not in err

    def broken(args):
        raise KeyError("latitude")

    monkeypatch.setattr(split_cli, "run_split", broken)
    # The parser binds the handler when it is built, so patch before main builds it.
    assert data_main.main([*verbose, "split", str(missing), "--out", str(tmp_path / "s.json")]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last):" in err and "KeyError: 'latitude'" in err
    assert len(error_lines(err)) == 1 and "bug" in error_lines(err)[0]
