"""The byte stream: the user's own OpenSSH client, run as a subprocess.

Its stdin/stdout carry the protocol; its stderr carries ssh's own messages and the remote agent's log
lines. Running the user's ``ssh`` means ``~/.ssh/config`` (aliases, ProxyJump, keys, agents,
ControlMaster, certificates) behaves exactly as in a terminal, and host-key checking stays on.
"""
from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import signal
import subprocess
import sys
import time
from typing import Callable, List, Optional

from proxykernel.ssh import spawn_ssh

__all__ = ["SSHTransport", "run_briefly"]

# Linux's F_SETPIPE_SZ (named in Python 3.10+). Other systems have no such call (macOS grows a
# pipe's buffer by itself), and 1031 may mean something else there: None, not tried.
PIPE_SET_SIZE: Optional[int] = getattr(fcntl, "F_SETPIPE_SZ", 1031) if sys.platform.startswith("linux") else None
PIPE_SIZE = 1 << 20  # the unprivileged maximum by default (/proc/sys/fs/pipe-max-size)
EXIT_WAIT = 2.0  # after ssh closes its stdout, how long it may take to exit before we kill it

log = logging.getLogger("proxykernel")


def _widen_pipe(fd: int, set_size: Optional[int] = PIPE_SET_SIZE) -> bool:
    """A 1 MiB pipe instead of 64 KiB: big outputs then cross in 16 times fewer wake-ups. Called by
    ``SSHTransport.start`` for ssh's stdin and stdout; False where that is not possible (not Linux,
    ``set_size`` None), and the default size works, slower."""
    if set_size is None:
        return False
    try:
        fcntl.fcntl(fd, set_size, PIPE_SIZE)
    except OSError:
        return False  # above /proc/sys/fs/pipe-max-size
    return True


class _StderrReader(asyncio.Protocol):
    """ssh's stderr; its end says nothing (a ControlPersist master may keep it open)."""

    def __init__(self, on_data: Callable[[bytes], None]) -> None:
        self.on_data = on_data

    def data_received(self, data: bytes) -> None:
        self.on_data(data)


class SSHTransport:
    """Runs one ``ssh``; reports stdout bytes, stderr lines and exit through callbacks.

    Stdout is read straight into the buffer the owner offers (``buffer``), then ``on_data`` says
    how many bytes arrived: a large message is read into its own buffer, never joined from chunks.
    Exit is detected from stdout's EOF and then the process status, never from stderr's EOF: an
    OpenSSH ControlPersist master inherits stderr and keeps it open long after we are done.
    """

    def __init__(self, argv: List[str], buffer: Callable[["SSHTransport"], memoryview],
                 on_data: Callable[["SSHTransport", int], None],
                 on_stderr: Callable[["SSHTransport", str], None],
                 on_exit: Callable[["SSHTransport", Optional[int]], None]) -> None:
        """Each callback gets this transport first, so the owner can ignore a replaced one."""
        self.argv = argv
        self.buffer = buffer
        self.on_data = on_data
        self.on_stderr = on_stderr
        self.on_exit = on_exit
        self.popen: Optional["subprocess.Popen[bytes]"] = None
        self.pid: Optional[int] = None
        self.returncode: Optional[int] = None
        self._stdin: Optional[asyncio.WriteTransport] = None
        self._stderr_pipe: Optional[asyncio.BaseTransport] = None
        self._stdout_fd: Optional[int] = None  # while it is being read
        self._stderr_tail = b""
        self._exited = asyncio.Event()

    async def start(self, popen: "Optional[subprocess.Popen[bytes]]" = None) -> None:
        """Adopt an ssh started early by ``spawn_ssh``, or start one now."""
        loop = asyncio.get_running_loop()
        self.popen = popen if popen is not None else spawn_ssh(self.argv)
        self.pid = self.popen.pid
        assert self.popen.stdin and self.popen.stdout and self.popen.stderr
        for pipe in (self.popen.stdin, self.popen.stdout):
            _widen_pipe(pipe.fileno())
        self._stdout_fd = self.popen.stdout.fileno()
        os.set_blocking(self._stdout_fd, False)
        loop.add_reader(self._stdout_fd, self._readable)
        self._stderr_pipe, _ = await loop.connect_read_pipe(lambda: _StderrReader(self._stderr),
                                                            self.popen.stderr)
        self._stdin, _ = await loop.connect_write_pipe(asyncio.Protocol, self.popen.stdin)

    def _readable(self) -> None:
        assert self._stdout_fd is not None
        try:
            count = os.readv(self._stdout_fd, [self.buffer(self)])
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            count = 0
        if count:
            self.on_data(self, count)
            return
        self._stop_reading()
        self._stdout_closed()

    def _stop_reading(self) -> None:
        if self._stdout_fd is not None:
            asyncio.get_running_loop().remove_reader(self._stdout_fd)
            self._stdout_fd = None

    def _stderr(self, data: bytes) -> None:
        lines = (self._stderr_tail + data).split(b"\n")
        self._stderr_tail = lines.pop()
        for line in lines:
            self.on_stderr(self, line.decode("utf-8", "replace").rstrip("\r"))

    def _stdout_closed(self) -> None:
        self._poll_exit(time.monotonic() + EXIT_WAIT)

    def _poll_exit(self, deadline: float) -> None:
        assert self.popen is not None
        if self.popen.poll() is None:
            if time.monotonic() > deadline:
                self.kill()  # stdout closed but ssh lingers: it is of no use any more
            asyncio.get_running_loop().call_later(0.01, self._poll_exit, deadline)
            return
        self._drain_stderr()
        if self._stderr_tail:
            self.on_stderr(self, self._stderr_tail.decode("utf-8", "replace"))
            self._stderr_tail = b""
        self._stop_reading()
        if self._stderr_pipe is not None:
            self._stderr_pipe.close()
        if self._stdin is not None:
            self._stdin.close()
        self.returncode = self.popen.returncode
        self._exited.set()
        self.on_exit(self, self.returncode)

    def _drain_stderr(self) -> None:
        """ssh's last words (why it failed) may still sit in the pipe when its exit is seen."""
        assert self.popen is not None and self.popen.stderr is not None
        for _ in range(64):
            try:
                data = os.read(self.popen.stderr.fileno(), 65536)  # non-blocking: the loop set it so
            except (BlockingIOError, ValueError, OSError):
                return
            if not data:
                return
            self._stderr(data)

    @property
    def started(self) -> bool:
        """Adopted into the event loop: writes now reach ssh's stdin."""
        return self._stdin is not None

    def write(self, data: bytes) -> None:
        if self._stdin is not None and data and self.returncode is None and not self._stdin.is_closing():
            self._stdin.write(data)

    async def wait(self, timeout: float) -> None:
        """Wait at most ``timeout`` seconds for ssh to exit."""
        if self.popen is not None:
            try:
                await asyncio.wait_for(self._exited.wait(), timeout)
            except asyncio.TimeoutError:
                pass

    def close_input(self) -> None:
        """EOF to the remote: the session's attach process ends, and with it this ssh."""
        if self._stdin is not None and not self._stdin.is_closing():
            self._stdin.close()

    def kill(self) -> None:
        if self.pid is not None and self.returncode is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


async def run_briefly(argv: List[str], seconds: float) -> None:
    """Run a quick local command (``ssh -O exit`` for our ControlMaster: a unix socket away) with no
    input or output, killed if it takes longer than ``seconds``. Called by ``Proxy.stop_master_soon``."""
    try:
        process = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL)
    except OSError:
        return
    try:
        await asyncio.wait_for(process.wait(), seconds)
    except asyncio.TimeoutError:
        process.kill()
        await process.wait()
