"""The byte stream: the user's own OpenSSH client, run as a subprocess.

Its stdin/stdout carry the protocol; its stderr carries ssh's own messages and the remote agent's log
lines. Running the user's ``ssh`` means ``~/.ssh/config`` (aliases, ProxyJump, keys, agents,
ControlMaster, certificates) behaves exactly as in a terminal, and host-key checking stays on.
"""
from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence

__all__ = ["SSHOptions", "SSHTransport", "ssh_argv", "explain_ssh_failure"]

log = logging.getLogger("proxykernel")


@dataclass(frozen=True)
class SSHOptions:
    host: str
    config_file: Optional[str] = None
    options: Sequence[str] = field(default_factory=tuple)  # each "Name=value", as ssh -o takes it
    connect_timeout: Optional[float] = None
    ssh: str = "ssh"


def ssh_argv(opts: SSHOptions, remote_command: str) -> List[str]:
    """The ssh command line. Nothing secret goes here: it is visible in ``ps`` on this host."""
    argv = [opts.ssh, "-T"]  # no tty: a tty would mangle the binary stream
    if opts.config_file:
        argv += ["-F", opts.config_file]
    for option in opts.options:
        argv += ["-o", option]
    if opts.connect_timeout:
        argv += ["-o", "ConnectTimeout=%d" % max(1, round(opts.connect_timeout))]
    # "--" ends ssh's options, so a host value can never be read as one.
    return argv + ["--", opts.host, remote_command]


# ssh's own words, in the order we test them, and the sentence a user can act on.
_SSH_FAILURES = [
    (r"Could not resolve hostname|Name or service not known|nodename nor servname",
     "ssh cannot resolve the host {host!r}: check the name, or add a 'Host {host}' entry with a "
     "HostName to your ssh config"),
    (r"Host key verification failed|REMOTE HOST IDENTIFICATION HAS CHANGED",
     "ssh refused {host!r} because its host key is unknown or changed: connect once with "
     "'ssh {host}' in a terminal to check and accept the key"),
    (r"Permission denied|Too many authentication failures",
     "ssh authentication to {host!r} was refused: check that 'ssh {host} true' works in a terminal "
     "without a password prompt (load your key into ssh-agent, or set IdentityFile in your ssh config)"),
    (r"Connection refused",
     "ssh could not connect to {host!r}: the connection was refused (is sshd running, and is the "
     "Port in your ssh config right?)"),
    (r"timed out|No route to host|Network is unreachable",
     "ssh could not reach {host!r}: the network connection timed out or has no route"),
    (r"a password is required|a terminal is required",
     "sudo on {host!r} asks for a password: allow the command with NOPASSWD in sudoers, or drop --sudo"),
]


def explain_ssh_failure(host: str, stderr_lines: Sequence[str], returncode: Optional[int]) -> str:
    """One sentence for an ssh that ended before the agent spoke."""
    text = "\n".join(stderr_lines)
    for pattern, sentence in _SSH_FAILURES:
        if re.search(pattern, text, re.IGNORECASE):
            return sentence.format(host=host)
    last = stderr_lines[-1].strip() if stderr_lines else "no message"
    return "ssh to %r ended with exit code %s before the kernel started (%s)" % (host, returncode, last)


class _SSHProtocol(asyncio.SubprocessProtocol):
    def __init__(self, transport: "SSHTransport") -> None:
        self.owner = transport
        self._stderr_tail = b""

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        if fd == 1:
            self.owner.on_data(data)
            return
        lines = (self._stderr_tail + data).split(b"\n")
        self._stderr_tail = lines.pop()
        for line in lines:
            self.owner.on_stderr(line.decode("utf-8", "replace").rstrip("\r"))

    def connection_lost(self, exc: Optional[Exception]) -> None:
        # Called once the process has exited AND its pipes are drained (process_exited can come
        # before the last stderr lines, which we need to explain a failure).
        if self._stderr_tail:
            self.owner.on_stderr(self._stderr_tail.decode("utf-8", "replace"))
            self._stderr_tail = b""
        self.owner.process_exited()


class SSHTransport:
    """Runs one ``ssh``; reports stdout bytes, stderr lines and exit through callbacks."""

    def __init__(self, argv: List[str], on_data: Callable[[bytes], None],
                 on_stderr: Callable[[str], None], on_exit: Callable[[Optional[int]], None]) -> None:
        self.argv = argv
        self.on_data = on_data
        self.on_stderr = on_stderr
        self.on_exit = on_exit
        self.process: Optional[asyncio.SubprocessTransport] = None
        self.pid: Optional[int] = None
        self.returncode: Optional[int] = None
        self._exited = asyncio.Event()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        # Its own session: Jupyter signals our whole process group on interrupt, and a SIGINT must
        # become an interrupt frame, not kill the connection.
        self.process, _ = await loop.subprocess_exec(
            lambda: _SSHProtocol(self), *self.argv, start_new_session=True)
        self.pid = self.process.get_pid()

    def write(self, data: bytes) -> None:
        if self.process is not None and data and self.returncode is None:
            pipe = self.process.get_pipe_transport(0)
            if pipe is not None and not pipe.is_closing():
                pipe.write(data)

    def process_exited(self) -> None:
        assert self.process is not None
        self.returncode = self.process.get_returncode()
        self._exited.set()
        self.on_exit(self.returncode)

    async def wait(self, timeout: float) -> None:
        """Wait at most ``timeout`` seconds for ssh to exit."""
        if self.process is not None:
            try:
                await asyncio.wait_for(self._exited.wait(), timeout)
            except asyncio.TimeoutError:
                pass

    def close_input(self) -> None:
        """EOF to the remote: the agent stops its kernel when its stream ends."""
        if self.process is not None:
            pipe = self.process.get_pipe_transport(0)
            if pipe is not None and not pipe.is_closing():
                pipe.close()

    def kill(self) -> None:
        if self.pid is not None and self.returncode is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
