"""``.ci/run`` puts back what it changes on the machine (``kernel.pid_max``), whatever
the outcome; tested on a stand-in file, not the real kernel setting."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("command", "rc"), [("echo 3 passed", 0), ("false", 1)])
def test_pid_max_is_restored(tmp_path, command, rc):
    pid_max = tmp_path / "pid_max"
    pid_max.write_text("32768\n")
    seen = tmp_path / "seen"
    env = {**os.environ, "FLOWCEPTION_PID_MAX_FILE": str(pid_max),
           "FLOWCEPTION_TEST_CMD": f"cat {pid_max} >{seen}; {command}"}  # fmt: skip
    proc = subprocess.run([str(ROOT / ".ci/run")], env=env, capture_output=True, text=True)
    assert proc.returncode == rc, proc.stderr
    assert seen.read_text().strip() == "4194304"  # raised for the run
    assert pid_max.read_text().strip() == "32768"  # and put back
