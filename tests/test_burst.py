"""A burst of output bigger than the replay buffer during an outage: memory stays bounded, the user is told.

With ``--buffer-size 64``, the kernel writes 300 MB while the link is down for 20 s. Each side's peak
resident memory (``VmHWM``) must stay within the 64 MB cap plus 50 MB, the cell must show a stderr
notice saying how much output was dropped, and the kernel must go on working.

Two faults, made as DESIGN.md says, both with the sshd listener stopped so that no reconnect can
succeed before the burst is over:

- ``drop``: kill -9 of the ssh client: the remote side sees its stream end at once;
- ``hang``: SIGSTOP of sshd's process for the connection on the remote (a network that stops
  carrying bytes without closing anything): the agent keeps writing into a stalled link until its
  heartbeat gives up (``--heartbeat-timeout``, 5 s by default).
"""
from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path
from queue import Empty
from typing import Any, Dict, List

import pytest

from proxykernel.testing.procs import descendants, read_stat
from proxykernel.testing.sshd import stream_peer_pid
from tests.kernels import printed, proxy_argv, run_cell, running_kernel, shell_reply
from tests.test_reconnect import remote_pid, ssh_child

# Timing- and memory-sensitive: run alone, after the parallel part of the suite (scripts/test).
pytestmark = pytest.mark.serial

BUFFER_MB = 64
SLACK_MB = 50  # what each side may use above the buffer cap (interpreter, libraries, ZMQ queues)
BURST_MB = 300
OUTAGE = 20.0  # seconds from the fault until the link may come back
MiB = 1024 * 1024

# Says it runs, waits for the test's go-file (the kernel runs on this machine), then writes BURST_MB in 1 MiB
# stream messages, then leaves a done-file with the burst's duration.
BURST = """\
import os, sys, time

print("waiting", flush=True)
deadline = time.monotonic() + 30
while not os.path.exists({go!r}) and time.monotonic() < deadline:
    time.sleep(0.01)
start = time.monotonic()
chunk = ("x" * 1023 + "\\n") * 1024
for i in range({mb}):
    sys.stdout.write(chunk)
    sys.stdout.flush()
open({done!r}, "w").write("%.2f" % (time.monotonic() - start))
print("burst over", flush=True)
"""

NOTICE = re.compile(r"^\[proxykernel\] (\d+) output messages \(([\d.]+) MB\) .*dropped", re.S)


def vm_hwm_mb(pid: int) -> float:
    """Peak resident set of ``pid`` (VmHWM from /proc/PID/status) in MiB."""
    for line in Path("/proc/%d/status" % pid).read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    raise AssertionError("no VmHWM for pid %d" % pid)


def wait_for_output(kc: Any, msg_id: str, text: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msg = kc.get_iopub_msg(timeout=max(0.01, deadline - time.monotonic()))
        if (msg["msg_type"] == "stream" and msg["parent_header"].get("msg_id") == msg_id
                and msg["content"]["text"] == text):
            return
    raise AssertionError("the cell did not print %r within %.0f s" % (text, timeout))


def listener_pid(sshd: Any) -> int:
    """The test sshd's listening process: the only child of its unshare process."""
    return [p for p in descendants(sshd.pid) if (read_stat(p) or ("", "", 0))[2] == sshd.pid][0]


# Known failures (figures from this test, 300 MB burst, --buffer-size 64; see the commit message):
# - the notice says "(0.0 MB)": wire.Connection._skip counts only drop runs that start after the
#   peer's last received frame, but _drop_oldest_output's run usually starts at a frame the peer had
#   received and not yet acknowledged (acks are batched), so its bytes are never counted;
# - the agent peaks at ~168 MB after a drop: resume() queues the whole replay buffer and
#   Agent.flush keeps data_to_send()'s joined copy of it in Agent.out, so the cap is held twice;
# - and at 340-510 MB after a hang: while the link is attached but stalled, Agent.out (unbounded)
#   collects a copy of everything the kernel writes until the heartbeat gives up.
@pytest.mark.parametrize("fault", ["drop", "hang"])
def test_burst_during_outage_stays_within_the_buffer_cap(sshd: Any, tmp_path: Path, fault: str) -> None:
    go, done = tmp_path / "go", tmp_path / "done"
    # No shared ssh connection: through it a reconnect needs no login and would end the outage early.
    extra = ["--buffer-size", str(BUFFER_MB), "--no-connection-sharing"]
    with running_kernel(proxy_argv(sshd, extra=extra), tmp_path) as (km, kc):
        run_cell(kc, "state = 'kept'")
        kernel = remote_pid(kc, sshd)
        daemon = read_stat(kernel)[2]  # type: ignore[index]
        session = stream_peer_pid(sshd, daemon)  # sshd's process that carries the stream
        proxy = km.provisioner.pid  # type: ignore[union-attr]
        before = {"proxy": vm_hwm_mb(proxy), "agent": vm_hwm_mb(daemon)}
        listener = listener_pid(sshd)
        msg_id = kc.execute(BURST.format(go=str(go), done=str(done), mb=BURST_MB))
        wait_for_output(kc, msg_id, "waiting\n")  # the request is through: the link may go now
        os.kill(listener, signal.SIGSTOP)  # new logins wait: the outage lasts until SIGCONT
        stopped = [listener]
        try:
            if fault == "hang":
                os.kill(session, signal.SIGSTOP)
                stopped.append(session)
            else:
                os.kill(ssh_child(km), signal.SIGKILL)
            faulted = time.monotonic()
            go.touch()
            while not done.exists() and time.monotonic() - faulted < OUTAGE:
                time.sleep(0.1)
            burst_over = done.exists()
            time.sleep(max(0.0, faulted + OUTAGE - time.monotonic()))
        finally:
            for pid in reversed(stopped):
                os.kill(pid, signal.SIGCONT)
        assert burst_over, "the burst did not end within the %.0f s outage" % OUTAGE
        restored = time.monotonic()
        notices: List[str] = []
        received = 0
        deadline = restored + 40
        while time.monotonic() < deadline:
            try:
                msg = kc.get_iopub_msg(timeout=max(0.01, deadline - time.monotonic()))
            except Empty:
                break
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "stream" and msg["content"]["name"] == "stderr":
                notices.append(msg["content"]["text"])
            elif msg["msg_type"] == "stream":
                received += len(msg["content"]["text"])
            elif msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                break
        recovered = time.monotonic() - restored
        reply = shell_reply(kc, msg_id, timeout=20)
        peak = {"proxy": vm_hwm_mb(proxy), "agent": vm_hwm_mb(daemon)}
        figures: Dict[str, Any] = {"fault": fault, "burst_s": float(done.read_text()),
                                   "received_mb": received / MiB, "recovered_s": recovered,
                                   "peak_before_mb": before, "peak_mb": peak, "notices": notices}
        print("\nburst figures: %r" % figures)
        # What must hold already: the reply arrives, the user is told, the kernel works.
        assert reply["content"]["status"] == "ok"
        assert len(notices) == 1, notices
        match = NOTICE.match(notices[0])
        assert match, notices[0]
        assert int(match.group(1)) > 0
        assert received <= (BUFFER_MB + 2) * MiB
        assert peak["proxy"] <= BUFFER_MB + SLACK_MB, figures
        assert printed(kc, "print(state)") == "kept\n"
        # The notice is exact to a frame's header (runs the peer partly has are shared pro rata).
        dropped = float(match.group(2)) * 1e6  # the notice counts MB of 10**6 bytes
        assert abs(dropped + received - BURST_MB * MiB) < 0.02 * BURST_MB * MiB, figures
        assert peak["agent"] <= BUFFER_MB + SLACK_MB, figures
