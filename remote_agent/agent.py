"""The remote agent's daemon: one per kernel, detached, outliving ssh sessions.

Forked by ``remote_agent.attach`` (what each ssh session runs) on the Python the user chose, so the
kernel runs on that same interpreter. It launches ipykernel, bridges its five channels to whichever
stream is attached, keeps what the proxy has not acknowledged for replay, and stops the kernel after
``--linger`` seconds with no proxy attached.

A stream attaches as ssh's own stdin/stdout pipes, which the session's attach process passes over
the unix socket (SCM_RIGHTS): the daemon reads and writes them directly, and closes them and that
socket when it lets the stream go, which ends the attach process and with it the ssh session.

Self-contained: stdlib and pyzmq (which ipykernel already brings); Python >= 3.8 syntax; a
``zmq.Poller`` loop, no tornado.

A new daemon launches the kernel before it imports zmq: it reads the first link with the stdlib
until the Start frame, starts ipykernel (about 0.3 s to get going), and imports zmq (30-40 ms of
CPU) while the kernel boots. Nothing outside ``Agent`` may use zmq for that reason.
"""
from __future__ import annotations

import argparse
import array
import errno
import itertools
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import deque
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Deque, Dict, List, NamedTuple, Optional, Tuple

from remote_agent import peek, wire
from remote_agent.attach import HANDOFF, TAKEN, connect, options
from remote_agent.paths import runtime_dir, socket_path

__all__ = ["daemon_main", "Agent"]

POLL_MS = 100  # how often timers (heartbeat, linger, kernel exit) are checked when all is quiet
KILL_GRACE = 3.0  # seconds a kernel gets to exit after SIGTERM before SIGKILL
DRAIN_SECONDS = 0.3  # after the kernel exits, how long its last messages (shutdown_reply) may trail
IDLE_EXIT = 30.0  # a daemon with no kernel and no proxy for this long exits (a restart never came)
SENDMSG_PIECES = 512  # buffers per vectored write (IOV_MAX is 1024 on Linux)
# Bytes taken from the replay buffer into the link's write queue at a time: a stalled link then
# holds no more than this beyond the (capped) replay buffer itself.
OUT_BUDGET = 4 * 1024 * 1024
LOG_BACKLOG = 200  # log lines kept while no proxy is attached
# Our sockets connect before the kernel has bound its own: ZMQ retries every RECONNECT_MS (its
# default, 100 ms, would add up to that to every start).
RECONNECT_MS = 10
# A kernel that greets subscribers (iopub_welcome, ipykernel 7+) gets no request before our SUB is
# greeted, so the first cell's output cannot be published before we listen; this long at most.
WELCOME_WAIT = 10.0
# How long a new daemon waits, zmq not yet imported, for its first link and that link's Start
# frame. The first link brings Start at once; one that does not (a reconnect that found the old
# daemon gone) is served by the Agent after this.
FIRST_START_WAIT = 1.0
# How long a connection to our socket may take to hand over its ssh stream. attach sends it right
# after connecting; only a stuck or foreign client takes longer, and the loop waits for it meanwhile.
HANDOFF_WAIT = 2.0

if TYPE_CHECKING:
    import zmq


def _stderr(message: str) -> None:
    sys.stderr.write("proxykernel-agent: %s\n" % message)
    sys.stderr.flush()


# -- the daemon ------------------------------------------------------------------------------
def daemon_main(argv: List[str]) -> None:
    """The daemon's entry point, in the process ``attach`` forked for it."""
    opts = options(argv)
    path = socket_path(opts.id)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(path)
    except OSError as error:
        if error.errno != errno.EADDRINUSE or connect(path) is not None:
            raise SystemExit("proxykernel-agent: cannot listen on %s: %s" % (path, error))
        os.unlink(path)  # a stale socket from a daemon that died: take its place
        listener.bind(path)
    listener.listen(4)
    signal.signal(signal.SIGTERM, _exit_on_signal)
    first = _FirstLink(wire.Connection(wire.Role.AGENT, max_buffer=opts.buffer))
    try:
        try:
            _read_first_start(listener, first)
            _import_zmq()  # while the kernel starts
            agent = Agent(listener, opts, first.conn)
        except BaseException:
            if first.launch is not None:  # a SIGTERM, or no usable zmq: no kernel is left behind
                _discard_launch(first.launch)
            if first.link is not None:
                first.link.close()
            raise
        code = agent.run(first)
    finally:
        listener.close()
        for leftover in (path, path[:-len(".sock")] + ".log"):
            try:
                os.unlink(leftover)
            except OSError:
                pass
    sys.exit(code if 0 <= code < 256 else 1)


def _import_zmq() -> None:
    """Import pyzmq into this module's namespace: ``Agent`` is its only user (see the docstring)."""
    global zmq
    import zmq


class _FirstLink:
    """What a new daemon got before it had zmq: its first link, what that link said, and the
    kernel launched for its Start frame. ``Agent.run`` takes it over."""

    def __init__(self, conn: wire.Connection) -> None:
        self.conn = conn  # has parsed what was read: frames after Start are in ``events``
        self.link: Optional[_Link] = None
        self.accepted_at = 0.0
        self.events: List[wire.Event] = []
        self.error: Optional[wire.ProtocolError] = None  # raised by the decoder
        self.closed: Optional[str] = None  # why the link ended, if it did
        self.launch: Optional[_Launch] = None


def _read_first_start(listener: socket.socket, first: _FirstLink) -> None:
    """Accept the first link and read it until the Start frame has been parsed, then launch the
    kernel. Stdlib only; stops early (the Agent takes over as is) on EOF, an error or a timeout."""
    deadline = time.monotonic() + FIRST_START_WAIT
    link = None
    while link is None:  # a connection that brings no stream (another daemon's probe) is skipped
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        listener.settimeout(remaining)
        try:
            control, _ = listener.accept()
        except OSError:  # socket.timeout is an OSError
            return
        finally:
            listener.settimeout(None)
        link = _receive_link(control)
    first.link, first.accepted_at = link, time.monotonic()
    poll = select.poll()
    poll.register(link.read_fd, select.POLLIN)
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not poll.poll(remaining * 1000):
            break
        try:
            count = os.readv(link.read_fd, [first.conn.read_buffer()])  # as Agent.read_link does
        except BlockingIOError:
            continue
        except OSError as error:
            first.closed = str(error)
            break
        if not count:
            first.closed = "the ssh connection closed"
            break
        try:
            first.events.extend(first.conn.received_into(count))
        except wire.ProtocolError as error:
            first.error = error
            break
        start = next((event for event in first.events if isinstance(event, wire.Start)), None)
        if start is not None:
            first.launch = _launch_kernel(start.config)
            break


class _Link:
    """An attached ssh stream: ssh's stdin and stdout, lent by the session's attach process,
    which waits on ``control`` until we close it. The fds may be pipes or sockets; both are
    non-blocking here."""

    def __init__(self, control: socket.socket, read_fd: int, write_fd: int) -> None:
        self.control = control
        self.read_fd = read_fd
        self.write_fd = write_fd

    def close(self) -> None:
        """Let the stream go: with the last copies of ssh's fds and the control socket closed,
        attach exits and the ssh session ends."""
        os.close(self.read_fd)
        os.close(self.write_fd)
        self.control.close()


def _receive_link(control: socket.socket) -> Optional[_Link]:
    """Take the ssh stream that attach hands over on a new connection to our socket (HANDOFF with
    two fds) and acknowledge it. None, with the connection closed, when something else came: a
    daemon's check whether we are alive connects and closes at once."""
    fds = array.array("i")
    control.settimeout(HANDOFF_WAIT)
    try:
        data, ancillary, flags, _ = control.recvmsg(len(HANDOFF), socket.CMSG_SPACE(2 * fds.itemsize))
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(payload[:len(payload) - len(payload) % fds.itemsize])
        if data == HANDOFF and len(fds) == 2 and not flags & socket.MSG_CTRUNC:
            control.sendall(TAKEN)
            for fd in fds:
                os.set_blocking(fd, False)
                os.set_inheritable(fd, False)  # received fds are inheritable; kernels must not hold them
            control.setblocking(False)
            return _Link(control, fds[0], fds[1])
        if data:
            _stderr("a connection to the daemon's socket sent %r instead of an ssh stream" % data[:16])
    except OSError as error:
        _stderr("a connection to the daemon's socket failed before it handed over a stream: %s" % error)
    for fd in fds:
        os.close(fd)
    control.close()
    return None


def _exit_on_signal(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds through Agent.run, which stops the kernel


def _free_tcp_ports(count: int) -> List[int]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def _write_connection_file(fname: str, transport: str, ip: str, config: Dict[str, Any]) -> Dict[str, Any]:
    """What jupyter_client.write_connection_file writes, without importing it (it costs 0.1 s of
    every start): 0600 from creation, in our 0700 directory."""
    names = ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")
    ports = list(range(1, 6)) if transport == "ipc" else _free_tcp_ports(5)
    info: Dict[str, Any] = dict(zip(names, ports))
    info.update(ip=ip, transport=transport, key=config["key"],
                signature_scheme=config.get("signature_scheme", "hmac-sha256"),
                kernel_name=config.get("kernel_name", ""))
    fd = os.open(fname, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(info, handle)
    return info


def _ipykernel_greets() -> bool:
    """Does this ipykernel send iopub_welcome to a new subscriber (JEP 65, ipykernel 7)?"""
    major = _ipykernel_version().split(".")[0]
    return major.isdigit() and int(major) >= 7


@lru_cache(maxsize=None)
def _ipykernel_version() -> str:
    try:
        from importlib.metadata import version
        return version("ipykernel")
    except Exception:  # metadata missing in odd installs: the version is only informative
        return "unknown"


class _Launch(NamedTuple):
    """A kernel process started for a Start frame's ``config``, by ``_launch_kernel``."""
    config: Dict[str, Any]
    process: Optional["subprocess.Popen[bytes]"]  # None: Popen failed, ``error`` says why
    connection_dir: Optional[str]
    connection_info: Dict[str, Any]
    error: str


def _launch_kernel(config: Dict[str, Any]) -> _Launch:
    """Write the connection file and start ipykernel. Plain Python, no zmq: a new daemon calls it
    before it imports zmq, the Agent for every later kernel."""
    # A fresh 0700 directory (mkdtemp) for the connection file and ipc sockets, inside our
    # per-user runtime directory: private twice over, and short (unix socket paths are too).
    connection_dir = tempfile.mkdtemp(prefix="pxk-", dir=runtime_dir())
    fname = os.path.join(connection_dir, "kernel.json")
    transport = config.get("transport", "ipc")
    ip = os.path.join(connection_dir, "k") if transport == "ipc" else "127.0.0.1"
    info = _write_connection_file(fname, transport, ip, config)
    env = dict(os.environ)
    env.update(config.get("env", {}))
    try:
        process = subprocess.Popen(
            # stdout only carries ipykernel's console banner (cell output goes over IOPub).
            [sys.executable, "-m", "ipykernel_launcher", "-f", fname], stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
            start_new_session=True)  # cwd: where the remote shell cd-ed (--workdir)
    except OSError as error:
        shutil.rmtree(connection_dir, ignore_errors=True)
        return _Launch(config, None, None, info,
                       "could not start the kernel on %s: %s" % (socket.gethostname(), error))
    assert process.stderr is not None
    os.set_blocking(process.stderr.fileno(), False)
    return _Launch(config, process, connection_dir, info, "")


def _discard_launch(launch: _Launch) -> None:
    """Stop a kernel launched for a Start frame that was never handled, and remove its files."""
    if launch.process is not None:
        launch.process.terminate()
        try:
            launch.process.wait(KILL_GRACE)
        except subprocess.TimeoutExpired:
            launch.process.kill()
            launch.process.wait()
        if launch.process.stderr is not None:
            launch.process.stderr.close()
    if launch.connection_dir:
        shutil.rmtree(launch.connection_dir, ignore_errors=True)


class Agent:
    """The daemon's state: the kernel process, its ZMQ sockets, and at most one attached stream."""

    def __init__(self, listener: socket.socket, options: argparse.Namespace,
                 conn: Optional[wire.Connection] = None) -> None:
        """Called by ``daemon_main`` with its listening socket, the proxy's options and the
        decoder that has read the first link so far."""
        self.listener = listener
        self.options = options
        self.conn = conn if conn is not None else wire.Connection(wire.Role.AGENT, max_buffer=options.buffer)
        self.context = zmq.Context()
        self.context.setsockopt(zmq.RECONNECT_IVL, RECONNECT_MS)  # (a default for its sockets)
        self.poller = zmq.Poller()
        self.poller.register(listener.fileno(), zmq.POLLIN)  # plain fds: Poller.poll returns fds
        self.link: Optional[_Link] = None
        self.heartbeat: Optional[wire.Heartbeat] = None
        self.out: Deque[memoryview] = deque()
        self.out_bytes = 0
        self.detached_since = time.monotonic()
        self.logs: Deque[str] = deque(maxlen=LOG_BACKLOG)
        self.config: Dict[str, Any] = {}
        self.kernel: Optional["subprocess.Popen[bytes]"] = None
        self.kernel_stderr = b""
        self.kernel_used = False  # a pre-started kernel is handed over only if nobody used it
        self.restart_expected = False
        self.exited_code: Optional[int] = None  # the last kernel's exit code, until reported
        self.connection_dir: Optional[str] = None
        self.connection_info: Dict[str, Any] = {}
        self.iopub: Optional[zmq.Socket] = None
        self.welcomed = False  # the kernel's iopub_welcome to our own SUB is not for the frontends
        self.subscribed = True  # our SUB is known to hear the kernel; else requests wait in held
        self.held: List[wire.ChannelData] = []
        self.launched_at = 0.0
        # (channel, frontend identity) -> DEALER, and back: replies go to the frontend that asked.
        self.dealers: Dict[Tuple[str, bytes], zmq.Socket] = {}
        self.routes: Dict[zmq.Socket, Tuple[str, bytes]] = {}
        self.exit_code: Optional[int] = None
        self.retired: List[Tuple["subprocess.Popen[bytes]", float]] = []  # old kernels still exiting
        self.launched_ahead: Optional[_Launch] = None  # by daemon_main, for the first Start frame

    def log(self, message: str) -> None:
        """To the proxy (so to Jupyter's log) when attached, and to the daemon's own log file."""
        _stderr(message)
        self.logs.append(message)
        self.send_logs()

    def send_logs(self) -> None:
        if self.conn.linked:
            while self.logs:
                self.conn.send_log("proxykernel-agent: " + self.logs.popleft())

    # -- the loop ----------------------------------------------------------------------------
    def run(self, first: Optional[_FirstLink] = None) -> int:
        """The daemon's loop, until the kernel is done with; ``first``: what ``daemon_main`` did
        before there was an Agent, taken over before anything else."""
        try:
            if first is not None:
                self.take_over(first)
            while self.exit_code is None:
                self.step(POLL_MS)
        finally:
            if self.launched_ahead is not None:
                _discard_launch(self.launched_ahead)
                self.launched_ahead = None
            self.stop_kernel()
            for old, _ in self.retired:
                old.kill()
                old.wait()
            self.close_kernel_sockets()
            self.context.term()
        return self.exit_code

    def step(self, timeout_ms: int) -> None:
        link = self.link
        if link is not None:
            self.poller.register(link.read_fd, zmq.POLLIN)
            self.poller.register(link.write_fd, zmq.POLLOUT if self.out else 0)  # 0: unregister
        for sock, _ in self.poller.poll(timeout_ms):
            current = link if self.link is link else None  # not replaced or detached meanwhile
            if sock is self.iopub:
                self.relay_iopub()
            elif sock in self.routes:
                self.relay_reply(sock)
            elif sock == self.listener.fileno():
                self.accept()
            elif current is not None and sock == current.read_fd:
                self.read_link()
            elif current is not None and sock == current.control.fileno():
                self.read_control()
            elif self.kernel is not None and self.kernel.stderr is not None \
                    and sock == self.kernel.stderr.fileno():
                self.read_kernel_stderr()
            # link.write_fd when writable: flushed below
        self.check_timers(time.monotonic())
        self.flush()

    def check_timers(self, now: float) -> None:
        for old, deadline in list(self.retired):
            if old.poll() is not None:
                self.retired.remove((old, deadline))
            elif now > deadline:
                old.kill()
        if self.kernel is not None and self.kernel.poll() is not None:
            self.kernel_exited(self.kernel.returncode)
        if not self.subscribed and now - self.launched_at > WELCOME_WAIT:
            self.hear_kernel()
        if self.heartbeat is not None:
            action = self.heartbeat.poll(now)
            if action is wire.Beat.PING:
                self.conn.send_ping(time.time())
            elif action is wire.Beat.DEAD:
                self.detach("no traffic from the proxy for %.1f s" % self.heartbeat.timeout)
        if self.link is None:
            idle = now - self.detached_since
            if self.kernel is not None and idle > self.options.linger:
                self.log("no proxy attached for %.0f s (--linger): stopping the kernel" % idle)
                self.exit_code = 0
            elif self.kernel is None and idle > (self.options.linger if self.exited_code is not None
                                                 else min(IDLE_EXIT, self.options.linger)):
                # An exit not yet reported waits for the proxy as long as a kernel would.
                self.exit_code = 0

    # -- the attached stream -----------------------------------------------------------------
    def take_over(self, first: _FirstLink) -> None:
        """Carry on from where ``daemon_main`` stopped reading the first link: handle what it
        parsed, in order, with its kernel as the one the Start frame launches."""
        if first.link is None:
            return
        self.attach(first.link)
        self.heartbeat = wire.Heartbeat(self.options.ping, self.options.dead, first.accepted_at)
        self.launched_ahead, first.launch = first.launch, None
        if first.error is not None:
            self.reject(first.error)
        else:
            self.handle_events(first.events)
        if self.launched_ahead is not None:  # its Start was never handled (an error before it)
            _discard_launch(self.launched_ahead)
            self.launched_ahead = None
        if first.closed is not None:
            self.detach(first.closed)
        self.flush()  # the hello and Ready answer now, not after the loop's first poll times out

    def accept(self) -> None:
        control, _ = self.listener.accept()
        link = _receive_link(control)
        if link is None:
            return
        if self.link is not None:
            self.detach("a new connection replaces the old one")
        self.attach(link)
        self.conn.new_link()
        self.heartbeat = wire.Heartbeat(self.options.ping, self.options.dead, time.monotonic())

    def attach(self, link: _Link) -> None:
        self.link = link
        # attach's end of the control socket: it closes only if attach dies (its ssh session is over).
        self.poller.register(link.control.fileno(), zmq.POLLIN)

    def detach(self, why: str) -> None:
        if self.link is None:
            return
        for fd in (self.link.read_fd, self.link.write_fd, self.link.control.fileno()):
            self.poller.register(fd, 0)  # 0 unregisters, if registered
        self.link.close()
        self.link = None
        self.heartbeat = None
        self.out.clear()
        self.out_bytes = 0
        self.conn.new_link()
        self.detached_since = time.monotonic()
        self.log("proxy detached (%s); waiting up to %.0f s for it to come back" % (why, self.options.linger))

    def read_control(self) -> None:
        """attach's socket is readable: it said nothing after the handover, so it is gone."""
        assert self.link is not None
        try:
            data = self.link.control.recv(64)
        except BlockingIOError:
            return
        except OSError as error:
            self.detach("the ssh session's attach process is gone (%s)" % error)
            return
        self.detach("the ssh session's attach process is gone" if not data
                    else "the ssh session's attach process sent %r" % data[:16])

    def read_link(self) -> None:
        assert self.link is not None and self.heartbeat is not None
        try:
            # Into the stream's own buffers: a large message (a big cell, a widget's data) is
            # read into one buffer of its size instead of being joined from chunks.
            count = os.readv(self.link.read_fd, [self.conn.read_buffer()])
        except BlockingIOError:
            return
        except OSError as error:
            self.detach(str(error))
            return
        if not count:
            self.detach("the ssh connection closed")
            return
        self.heartbeat.heard(time.monotonic())
        try:
            events = self.conn.received_into(count)
        except wire.ProtocolError as error:
            self.reject(error)
            return
        self.handle_events(events)

    def handle_events(self, events: List[wire.Event]) -> None:
        try:
            for event in events:
                self.handle(event)
        except wire.ProtocolError as error:
            self.reject(error)
            return

    def reject(self, error: wire.ProtocolError) -> None:
        """The link broke the protocol: tell the proxy why, then drop the link."""
        if self.conn.peer_hello is None or not self.conn.linked:
            self.conn.send_hello()  # so the proxy can read our version before the error
        self.conn.send_error(str(error))
        self.flush()
        self.detach(str(error))

    def handle(self, event: wire.Event) -> None:
        if isinstance(event, wire.ChannelData):
            self.relay_request(event)
        elif isinstance(event, wire.Hello):
            self.hello(event)
        elif isinstance(event, wire.Start):
            self.start(event.config)
        elif isinstance(event, wire.Pong) and self.heartbeat is not None:
            self.heartbeat.pong(event.timestamp, time.time())
        elif isinstance(event, wire.Interrupt):
            self.interrupt()
        elif isinstance(event, wire.Shutdown):
            self.log("shutdown requested by the proxy")
            self.stop_kernel()
            self.report_exit()
            self.exit_code = 0

    def hello(self, hello: wire.Hello) -> None:
        resumed = self.conn.resumed  # the decoder has already reset a new session's state
        self.conn.send_hello(capabilities=["resumed"] if resumed else [])
        self.conn.resume(hello.received)
        self.send_logs()
        if resumed and self.kernel is None and self.exited_code is not None:
            self.report_exit()

    def flush(self) -> None:
        """Write what is queued with vectored writes: frames go out as the buffers they came in,
        taken from the replay buffer at most OUT_BUDGET bytes ahead of the stream."""
        while self.link is not None:
            if self.out_bytes < OUT_BUDGET and self.conn.pending:
                for piece in self.conn.buffers_to_send(OUT_BUDGET - self.out_bytes):
                    view = memoryview(piece).cast("B")
                    if view.nbytes:
                        self.out.append(view)
                        self.out_bytes += view.nbytes
            self._write()
            if self.out or not self.conn.pending:
                return
        self.conn.buffers_to_send()  # no stream attached: control frames have nowhere to go

    def _write(self) -> None:
        while self.out and self.link is not None:
            try:
                sent = os.writev(self.link.write_fd, list(itertools.islice(self.out, SENDMSG_PIECES)))
            except BlockingIOError:
                return
            except OSError as error:
                self.detach(str(error))
                return
            self.out_bytes -= sent
            while sent:
                head = self.out[0]
                if sent >= head.nbytes:
                    sent -= head.nbytes
                    self.out.popleft()
                else:
                    self.out[0] = head[sent:]
                    sent = 0

    def flush_blocking(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        self.flush()
        while self.out and self.link is not None and time.monotonic() < deadline:
            self.poller.register(self.link.write_fd, zmq.POLLOUT)
            self.poller.poll(20)
            self.flush()

    # -- kernel lifecycle --------------------------------------------------------------------
    def start(self, config: Dict[str, Any]) -> None:
        """A new proxy's start: hand over a fresh pre-started kernel, or start one."""
        same_kernel = config.get("key") == self.config.get("key")
        if self.kernel is not None and self.kernel.poll() is None and not self.kernel_used and same_kernel:
            self.log("handing over the kernel started for the restart (pid %d)" % self.kernel.pid)
        else:
            self.stop_kernel()
            self.config = config
            self.launch_kernel()
        self.exited_code = None
        if self.kernel is not None:
            self.conn.send_ready(self.ready_info())

    def ready_info(self) -> Dict[str, Any]:
        assert self.kernel is not None
        return {"pid": self.kernel.pid, "hostname": socket.gethostname(),
                "python": sys.version.split()[0], "executable": sys.executable,
                "ipykernel": _ipykernel_version(), "transport": self.connection_info.get("transport"),
                "connection_dir": self.connection_dir, "agent_pid": os.getpid()}

    def launch_kernel(self) -> None:
        self.close_kernel_sockets()
        launch, self.launched_ahead = self.launched_ahead, None
        if launch is None or launch.config is not self.config:
            if launch is not None:
                _discard_launch(launch)
            launch = _launch_kernel(self.config)
        self.connection_dir = launch.connection_dir
        self.connection_info = launch.connection_info
        self.kernel = launch.process
        if self.kernel is None:
            self.conn.send_error(launch.error)
            return
        assert self.kernel.stderr is not None
        self.poller.register(self.kernel.stderr.fileno(), zmq.POLLIN)
        self.kernel_used = False
        self.restart_expected = False
        self.welcomed = False
        self.subscribed = not _ipykernel_greets()
        self.launched_at = time.monotonic()
        self.iopub = self.context.socket(zmq.SUB)
        self.iopub.rcvhwm = 0  # never drop output on our side; the replay buffer bounds memory
        self.iopub.setsockopt(zmq.SUBSCRIBE, b"")
        self.iopub.connect(self._url("iopub"))
        self.poller.register(self.iopub, zmq.POLLIN)
        self.log("kernel pid %d started with %s" % (self.kernel.pid, sys.executable))

    def _url(self, channel: str) -> str:
        info = self.connection_info
        port = info["%s_port" % channel]
        if info["transport"] == "ipc":
            return "ipc://%s-%s" % (info["ip"], port)
        return "tcp://%s:%s" % (info["ip"], port)

    def read_kernel_stderr(self) -> None:
        """The kernel's stderr (warnings, a crash's traceback) goes to the proxy's log, by lines."""
        if self.kernel is None or self.kernel.stderr is None:
            return
        try:
            data = os.read(self.kernel.stderr.fileno(), 65536)
        except BlockingIOError:
            return
        if not data:
            self.poller.unregister(self.kernel.stderr.fileno())
            return
        lines = (self.kernel_stderr + data).split(b"\n")
        self.kernel_stderr = lines.pop()[-65536:]
        for line in lines:
            self.logs.append("kernel: " + line.decode("utf-8", "replace"))
        self.send_logs()

    def interrupt(self) -> None:
        if self.kernel is not None and self.kernel.poll() is None:
            os.kill(self.kernel.pid, signal.SIGINT)

    def stop_kernel(self) -> None:
        if self.kernel is None:
            return
        if self.kernel.poll() is None:
            self.kernel.terminate()
            try:
                self.kernel.wait(KILL_GRACE)
            except subprocess.TimeoutExpired:
                self.log("kernel ignored SIGTERM for %.0f s; killing it" % KILL_GRACE)
                self.kernel.kill()
                self.kernel.wait()
        self.forget_kernel()

    def forget_kernel(self) -> None:
        assert self.kernel is not None
        if self.kernel.stderr is not None:
            self.poller.register(self.kernel.stderr.fileno(), 0)  # 0 unregisters, if registered
            self.kernel.stderr.close()
        self.exited_code = self.kernel.returncode
        self.kernel = None
        self.held.clear()
        self.subscribed = True
        if self.connection_dir:
            shutil.rmtree(self.connection_dir, ignore_errors=True)  # incl. ipc socket files
            self.connection_dir = None

    def kernel_exited(self, code: int) -> None:
        self.drain(DRAIN_SECONDS)
        self.log("kernel exited with code %d" % code)
        self.forget_kernel()
        self.report_exit()
        if self.restart_expected:
            # Jupyter will start a new proxy with the same connection file: have its kernel ready.
            self.launch_kernel()
        elif self.link is not None and self.exited_code is None:
            self.exit_code = code  # reported; nobody will ask for this kernel again

    def report_exit(self) -> None:
        if self.exited_code is not None and self.conn.linked:
            self.conn.send_kernel_exited(self.exited_code)
            self.flush_blocking(5.0)
            self.exited_code = None

    def drain(self, seconds: float) -> None:
        """Relay what the kernel sent just before exiting (a shutdown_reply, the last output)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            ready = [s for s, _ in self.poller.poll(20) if isinstance(s, zmq.Socket)]
            if not ready:
                return
            for sock in ready:
                self.relay_iopub() if sock is self.iopub else self.relay_reply(sock)

    def close_kernel_sockets(self) -> None:
        for sock in list(self.routes) + ([self.iopub] if self.iopub is not None else []):
            self.poller.unregister(sock)
            sock.close(linger=0)
        self.routes.clear()
        self.dealers.clear()
        self.iopub = None

    # -- relaying ----------------------------------------------------------------------------
    def hear_kernel(self) -> None:
        """Our SUB hears the kernel (or we stop waiting for it): the held requests may go."""
        if not self.subscribed:
            self.subscribed = True
            held, self.held = self.held, []
            for event in held:
                self.relay_request(event)

    def relay_request(self, event: wire.ChannelData) -> None:
        """A frontend's message for shell/control/stdin: frames[0] is its routing identity."""
        if event.channel not in ("shell", "control", "stdin") or not event.frames or self.kernel is None:
            return
        if not self.subscribed:
            self.held.append(event)
            return
        identity, frames = bytes(event.frames[0]), list(event.frames[1:])
        self.kernel_used = True
        if event.channel == "control":
            restart = peek.restart_requested(frames)
            if restart is not None:
                self.restart_expected = restart
        self.dealer(event.channel, identity).send_multipart(frames, copy=False)

    def dealer(self, channel: str, identity: bytes) -> zmq.Socket:
        sock = self.dealers.get((channel, identity))
        if sock is not None:
            return sock
        if channel == "shell" and ("stdin", identity) not in self.dealers:
            # ipykernel sends input_request to the shell request's identity on its stdin socket:
            # the matching stdin DEALER must be connected before the request can reach the kernel.
            self.dealer("stdin", identity)
        sock = self.context.socket(zmq.DEALER)
        sock.linger = 1000
        # A ROUTER-generated identity starts with a zero byte, which may not be set as a routing id.
        sock.routing_id = identity if identity[:1] not in (b"", b"\0") else b"pxk-" + identity.hex().encode()
        sock.connect(self._url(channel))
        self.dealers[(channel, identity)] = sock
        self.routes[sock] = (channel, identity)
        self.poller.register(sock, zmq.POLLIN)
        return sock

    def relay_reply(self, sock: zmq.Socket) -> None:
        channel, identity = self.routes[sock]
        for _ in range(64):  # bounded per wakeup so one busy socket cannot starve the others
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            buffers: List[wire.Buffer] = [frame.buffer for frame in frames]
            self.conn.send_data(channel, [identity] + buffers)
            if (channel == "control" and self.restart_expected
                    and b'"shutdown_reply"' in peek.message_part(buffers, 1)):
                self.retire_for_restart()
                return

    def retire_for_restart(self) -> None:
        """The kernel answered a restart's shutdown_request: let the proxy go now (Jupyter waits
        for it to exit before it starts the next one) and start the next kernel at once, while the
        old one finishes exiting on its own."""
        assert self.kernel is not None
        self.conn.send_kernel_exited(0)
        self.flush_blocking(5.0)
        old = self.kernel
        self.forget_kernel()
        self.exited_code = None  # reported above
        self.retired.append((old, time.monotonic() + KILL_GRACE))
        self.launch_kernel()

    def relay_iopub(self) -> None:
        assert self.iopub is not None
        for _ in range(64):
            try:
                frames = self.iopub.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            buffers: List[wire.Buffer] = [frame.buffer for frame in frames]  # no copy: as they came
            self.hear_kernel()
            if not self.welcomed and peek.is_welcome(buffers):
                self.welcomed = True
                continue
            self.conn.send_data("iopub", buffers)
