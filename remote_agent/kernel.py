"""The kernel's lifecycle on the remote: launch ipykernel, interrupt it, stop it (SIGTERM, then
SIGKILL), retire it for a restart, notice its exit, and remove its files.

Stdlib only, so that a new daemon can launch the kernel before it imports zmq:
``daemon.read_first_start`` calls ``launch_kernel`` for the first Start frame; ``agent.Agent`` owns
a ``Kernel`` for everything after.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from functools import lru_cache
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

from remote_agent.paths import runtime_dir

__all__ = ["Launch", "launch_kernel", "discard_launch", "Kernel", "ipykernel_greets", "channel_url",
           "KILL_GRACE", "DRAIN_SECONDS"]

KILL_GRACE = 3.0  # seconds a kernel gets to exit after SIGTERM before SIGKILL
DRAIN_SECONDS = 0.3  # after the kernel exits, how long its last messages (shutdown_reply) may trail


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


def channel_url(info: Dict[str, Any], channel: str) -> str:
    """Where the kernel of connection info ``info`` listens for ``channel`` (the router connects there)."""
    port = info["%s_port" % channel]
    if info["transport"] == "ipc":
        return "ipc://%s-%s" % (info["ip"], port)
    return "tcp://%s:%s" % (info["ip"], port)


def ipykernel_greets() -> bool:
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


class Launch(NamedTuple):
    """A kernel process started for a Start frame's ``config``, by ``launch_kernel``."""
    config: Dict[str, Any]
    process: Optional["subprocess.Popen[bytes]"]  # None: Popen failed, ``error`` says why
    connection_dir: Optional[str]
    connection_info: Dict[str, Any]
    error: str


def launch_kernel(config: Dict[str, Any]) -> Launch:
    """Write the connection file and start ipykernel. Plain Python, no zmq: a new daemon calls it
    before it imports zmq, the Kernel for every later kernel."""
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
        return Launch(config, None, None, info,
                      "could not start the kernel on %s: %s" % (socket.gethostname(), error))
    assert process.stderr is not None
    os.set_blocking(process.stderr.fileno(), False)
    return Launch(config, process, connection_dir, info, "")


def _terminate(process: "subprocess.Popen[bytes]", log: Optional[Callable[[str], None]] = None) -> None:
    """SIGTERM, and SIGKILL after KILL_GRACE seconds; returns once the process has exited."""
    process.terminate()
    try:
        process.wait(KILL_GRACE)
    except subprocess.TimeoutExpired:
        if log is not None:
            log("kernel ignored SIGTERM for %.0f s; killing it" % KILL_GRACE)
        process.kill()
        process.wait()


def discard_launch(launch: Launch) -> None:
    """Stop a kernel launched for a Start frame that was never handled, and remove its files."""
    if launch.process is not None:
        _terminate(launch.process)
        if launch.process.stderr is not None:
            launch.process.stderr.close()
    if launch.connection_dir:
        shutil.rmtree(launch.connection_dir, ignore_errors=True)


class Kernel:
    """The kernel process this daemon serves (at most one), and the ones retired by restarts that
    are still exiting.

    Owned by ``agent.Agent``, which calls ``launch`` for a Start frame or a restart, ``stop`` on a
    shutdown and when the daemon exits, ``retire`` when the kernel answered a restart's
    shutdown_request, ``forget`` once a kernel is done with; and on every loop turn ``exit_status``
    and ``reap`` with the loop's time.
    """

    def __init__(self, log: Callable[[str], None]) -> None:
        self.log = log
        self.config: Dict[str, Any] = {}
        self.process: Optional["subprocess.Popen[bytes]"] = None
        self.exited_code: Optional[int] = None  # the last kernel's exit code, until reported
        self.connection_dir: Optional[str] = None
        self.connection_info: Dict[str, Any] = {}
        self.launched_ahead: Optional[Launch] = None  # by the daemon, for the first Start frame
        self.started = 0.0  # when the running kernel was launched (wall clock: its age, for a reattach and ps)
        self._stderr_tail = b""
        self._retired: List[Tuple["subprocess.Popen[bytes]", float]] = []  # (old kernel, when to kill it)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def stderr_fd(self) -> Optional[int]:
        """The kernel's stderr, for the loop to poll (None without a kernel)."""
        if self.process is None or self.process.stderr is None:
            return None
        return self.process.stderr.fileno()

    def launch(self, config: Optional[Dict[str, Any]] = None) -> str:
        """Start a kernel for ``config`` (None: the last one again, for a restart), or take the one
        the daemon launched ahead for it. Returns why it could not start ("" if it did)."""
        if config is not None:
            self.config = config
        launch, self.launched_ahead = self.launched_ahead, None
        if launch is None or launch.config is not self.config:
            if launch is not None:
                discard_launch(launch)
            launch = launch_kernel(self.config)
        self.connection_dir = launch.connection_dir
        self.connection_info = launch.connection_info
        self.process = launch.process
        self.started = time.time()
        return launch.error

    def discard_ahead(self) -> None:
        """The kernel launched ahead was not asked for (an error before its Start): stop it."""
        if self.launched_ahead is not None:
            discard_launch(self.launched_ahead)
            self.launched_ahead = None

    def ready_info(self) -> Dict[str, Any]:
        """What the Ready frame tells the proxy about the running kernel."""
        assert self.process is not None
        return {"pid": self.process.pid, "hostname": socket.gethostname(),
                "python": sys.version.split()[0], "executable": sys.executable,
                "ipykernel": _ipykernel_version(), "transport": self.connection_info.get("transport"),
                "connection_dir": self.connection_dir, "agent_pid": os.getpid(),
                "session": self.config.get("session")}

    def read_stderr(self) -> Optional[List[str]]:
        """The kernel's stderr (warnings, a crash's traceback) by whole lines, for the proxy's log;
        None at its end (the loop stops polling it)."""
        fd = self.stderr_fd
        if fd is None:
            return []
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return []
        if not data:
            return None
        lines = (self._stderr_tail + data).split(b"\n")
        self._stderr_tail = lines.pop()[-65536:]
        return ["kernel: " + line.decode("utf-8", "replace") for line in lines]

    def interrupt(self) -> None:
        """SIGINT to a running kernel (the proxy's Interrupt frame)."""
        if self.running:
            assert self.process is not None
            os.kill(self.process.pid, signal.SIGINT)

    def stop(self) -> None:
        """End the kernel, if it runs: SIGTERM, then SIGKILL after KILL_GRACE seconds."""
        if self.running:
            assert self.process is not None
            _terminate(self.process, self.log)

    def retire(self, now: float) -> None:
        """A restart's kernel is on its way out: let it finish exiting on its own, until ``now`` +
        KILL_GRACE (``reap`` kills it then). Call ``forget`` next."""
        assert self.process is not None
        self._retired.append((self.process, now + KILL_GRACE))

    def forget(self) -> None:
        """The kernel is done with (exited, stopped or retired): keep its exit code until it is
        reported, and remove its connection file and ipc sockets."""
        assert self.process is not None
        if self.process.stderr is not None:
            self.process.stderr.close()
        self.exited_code = self.process.returncode
        self.process = None
        if self.connection_dir:
            shutil.rmtree(self.connection_dir, ignore_errors=True)  # incl. ipc socket files
            self.connection_dir = None

    def exit_status(self) -> Optional[int]:
        """The kernel's exit code if it has exited and is not yet forgotten (checked every turn)."""
        if self.process is not None and self.process.poll() is not None:
            return self.process.returncode
        return None

    def reap(self, now: float) -> None:
        """Forget retired kernels that have exited; SIGKILL those past their deadline at ``now``."""
        for old, deadline in list(self._retired):
            if old.poll() is not None:
                self._retired.remove((old, deadline))
            elif now > deadline:
                old.kill()

    def kill_retired(self) -> None:
        """The daemon exits: no retired kernel may outlive it."""
        for old, _ in self._retired:
            old.kill()
            old.wait()
