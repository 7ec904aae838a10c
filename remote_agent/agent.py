"""The remote agent: runs one ipykernel and bridges its five channels to the stream on stdin/stdout.

Started by the bootstrap that the local proxy runs over ssh (``proxykernel/bootstrap.py``), on the
Python the user chose, so the kernel runs on that same interpreter. Self-contained: stdlib, pyzmq and
jupyter_client (which ipykernel already brings); Python >= 3.8 syntax; a ``zmq.Poller`` loop, no
tornado. Log lines go to stderr, which ssh carries to the proxy and so into Jupyter's server log.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Tuple

import zmq
from jupyter_client.connect import write_connection_file

from remote_agent import wire

__all__ = ["main", "Agent"]

POLL_MS = 100  # how often the kernel process is checked for exit when nothing else happens
KILL_GRACE = 3.0  # seconds a kernel gets to exit after SIGTERM before SIGKILL
DRAIN_SECONDS = 0.3  # after the kernel exits, how long its last messages (shutdown_reply) may trail
READ_SIZE = 1 << 20
# Unix socket paths are limited to 107 bytes; ipykernel adds "-NNNNN" to the prefix.
MAX_IPC_PREFIX = 90


def log(message: str) -> None:
    sys.stderr.write("proxykernel-agent: %s\n" % message)
    sys.stderr.flush()


def _take_stdio() -> Tuple[int, int]:
    """Keep fds 0/1 for the protocol and point the originals at /dev/null, so that a stray print
    (ours, a library's, the kernel's) can never corrupt the stream."""
    stream_in, stream_out = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    os.close(devnull)
    sys.stdout = sys.stderr
    for fd in (stream_in, stream_out):
        os.set_blocking(fd, False)
    return stream_in, stream_out


def _private_dir() -> str:
    """A fresh 0700 directory for the connection file and ipc sockets, on a short path."""
    base = os.environ.get("XDG_RUNTIME_DIR") or ""
    if not (base and os.path.isdir(base) and os.access(base, os.W_OK) and len(base) < 60):
        base = tempfile.gettempdir()
    return tempfile.mkdtemp(prefix="pxk-", dir=base)  # mkdtemp makes it 0700


def _ipykernel_version() -> str:
    try:
        from importlib.metadata import version
        return version("ipykernel")
    except Exception:  # metadata missing in odd installs: the version is only informative
        return "unknown"


class Agent:
    """Owns the kernel process and the ZMQ sockets toward it; one instance per agent process."""

    def __init__(self, stream_in: int, stream_out: int) -> None:
        self.stream_in = stream_in
        self.stream_out = stream_out
        self.conn = wire.Connection("agent")
        self.context = zmq.Context()
        self.poller = zmq.Poller()
        self.poller.register(stream_in, zmq.POLLIN)
        self.out = bytearray()
        self.kernel: Optional["subprocess.Popen[bytes]"] = None
        self.connection_dir: Optional[str] = None
        self.connection_info: Dict[str, Any] = {}
        self.iopub: Optional[zmq.Socket] = None
        # (channel, frontend identity) -> DEALER, and back: replies go to the frontend that asked.
        self.dealers: Dict[Tuple[str, bytes], zmq.Socket] = {}
        self.routes: Dict[zmq.Socket, Tuple[str, bytes]] = {}
        self.stream_open = True
        self.exit_code: Optional[int] = None

    # -- the loop ----------------------------------------------------------------------------
    def run(self) -> int:
        self.conn.send_hello()
        self.flush()
        try:
            while self.exit_code is None:
                self.step(POLL_MS)
        finally:
            self.cleanup()
        return self.exit_code

    def step(self, timeout_ms: int) -> None:
        self.poller.register(self.stream_out, zmq.POLLOUT if self.out else 0)  # 0 unregisters
        for sock, _ in self.poller.poll(timeout_ms):
            if sock == self.stream_in:
                self.read_stream()
            elif sock == self.stream_out:
                self.flush()
            elif sock is self.iopub:
                self.relay_iopub()
            else:
                self.relay_reply(sock)
        if self.kernel is not None and self.kernel.poll() is not None:
            self.kernel_exited(self.kernel.returncode)
        self.flush()

    def read_stream(self) -> None:
        try:
            data = os.read(self.stream_in, READ_SIZE)
        except BlockingIOError:
            return
        if not data:
            self.stream_closed()
            return
        try:
            events = self.conn.receive_data(data)
        except wire.ProtocolError as error:
            self.fail(str(error))
            return
        for event in events:
            self.handle(event)
        if self.conn.ack_due:
            self.conn.send_ack()

    def handle(self, event: wire.Event) -> None:
        if isinstance(event, wire.ChannelData):
            self.relay_request(event)
        elif isinstance(event, wire.Start):
            self.start_kernel(event.config)
        elif isinstance(event, wire.Ping):
            self.conn.send_pong(event.timestamp)
            self.conn.send_ack()
        elif isinstance(event, wire.Interrupt):
            self.interrupt()
        elif isinstance(event, wire.Shutdown):
            self.shutdown()
        elif isinstance(event, wire.Noise):
            log("ignored %d bytes of noise before the proxy's hello" % len(event.data))

    def flush(self) -> None:
        self.out += self.conn.data_to_send()
        while self.out:
            try:
                written = os.write(self.stream_out, self.out[:READ_SIZE])
            except BlockingIOError:
                return
            except OSError:  # the proxy side is gone
                self.out.clear()
                self.stream_closed()
                return
            del self.out[:written]

    # -- kernel lifecycle --------------------------------------------------------------------
    def start_kernel(self, config: Dict[str, Any]) -> None:
        if self.kernel is not None:
            return
        self.connection_dir = _private_dir()
        fname = os.path.join(self.connection_dir, "kernel.json")
        transport = config.get("transport", "ipc")
        ip = os.path.join(self.connection_dir, "k") if transport == "ipc" else "127.0.0.1"
        _, self.connection_info = write_connection_file(
            fname, ip=ip, transport=transport, key=config["key"].encode("ascii"),
            signature_scheme=config.get("signature_scheme", "hmac-sha256"),
            kernel_name=config.get("kernel_name", ""))
        argv = [sys.executable, "-m", "ipykernel_launcher", "-f", fname]
        env = dict(os.environ)
        env.update(config.get("env", {}))
        try:
            self.kernel = subprocess.Popen(
                # stdout only carries ipykernel's console banner (cell output goes over IOPub).
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=2, env=env,
                cwd=config.get("cwd") or None, start_new_session=True)
        except OSError as error:
            self.fail("could not start the kernel on %s: %s" % (socket.gethostname(), error))
            return
        self.iopub = self.context.socket(zmq.SUB)
        self.iopub.rcvhwm = 0  # never drop output on our side; the stream is the bottleneck
        self.iopub.setsockopt(zmq.SUBSCRIBE, b"")
        self.iopub.connect(self._url("iopub"))
        self.poller.register(self.iopub, zmq.POLLIN)
        self.conn.send_ready({
            "pid": self.kernel.pid, "hostname": socket.gethostname(),
            "python": sys.version.split()[0], "executable": sys.executable,
            "ipykernel": _ipykernel_version(), "transport": transport,
            "connection_dir": self.connection_dir, "agent_pid": os.getpid()})
        log("kernel pid %d started with %s" % (self.kernel.pid, sys.executable))

    def _url(self, channel: str) -> str:
        info = self.connection_info
        port = info["%s_port" % channel]
        if info["transport"] == "ipc":
            return "ipc://%s-%s" % (info["ip"], port)
        return "tcp://%s:%s" % (info["ip"], port)

    def interrupt(self) -> None:
        if self.kernel is not None and self.kernel.poll() is None:
            os.kill(self.kernel.pid, signal.SIGINT)

    def shutdown(self) -> None:
        """The proxy was told to stop (SIGTERM): end the kernel, report, exit."""
        if self.kernel is None:
            self.exit_code = 0
            return
        self.stop_kernel()
        self.kernel_exited(self.kernel.returncode)

    def stop_kernel(self) -> None:
        assert self.kernel is not None
        if self.kernel.poll() is None:
            self.kernel.terminate()
            try:
                self.kernel.wait(KILL_GRACE)
            except subprocess.TimeoutExpired:
                log("kernel ignored SIGTERM for %.0f s; killing it" % KILL_GRACE)
                self.kernel.kill()
                self.kernel.wait()

    def kernel_exited(self, code: int) -> None:
        self.drain(DRAIN_SECONDS)
        log("kernel exited with code %d" % code)
        self.conn.send_kernel_exited(code)
        self.flush_blocking()
        self.exit_code = code

    def drain(self, seconds: float) -> None:
        """Relay what the kernel sent just before exiting (a shutdown_reply, the last output)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            ready = [s for s, _ in self.poller.poll(20) if isinstance(s, zmq.Socket)]
            if not ready:
                return
            for sock in ready:
                self.relay_iopub() if sock is self.iopub else self.relay_reply(sock)

    def flush_blocking(self, seconds: float = 5.0) -> None:
        deadline = time.monotonic() + seconds
        self.flush()
        while self.out and self.stream_open and time.monotonic() < deadline:
            self.poller.poll(50)
            self.flush()

    def stream_closed(self) -> None:
        """ssh went away: with no proxy to serve, the kernel must not be left behind."""
        if not self.stream_open:
            return
        self.stream_open = False
        log("the stream to the proxy closed; stopping the kernel")
        if self.kernel is not None:
            self.stop_kernel()
            self.exit_code = self.kernel.returncode
        else:
            self.exit_code = 0

    def fail(self, sentence: str) -> None:
        log(sentence)
        self.conn.send_error(sentence)
        self.flush_blocking(1.0)
        if self.kernel is not None:
            self.stop_kernel()
        self.exit_code = 2

    def cleanup(self) -> None:
        for sock in list(self.routes) + ([self.iopub] if self.iopub is not None else []):
            sock.close(linger=0)
        self.context.term()
        if self.connection_dir:
            shutil.rmtree(self.connection_dir, ignore_errors=True)

    # -- relaying ----------------------------------------------------------------------------
    def relay_request(self, event: wire.ChannelData) -> None:
        """A frontend's message for shell/control/stdin: frames[0] is its routing identity."""
        if event.channel not in ("shell", "control", "stdin") or not event.frames:
            return
        identity, frames = event.frames[0], event.frames[1:]
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
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self.conn.send_data(channel, [identity] + frames)

    def relay_iopub(self) -> None:
        assert self.iopub is not None
        for _ in range(64):
            try:
                frames = self.iopub.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if not _is_welcome(frames):
                self.conn.send_data("iopub", frames)


def _is_welcome(frames: List[bytes]) -> bool:
    """The kernel's iopub_welcome answers our own SUB: the proxy welcomes each frontend itself."""
    try:
        header = frames[frames.index(b"<IDS|MSG>") + 2]
    except (ValueError, IndexError):
        return False
    return len(header) < 1024 and b'"iopub_welcome"' in header


def main(argv: Optional[List[str]] = None) -> None:
    """Entry point, called by the bootstrap once it has printed its ready line."""
    stream_in, stream_out = _take_stdio()
    code = Agent(stream_in, stream_out).run()
    sys.exit(code if 0 <= code < 256 else 1)
