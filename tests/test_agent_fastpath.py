"""The remote side's fast paths, without ssh: ``remote_agent.attach.main`` runs in a subprocess whose
fds 0/1 are pipes or a socketpair (as sshd gives them), and the test speaks the proxy's side of
the stream with ``wire.Connection``.

- A new daemon launches the kernel before it imports zmq, and keeps the frames that came with the
  Start frame.
"""
from __future__ import annotations

import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import pytest
from jupyter_client.session import Session

from remote_agent import wire

ROOT = Path(__file__).resolve().parent.parent
DEADLINE = 30.0  # seconds any one wait in these tests may take

# Runs attach.main as the bootstrap does. Popen is wrapped first (the daemon is forked, so it
# inherits the wrapper) to write down whether zmq was imported when ipykernel was launched.
ATTACH = """
import os, sys, subprocess
real = subprocess.Popen.__init__
def popen(self, args, *rest, **options):
    if "ipykernel_launcher" in args:
        with open(os.environ["PXK_TEST_LAUNCHES"], "a") as out:
            out.write("zmq imported\\n" if "zmq" in sys.modules else "zmq not imported\\n")
    return real(self, args, *rest, **options)
subprocess.Popen.__init__ = popen
import remote_agent.attach
remote_agent.attach.main(sys.argv[1:])
"""


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is not alive
        return Path("/proc/%d/stat" % pid).read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_gone(pid: int, timeout: float = DEADLINE) -> bool:
    deadline = time.monotonic() + timeout
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    return not alive(pid)


class Remote:
    """One ssh session's worth of the remote side: an attach process and our end of its stream."""

    def __init__(self, runtime: str, kernel_id: str, stdio: str, launches: str) -> None:
        env = dict(os.environ, XDG_RUNTIME_DIR=runtime, PXK_TEST_LAUNCHES=launches,
                   PYTHONPATH=str(ROOT))
        argv = [sys.executable, "-c", ATTACH, "--id", kernel_id, "--linger", "30"]
        self.sock: Optional[socket.socket] = None
        if stdio == "socketpair":
            ours, theirs = socket.socketpair()
            self.process = subprocess.Popen(argv, stdin=theirs.fileno(), stdout=theirs.fileno(), env=env)
            theirs.close()
            self.sock = ours
            self.read_fd = self.write_fd = ours.fileno()
        else:
            self.process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
            assert self.process.stdin is not None and self.process.stdout is not None
            self.read_fd, self.write_fd = self.process.stdout.fileno(), self.process.stdin.fileno()

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.write_fd, view):]

    def read_events(self, conn: wire.Connection, until: Any, timeout: float = DEADLINE) -> List[wire.Event]:
        """Events from the stream until one satisfies ``until``."""
        events: List[wire.Event] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.read_fd], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                break
            data = os.read(self.read_fd, 1 << 20)
            if not data:
                raise AssertionError("the stream ended; events so far: %r" % (events,))
            for event in conn.receive_data(data):
                events.append(event)
                if until(event):
                    return events
        raise AssertionError("nothing expected came within %.0f s; events: %r" % (timeout, events))

    def close(self) -> None:
        """Close our end of the stream and wait for the attach process (idempotent)."""
        if self.sock is not None:
            self.sock.close()
        else:
            for pipe in (self.process.stdin, self.process.stdout):
                if pipe is not None:
                    pipe.close()
        try:
            self.process.wait(DEADLINE)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def remote() -> Iterator[Dict[str, Any]]:
    """A private runtime directory (short: it holds unix sockets), and every remote pid the test
    saw, killed if still there at the end."""
    runtime = tempfile.mkdtemp(prefix="pxkt-")
    state: Dict[str, Any] = {"runtime": runtime, "pids": [], "sessions": [],
                             "launches": os.path.join(runtime, "launches")}
    os.mkdir(os.path.join(runtime, "rt"), 0o700)
    try:
        yield state
    finally:
        for session in state["sessions"]:
            session.close()
        for pid in state["pids"]:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
                wait_gone(pid, 5)
        shutil.rmtree(runtime, ignore_errors=True)


def start_kernel(remote: Dict[str, Any], stdio: str = "pipes") -> Any:
    """A new daemon and kernel: hello, Start and a kernel_info_request in one write."""
    kernel_id = "t" + uuid.uuid4().hex[:12]
    session = Remote(os.path.join(remote["runtime"], "rt"), kernel_id, stdio, remote["launches"])
    remote["sessions"].append(session)
    conn = wire.Connection("proxy", session=uuid.uuid4().hex)
    key = uuid.uuid4().hex
    signer = Session(key=key.encode())
    conn.send_hello()
    conn.send_start({"key": key, "env": {}, "signature_scheme": "hmac-sha256", "kernel_name": "",
                     "transport": "ipc"})
    conn.resume(0)
    conn.send_data("shell", [b"client-1"] + signer.serialize(signer.msg("kernel_info_request")))
    session.write(conn.data_to_send())
    events = session.read_events(conn, lambda e: isinstance(e, wire.ChannelData) and e.channel == "shell")
    ready = [e for e in events if isinstance(e, wire.Ready)]
    assert ready, events
    remote["pids"] += [ready[0].info["pid"], ready[0].info["agent_pid"]]
    last = events[-1]
    assert isinstance(last, wire.ChannelData)
    reply = signer.deserialize(signer.feed_identities([bytes(part) for part in last.frames[1:]])[1])
    assert reply["msg_type"] == "kernel_info_reply"
    return session, conn, ready[0].info


def shut_down(session: Remote, conn: wire.Connection, info: Dict[str, Any]) -> None:
    conn.send_shutdown()
    session.write(conn.data_to_send())
    assert wait_gone(info["agent_pid"]), "the daemon did not exit after a shutdown"
    assert not alive(info["pid"])
    session.close()


def test_agent_module_does_not_import_zmq() -> None:
    """A new daemon imports remote_agent.agent before it launches the kernel: zmq must wait."""
    out = subprocess.run([sys.executable, "-c", "import sys, remote_agent.agent; print('zmq' in sys.modules)"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


@pytest.mark.parametrize("stdio", ["pipes", "socketpair"])
def test_new_daemon_launches_the_kernel_before_zmq_and_keeps_frames_after_start(
        remote: Dict[str, Any], stdio: str) -> None:
    session, conn, info = start_kernel(remote, stdio)  # the kernel_info_request came with Start
    assert Path(remote["launches"]).read_text() == "zmq not imported\n"
    shut_down(session, conn, info)
