"""The remote side's fast paths, without ssh: ``remote_agent.attach.main`` runs in a subprocess whose
fds 0/1 are pipes or a socketpair (as sshd gives them), and the test speaks the proxy's side of
the stream with ``wire.Connection``.

- A new daemon launches the kernel before it imports zmq, and keeps the frames that came with the
  Start frame.
- attach hands ssh's fds to the daemon and keeps none; the daemon reads and writes them itself.
  Whenever the daemon lets a stream go (EOF, a dead heartbeat, a newer link) that stream's attach
  process exits, so its ssh session ends.

And through the real test sshd: the same fd ownership, and an attach process that ends with its link.
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
from typing import Any, Dict, Iterator, List, Optional, Sequence, Set, Tuple

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

    def __init__(self, runtime: str, kernel_id: str, stdio: str, launches: str,
                 options: Sequence[str] = ()) -> None:
        env = dict(os.environ, XDG_RUNTIME_DIR=runtime, PXK_TEST_LAUNCHES=launches,
                   PYTHONPATH=str(ROOT))
        argv = [sys.executable, "-c", ATTACH, "--id", kernel_id, "--linger", "30", *options]
        self.sock: Optional[socket.socket] = None
        if stdio == "socketpair":
            ours, theirs = socket.socketpair()
            self.process = subprocess.Popen(argv, stdin=theirs.fileno(), stdout=theirs.fileno(), env=env)
            # What /proc/PID/fd shows for the remote's end of the stream.
            self.stream = {"socket:[%d]" % os.fstat(theirs.fileno()).st_ino}
            theirs.close()
            self.sock = ours
            self.read_fd = self.write_fd = ours.fileno()
        else:
            self.process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
            assert self.process.stdin is not None and self.process.stdout is not None
            self.read_fd, self.write_fd = self.process.stdout.fileno(), self.process.stdin.fileno()
            self.stream = {"pipe:[%d]" % os.fstat(fd).st_ino for fd in (self.read_fd, self.write_fd)}

    kernel_id = ""

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.write_fd, view):]

    def read_events(self, conn: wire.Connection, until: Any, timeout: float = DEADLINE) -> List[wire.Event]:
        """Events from the stream until one satisfies ``until``; pings are answered meanwhile (so a
        slow kernel start is not a dead link), never after."""
        events: List[wire.Event] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.read_fd], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                break
            data = os.read(self.read_fd, 1 << 20)
            if not data:
                raise AssertionError("the stream ended; events so far: %r" % (events,))
            received = conn.receive_data(data)
            answer = conn.data_to_send()  # the pongs and acks the Connection queued, as a proxy sends them
            if answer:
                self.write(answer)
            for event in received:
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


def attach(remote: Dict[str, Any], kernel_id: str, stdio: str = "pipes", options: Sequence[str] = ()) -> Remote:
    """Run attach as a new ssh session would."""
    session = Remote(os.path.join(remote["runtime"], "rt"), kernel_id, stdio, remote["launches"], options)
    remote["sessions"].append(session)
    return session


def start_kernel(remote: Dict[str, Any], stdio: str = "pipes",
                 options: Sequence[str] = ()) -> Tuple[Remote, wire.Connection, Dict[str, Any]]:
    """A new daemon and kernel: hello, Start and a kernel_info_request in one write."""
    kernel_id = "t" + uuid.uuid4().hex[:12]
    session = attach(remote, kernel_id, stdio, options)
    session.kernel_id = kernel_id
    conn = wire.Connection(wire.Role.PROXY, session=uuid.uuid4().hex)
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


def test_daemon_module_does_not_import_zmq() -> None:
    """A new daemon imports remote_agent.daemon before it launches the kernel: zmq must wait."""
    out = subprocess.run([sys.executable, "-c", "import sys, remote_agent.daemon; print('zmq' in sys.modules)"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


@pytest.mark.parametrize("stdio", ["pipes", "socketpair"])
def test_new_daemon_launches_the_kernel_before_zmq_and_keeps_frames_after_start(
        remote: Dict[str, Any], stdio: str) -> None:
    session, conn, info = start_kernel(remote, stdio)  # the kernel_info_request came with Start
    assert Path(remote["launches"]).read_text() == "zmq not imported\n"
    shut_down(session, conn, info)


def fd_targets(pid: int) -> Set[str]:
    """What the fds of ``pid`` refer to, as /proc/PID/fd shows them."""
    found: Set[str] = set()
    for name in os.listdir("/proc/%d/fd" % pid):
        try:
            found.add(os.readlink("/proc/%d/fd/%s" % (pid, name)))
        except OSError:
            pass
    return found


def wait_until(condition: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return bool(condition())


def reattach(remote: Dict[str, Any], conn: wire.Connection, kernel_id: str,
             options: Sequence[str] = ()) -> Remote:
    """A new ssh session for the same kernel, resumed the way the proxy's reconnect does it."""
    session = attach(remote, kernel_id, options=options)
    conn.new_link()
    conn.send_hello()
    session.write(conn.data_to_send())
    session.read_events(conn, lambda e: isinstance(e, wire.Hello))
    return session


@pytest.mark.parametrize("stdio", ["pipes", "socketpair"])
def test_daemon_holds_the_stream_and_attach_only_the_socket(remote: Dict[str, Any], stdio: str) -> None:
    session, conn, info = start_kernel(remote, stdio)
    daemon = info["agent_pid"]
    assert session.stream <= fd_targets(daemon)
    # attach closes its copies as soon as the daemon said it has the fds.
    assert wait_until(lambda: not session.stream & fd_targets(session.process.pid)), \
        fd_targets(session.process.pid)
    assert session.process.poll() is None  # it stays: sshd would end the session without it
    shut_down(session, conn, info)


def test_stream_end_ends_attach_and_the_daemon_waits(remote: Dict[str, Any]) -> None:
    session, conn, info = start_kernel(remote)
    assert session.process.stdin is not None
    session.process.stdin.close()  # ssh's stdin ends: the daemon lets the stream go
    session.process.wait(DEADLINE)
    assert alive(info["agent_pid"]) and alive(info["pid"])
    second = reattach(remote, conn, session.kernel_id)
    shut_down(second, conn, info)


def test_newer_link_replaces_the_older_one_whose_attach_exits(remote: Dict[str, Any]) -> None:
    first, conn, info = start_kernel(remote)
    second = reattach(remote, conn, first.kernel_id)
    first.process.wait(DEADLINE)  # the older session's attach is gone...
    ended = False  # ...and the daemon closed its stream: it ends after what was in flight
    deadline = time.monotonic() + DEADLINE
    while not ended and time.monotonic() < deadline:
        if select.select([first.read_fd], [], [], 1.0)[0]:
            ended = os.read(first.read_fd, 1 << 20) == b""
    assert ended
    shut_down(second, conn, info)


def test_dead_heartbeat_ends_attach(remote: Dict[str, Any]) -> None:
    session, conn, info = start_kernel(remote, options=["--ping", "0.2", "--dead", "1"])
    started = time.monotonic()
    session.process.wait(DEADLINE)  # from now on we answer no pings
    assert time.monotonic() - started < 1 + 2
    second = reattach(remote, conn, session.kernel_id)
    shut_down(second, conn, info)


def test_through_sshd_the_daemon_has_the_pipes_and_attach_ends_with_its_link(sshd: Any, tmp_path: Path) -> None:
    from proxykernel.testing.procs import pipes, read_stat
    from proxykernel.testing.sshd import stream_peer_pid
    from tests.kernels import proxy_argv, run_cell, running_kernel
    from tests.test_reconnect import attach_pid, remote_pid, ssh_child

    with running_kernel(proxy_argv(sshd), tmp_path) as (km, kc):
        daemon = read_stat(remote_pid(kc, sshd))[2]  # type: ignore[index]
        attach = attach_pid(daemon)
        stream = pipes(daemon) & pipes(stream_peer_pid(sshd, daemon))
        assert len(stream) == 2  # ssh's stdin and stdout: sshd at one end, the daemon at the other
        assert not stream & pipes(attach)
        assert read_stat(attach)[0] == "cat"  # type: ignore[index]  # waits as cat, not as Python
        os.kill(ssh_child(km), signal.SIGKILL)  # a drop
        assert wait_gone(attach, 10), "the attach process outlived its ssh connection"
        assert run_cell(kc, "print('back')")[1] == [("stream", {"name": "stdout", "text": "back\n"})]
        assert attach_pid(daemon) != attach
