"""Shared by the SIGKILL tests: run a real process and kill it the moment a condition holds."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path


def run_and_kill_when(cmd: list[str], cwd: Path, ready: Callable[[], bool], timeout: float) -> None:
    """Start `cmd`, SIGKILL it as soon as `ready()` holds; fail unless the kill really happened."""
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if ready():
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.002)
    finally:
        if proc.poll() is None and time.monotonic() >= deadline:
            proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"{cmd[3:5]} was not killed mid-run (exit {proc.returncode})"
