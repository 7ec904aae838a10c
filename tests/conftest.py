"""Shared fixtures: a real sshd (``sshd``), other local users who log in to it (``add_user``), and a
check that tests leave no processes behind."""

from __future__ import annotations

import os
import pwd
import signal
import subprocess
import sys
import time
from typing import Callable, Dict, Iterator, List

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(ROOT, "tests")
for _p in (TESTS, ROOT):  # `import proxykernel`, `import remote_agent`, `from sshd import ...`
    if _p not in sys.path:
        sys.path.insert(0, _p)

from proxykernel.testing.procs import descendants, pid_namespace, process_table  # noqa: E402
from proxykernel.testing.slurm import SlurmCluster  # noqa: E402
from proxykernel.testing.sshd import SSHServer  # noqa: E402

LEFTOVER_GRACE = 3.0  # seconds a test's processes get to exit after the test

# A client with no KernelManager (one that loads a connection file) calls a kernel dead when one
# heartbeat is 1 s late, which happens on 2 loaded cores with several test workers; Jupyter's own
# kernel restarter allows minutes. The tests check liveness themselves, by PID.
from jupyter_client.channels import HBChannel  # noqa: E402

HBChannel.time_to_dead = 10.0


@pytest.fixture(scope="session")
def sshd() -> Iterator[SSHServer]:
    """A running SSHServer shared by the whole session (see proxykernel/testing/sshd.py)."""
    with SSHServer() as server:
        yield server


@pytest.fixture(scope="session")
def slurm() -> Iterator[SlurmCluster]:
    """A single-node Slurm cluster shared by the session (proxykernel/testing/slurm.py): set up
    before each test's process snapshot, so its daemons are not a test's leftovers; its jobs are."""
    with SlurmCluster() as cluster:
        yield cluster


@pytest.fixture(scope="session")
def add_user(sshd: SSHServer) -> Iterator[Callable[..., str]]:
    """``add_user(NAME, sudo=False)``: the ssh alias of local user NAME on the session's sshd.

    A second user plays a remote user without root (tests of --sudo). The account is made with
    ``useradd -m`` if missing and kept; ``usermod -p '*'`` unlocks it for key logins (with UsePAM
    no, a locked '!' password refuses them). ``sudo=True`` writes a NOPASSWD sudoers file, removed
    at the end of the session.
    """
    sudoers: List[str] = []

    def add(name: str, sudo: bool = False) -> str:
        try:
            pwd.getpwnam(name)
        except KeyError:
            subprocess.run(["useradd", "-m", "-s", "/bin/sh", name], check=True, stdin=subprocess.DEVNULL)
        subprocess.run(["usermod", "-p", "*", name], check=True, stdin=subprocess.DEVNULL)
        if sudo:
            path = "/etc/sudoers.d/pxk-test-%s" % name
            with open(path, "w") as f:
                f.write("%s ALL=(ALL) NOPASSWD: ALL\n" % name)
            os.chmod(path, 0o440)
            sudoers.append(path)
        return sshd.allow_user(name)

    yield add
    for path in sudoers:
        if os.path.exists(path):
            os.remove(path)


def _our_processes() -> Dict[int, str]:
    """Live descendants of this pytest process in our own PID namespace.

    Processes inside an SSHServer's PID namespace (the "remote" side) are left out:
    SSHServer.stop() removes them all, and tests about remote cleanup check them
    explicitly (SSHServer.session_pids()).
    """
    own_ns = pid_namespace(os.getpid())
    table = process_table()
    return {
        p: table[p][0]
        for p in descendants(os.getpid(), table)
        if p in table and table[p][1] != "Z" and pid_namespace(p) == own_ns
    }


@pytest.fixture(autouse=True)
def _no_leftover_processes(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test that leaves processes it started still running (then kill them).

    Opt out with @pytest.mark.allow_leftover_processes. Only catches descendants of
    pytest; a process that double-forked away to init escapes this check.
    """
    before = set(_our_processes())
    yield
    if request.node.get_closest_marker("allow_leftover_processes"):
        return
    deadline = time.monotonic() + LEFTOVER_GRACE
    while True:
        new = {p: c for p, c in _our_processes().items() if p not in before}
        if not new or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    if new:
        for pid in new:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        pytest.fail(
            "test left processes running (killed now): %s"
            % ", ".join("%d (%s)" % kv for kv in sorted(new.items())),
            pytrace=False,
        )
