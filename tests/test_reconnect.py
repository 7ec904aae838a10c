"""Surviving the network: drops, hangs, long outages and crashes, against the real test sshd.

Faults are made as DESIGN.md says: kill -9 of the ssh client (a drop), SIGSTOP of the remote side
(a hang: sshd's process for the connection, which alone carries the stream's bytes on the remote,
since the agent daemon reads and writes ssh's pipes itself), SIGSTOP of the sshd listener (nobody
answers new logins). Every process is found and signalled by PID, read from /proc.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import pytest
from jupyter_client import BlockingKernelClient, KernelManager

from proxykernel.proxy import kernel_id
from proxykernel.testing.procs import descendants, read_stat
from proxykernel.testing.sshd import stream_peer_pid
from remote_agent.paths import runtime_dir
from tests.kernels import printed, alive, proxy_argv, run_cell, running_kernel, shell_reply

FAST = ["--heartbeat-interval", "0.5", "--heartbeat-timeout", "2"]


def ssh_child(km: KernelManager, not_pid: Optional[int] = None, timeout: float = 15) -> int:
    """The proxy's current ssh client (its only child), once it differs from ``not_pid``."""
    proxy = km.provisioner.pid  # type: ignore[union-attr]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        children = [p for p in descendants(proxy) if alive(p) and (read_stat(p) or ("", "", 0))[2] == proxy]
        if children and children[0] != not_pid:
            return children[0]
        time.sleep(0.02)
    raise AssertionError("the proxy started no new ssh within %.0f s" % timeout)


def host_pid(sshd: Any, ns_pid: int) -> int:
    """Map a pid seen inside the test sshd's PID namespace (e.g. the kernel's os.getpid())."""
    for pid in descendants(sshd.pid):
        try:
            status = Path("/proc/%d/status" % pid).read_text()
        except OSError:
            continue
        nspids = [line.split()[1:] for line in status.splitlines() if line.startswith("NSpid:")]
        if nspids and nspids[0][-1] == str(ns_pid):
            return pid
    raise AssertionError("no process with namespace pid %d under the test sshd" % ns_pid)


def attach_pid(daemon: int) -> int:
    """The ssh session's attach process currently attached to ``daemon``: the peer of the daemon's
    accepted unix socket, from ``ss`` (the daemon is detached, so it is no child of attach)."""
    rows = [line.split() for line in subprocess.run(["ss", "-xpnH"], capture_output=True, text=True,
                                                    check=True).stdout.splitlines()]
    pid_of = {row[5]: re.findall(r"pid=(\d+)", " ".join(row[8:])) for row in rows if len(row) > 8}
    for row in rows:
        if len(row) > 8 and row[4].endswith(".sock") and "pid=%d," % daemon in " ".join(row[8:]):
            peers = pid_of.get(row[7])
            if peers:
                return int(peers[0])
    raise AssertionError("no process is attached to the agent daemon %d" % daemon)


def remote_pid(kc: BlockingKernelClient, sshd: Any) -> int:
    outputs = run_cell(kc, "import os; print(os.getpid())")[1]
    return host_pid(sshd, int(outputs[0][1]["text"]))


def collect_lines(kc: BlockingKernelClient, msg_id: str, timeout: float) -> List[int]:
    """The numbers a cell printed, one per line, in arrival order, until the cell is idle."""
    text = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msg = kc.get_iopub_msg(timeout=max(0.01, deadline - time.monotonic()))
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == "stream":
            text.append(msg["content"]["text"])
        elif msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            return [int(line) for line in "".join(text).split()]
    raise AssertionError("the cell did not finish within %.0f s" % timeout)


@contextmanager
def dropping(km: KernelManager, drops: int, every: float) -> Iterator[Dict[str, int]]:
    """Kill -9 the proxy's ssh client ``drops`` times in a background thread."""
    done = {"drops": 0}
    stop = threading.Event()

    def run() -> None:
        pid = ssh_child(km)
        for _ in range(drops):
            if stop.wait(every):
                return
            os.kill(pid, signal.SIGKILL)
            done["drops"] += 1
            pid = ssh_child(km, not_pid=pid)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield done
    finally:
        stop.set()
        thread.join(30)


PRINT_EVERY_20MS = "import time\nfor i in range({n}):\n    print(i, flush=True)\n    time.sleep(0.02)\n"
# Prints until the test creates the file ``stop`` (the kernel runs on this same machine), at most 60 s.
PRINT_UNTIL = ("import os, time\ni = 0\nwhile not os.path.exists({stop!r}) and i < 3000:\n"
               "    print(i, flush=True)\n    i += 1\n    time.sleep(0.02)\n")


@pytest.mark.parametrize("drops, sharing", [(1, False), (1, True), (20, True)],
                         ids=["1-new-login", "1-via-master", "20-via-master"])
def test_ssh_killed_mid_cell_loses_and_repeats_nothing(sshd: Any, tmp_path: Path, drops: int,
                                                       sharing: bool) -> None:
    stop = tmp_path / "stop"
    extra = FAST + ([] if sharing else ["--no-connection-sharing"])
    with running_kernel(proxy_argv(sshd, extra=extra), tmp_path) as (km, kc):
        run_cell(kc, "state = 'kept'")
        msg_id = kc.execute(PRINT_UNTIL.format(stop=str(stop)))
        # A drop every 0.8 s after each new ssh starts: past its login (~0.3 s), so each one lands on
        # a working link and the proxy's backoff never grows.
        with dropping(km, drops, every=0.8 if drops > 1 else 2.0) as done:
            deadline = time.monotonic() + 50
            while done["drops"] < drops and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(1.0)  # output after the last drop must arrive too
            stop.touch()
            got = collect_lines(kc, msg_id, timeout=60)
        assert done["drops"] == drops
        assert len(got) > 30 * drops  # the cell really printed through every drop
        assert got == list(range(len(got)))
        assert shell_reply(kc, msg_id, timeout=30)["content"]["status"] == "ok"
        assert printed(kc, "print(state)") == "kept\n"


def test_hung_remote_is_detected_and_recovered(sshd: Any, tmp_path: Path) -> None:
    # No shared ssh connection: the hang stops sshd's process for the connection, and a reconnect
    # through that same connection would hang too.
    with running_kernel(proxy_argv(sshd, extra=FAST + ["--no-connection-sharing"]), tmp_path) as (km, kc):
        kernel = remote_pid(kc, sshd)
        daemon = read_stat(kernel)[2]  # type: ignore[index]
        session = stream_peer_pid(sshd, daemon)
        first_ssh = ssh_child(km)
        msg_id = kc.execute(PRINT_EVERY_20MS.format(n=250))
        time.sleep(1.0)
        os.kill(session, signal.SIGSTOP)  # the connection stays open, but nothing moves
        try:
            stopped = time.monotonic()
            ssh_child(km, not_pid=first_ssh, timeout=10)
            detected = time.monotonic() - stopped
            got = collect_lines(kc, msg_id, timeout=60)
        finally:
            os.kill(session, signal.SIGCONT)
        assert detected < 2 + 1.5  # --heartbeat-timeout 2, plus a tick and the kill
        assert got == list(range(250))


def test_outage_beyond_reconnect_timeout_gives_up_and_linger_cleans_up(sshd: Any, tmp_path: Path) -> None:
    # No ControlMaster: through one, a reconnect needs no new login and would get through.
    extra = FAST + ["--reconnect-timeout", "3", "--linger", "2", "--no-connection-sharing"]
    with running_kernel(proxy_argv(sshd, extra=extra), tmp_path) as (km, kc):
        kernel = remote_pid(kc, sshd)
        connection_dir = run_cell(
            kc, "import ipykernel, os; print(os.path.dirname(ipykernel.get_connection_file()))")[1]
        remote_dir = connection_dir[0][1]["text"].strip()
        socket_path = os.path.join(runtime_dir(), kernel_id(km.session.key.decode(), km.connection_file) + ".sock")
        assert os.path.exists(socket_path)
        listener = [p for p in descendants(sshd.pid) if read_stat(p)[2] == sshd.pid][0]  # type: ignore[index]
        os.kill(listener, signal.SIGSTOP)  # new logins hang: nothing can reconnect
        try:
            os.kill(ssh_child(km), signal.SIGKILL)
            lost = time.monotonic()
            while km.is_alive() and time.monotonic() - lost < 15:
                time.sleep(0.05)
            assert not km.is_alive()
            assert time.monotonic() - lost < 3 + 2 + 1.5
        finally:
            os.kill(listener, signal.SIGCONT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (alive(kernel) or os.path.exists(remote_dir)
                                               or os.path.exists(socket_path)):
            time.sleep(0.05)
        assert not alive(kernel)
        assert not os.path.exists(remote_dir)
        assert not os.path.exists(socket_path)


def test_kernel_crash_is_seen_within_3s_and_restart_works(sshd: Any, tmp_path: Path) -> None:
    with running_kernel(proxy_argv(sshd), tmp_path) as (km, kc):
        run_cell(kc, "state = 1")
        kc.execute("import os; os._exit(1)")
        crashed = time.monotonic()
        while km.is_alive() and time.monotonic() - crashed < 10:
            time.sleep(0.02)
        assert not km.is_alive()
        assert time.monotonic() - crashed < 3
        km.restart_kernel(now=False)
        kc.wait_for_ready(timeout=60)
        reply = run_cell(kc, "state")[0]
        assert reply["status"] == "error" and reply["ename"] == "NameError"
