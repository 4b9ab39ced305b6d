"""The console script: subcommands exist, errors are one line with the right exit code."""

from __future__ import annotations

import subprocess
import sys

from typer.testing import CliRunner

from cli.main import app

SUBCOMMANDS = ["synth", "fuse", "train-teacher", "distill", "evaluate", "inspect", "show"]


def test_help_lists_every_stage():
    res = CliRunner().invoke(app, ["--help"])
    assert res.exit_code == 0
    for name in SUBCOMMANDS:
        assert name in res.output


def test_usage_error_exits_2():
    res = CliRunner().invoke(app, ["inspect"])
    assert res.exit_code == 2
    res = CliRunner().invoke(app, ["no-such-command"])
    assert res.exit_code == 2


def test_data_error_is_one_line_exit_1_and_traceback_only_with_debug(tmp_path):
    cmd = [sys.executable, "-m", "cli.main", "inspect", str(tmp_path)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 1
    assert "not an m2s artifact" in res.stderr
    assert "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    res = subprocess.run([sys.executable, "-m", "cli.main", "--debug", "inspect", str(tmp_path)], capture_output=True, text=True)
    assert res.returncode == 1
    assert "Traceback" in res.stderr
