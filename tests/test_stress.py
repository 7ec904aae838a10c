"""The short form of ``python -m bench.stress`` (issue 9): kernel sessions that resend requests
while replies are in flight, through a real sshd and proxy; none may stall. The full benchmark runs
500; this runs 24, one after another (no port races between workers), in about 40 s. The
deterministic check of the cause is in test_frontend.py."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bench.run import ROOT

# Timing- and memory-sensitive: run alone, after the parallel part of the suite (scripts/test).
pytestmark = pytest.mark.serial

SESSIONS = 24


@pytest.mark.timeout(300)
def test_short_stress_run_has_no_stalled_session() -> None:
    done = subprocess.run([sys.executable, "-m", "bench.stress", "--sessions", str(SESSIONS),
                           "--workers", "1", "--stall", "15"],
                          cwd=str(ROOT), stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert lines, done.stderr[-3000:]
    result = json.loads(lines[-1])
    assert result["sessions"] == SESSIONS and result["workers_ok"], result
    assert result["stalled"] == 0, result["stalled_steps"]
    assert result["failed_starts"] == []
    assert done.returncode == 0
