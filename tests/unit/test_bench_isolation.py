"""bench.run runs each scenario in a process group of its own (bench/run.py, run_group).

Adversary: a scenario that hangs past its timeout with servers of its own still running (the
relay scenario's Kinwire, Janus and coturn are its children): the timeout must take them too,
not leave them to load the rest of the suite."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.run import run_group

# Starts a child that would outlive it, writes the child's pid, then hangs.
HANGS = """import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
open(sys.argv[1], "w").write(str(child.pid))
time.sleep(300)
"""


def running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie runs no more; only its dead parent could have reaped it


def test_a_timed_out_run_takes_its_children_with_it(tmp_path: Path) -> None:
    script, pid_file = tmp_path / "hangs.py", tmp_path / "child.pid"
    script.write_text(HANGS)
    started = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired):
        run_group([sys.executable, str(script), str(pid_file)], timeout_s=3.0)
    assert time.monotonic() - started < 10
    pid = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while running(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not running(pid), f"child {pid} outlived the timed-out run"


def test_a_finished_run_gives_its_output_and_code() -> None:
    code, stdout, stderr = run_group(
        [sys.executable, "-c", "import sys; print('out'); sys.exit(3)"], 10)
    assert (code, stdout.strip(), stderr) == (3, "out", "")
