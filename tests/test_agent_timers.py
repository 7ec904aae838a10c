"""The agent's timer decisions, driven with a made-up ``now``: no sockets, no clock."""
from __future__ import annotations

import subprocess
import sys
from typing import List

from remote_agent.agent import IDLE_EXIT, idle_expired
from remote_agent.kernel import KILL_GRACE, Kernel

LINGER = 3600.0


def test_a_kernel_lingers_for_its_proxy_until_linger_is_over() -> None:
    assert not idle_expired(IDLE_EXIT + 1, LINGER, kernel_alive=True, exit_unreported=False)
    assert not idle_expired(LINGER, LINGER, kernel_alive=True, exit_unreported=False)
    assert idle_expired(LINGER + 0.1, LINGER, kernel_alive=True, exit_unreported=False)


def test_a_daemon_without_a_kernel_leaves_after_idle_exit() -> None:
    """A restart that never came: no reason to wait for the whole --linger."""
    assert not idle_expired(IDLE_EXIT, LINGER, kernel_alive=False, exit_unreported=False)
    assert idle_expired(IDLE_EXIT + 0.1, LINGER, kernel_alive=False, exit_unreported=False)
    assert idle_expired(5.1, 5.0, kernel_alive=False, exit_unreported=False)  # a shorter --linger wins


def test_an_unreported_exit_waits_for_the_proxy_as_long_as_a_kernel_would() -> None:
    assert not idle_expired(IDLE_EXIT + 1, LINGER, kernel_alive=False, exit_unreported=True)
    assert idle_expired(LINGER + 0.1, LINGER, kernel_alive=False, exit_unreported=True)


def test_a_retired_kernel_is_killed_only_past_its_grace() -> None:
    """``Kernel.reap`` takes the loop's time: a kernel retired at t=100 that ignores its way out is
    left alone until 100 + KILL_GRACE, killed after, and forgotten once it has exited."""
    logs: List[str] = []
    kernel = Kernel(logs.append)
    kernel.process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    old = kernel.process
    try:
        kernel.retire(now=100.0)
        kernel.forget()
        kernel.reap(now=100.0 + KILL_GRACE)
        assert old.poll() is None
        kernel.reap(now=100.0 + KILL_GRACE + 0.1)
        assert old.wait(10) == -9  # SIGKILL
        kernel.reap(now=100.0 + KILL_GRACE + 0.2)  # exited: forgotten, so kill_retired has nothing to do
        kernel.kill_retired()
    finally:
        if old.poll() is None:
            old.kill()
            old.wait()
    assert not logs
