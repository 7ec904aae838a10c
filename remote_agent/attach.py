"""What each ssh session runs on the remote: attach this stream to the kernel's daemon.

Started by the bootstrap (``proxykernel/bootstrap.py``). It finds the kernel's daemon by its unix
socket in a 0700 per-user directory, forks one if there is none, and hands ssh's stdin/stdout to it
(SCM_RIGHTS), so the stream's bytes go between sshd and the daemon with no process in between.
It then waits on the socket until the daemon lets the stream go. When ssh dies only this process
goes; the daemon and the kernel stay.
Stdlib only, and small: it runs on every (re)connection, so it must start fast. What it shares with
the daemon (the arguments, the socket's words) is in ``handoff``; it reaches the daemon's code only
in the child it forks (``daemon.daemon_main``).
"""
from __future__ import annotations

import array
import os
import socket
import sys
import time
from typing import List, Tuple

from remote_agent.handoff import HANDOFF, TAKEN, connect, log, options
from remote_agent.paths import socket_path

__all__ = ["main"]

DAEMON_START = 10.0  # how long we wait for a new daemon's socket


def _take_stdio() -> Tuple[int, int]:
    """Keep fds 0/1 for the protocol and point the originals at /dev/null, so that a stray print
    (ours or a library's) can never corrupt the stream."""
    stream_in, stream_out = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    os.close(devnull)
    sys.stdout = sys.stderr
    return stream_in, stream_out


def main(argv: List[str]) -> None:
    """Run by the bootstrap in each ssh session."""
    opts = options(argv)
    stream_in, stream_out = _take_stdio()
    path = socket_path(opts.id)
    sock = connect(path)
    if sock is None and opts.wait_daemon:
        sock = _wait_daemon(path, opts.wait_daemon)
    if sock is None:
        sock = _start_daemon(path, argv, (stream_in, stream_out))
    _lend_stream(sock, stream_in, stream_out)


def _lend_stream(sock: socket.socket, stream_in: int, stream_out: int) -> None:
    """Hand ssh's pipes to the daemon, which reads and writes them itself, then wait.

    We stay, holding only the unix socket, because sshd ends the session (and stops feeding its
    pipes) when this process exits. The daemon closes the socket when it lets the stream go (EOF,
    a dead link, a newer link, an error); we exit then, and the ssh session ends.
    """
    try:
        sock.sendmsg([HANDOFF], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                  array.array("i", [stream_in, stream_out]).tobytes())])
        reply = sock.recv(64)
    except OSError:
        os._exit(0)
    if not reply:
        os._exit(0)
    if reply != TAKEN:
        log("the daemon answered %r instead of taking the ssh stream" % reply[:16])
        os._exit(1)
    os.close(stream_in)  # the daemon has its own copies: ours would only keep the pipes open
    os.close(stream_out)
    # Wait for the socket's end as cat, not as Python: 1 MB instead of 10 for each session.
    os.dup2(sock.fileno(), 0)  # (fd 1 is /dev/null since _take_stdio)
    try:
        os.execvp("cat", ["cat"])
    except OSError:
        pass
    try:
        while sock.recv(4096):
            pass
    except OSError:
        pass
    os._exit(0)


def _wait_daemon(path: str, seconds: float) -> socket.socket:
    """The socket of the daemon a batch job runs (``--wait-daemon``), once it listens."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.01)
        sock = connect(path)
        if sock is not None:
            return sock
    raise SystemExit("proxykernel-agent: the agent daemon of the batch job did not listen within %.0f s "
                     "(its output is in ~/.cache/proxykernel/jobs/)" % seconds)


def _start_daemon(path: str, argv: List[str], stream_fds: Tuple[int, int]) -> socket.socket:
    """Fork the daemon (cheaper than a new interpreter), detached in its own session."""
    log_path = path[:-len(".sock")] + ".log"
    child = os.fork()
    if child == 0:
        code = 1
        try:
            os.setsid()
            if os.fork():  # the daemon must not be our child: we exit first, it must not linger as one
                os._exit(0)
            for fd in stream_fds:  # holding ssh's pipes would keep the ssh session open forever
                os.close(fd)
            log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.dup2(log_fd, 2)
            os.close(log_fd)
            from remote_agent.daemon import daemon_main  # only here: attach itself stays small
            daemon_main(argv)
            code = 0
        except SystemExit as stop:
            if isinstance(stop.code, str):
                sys.stderr.write(stop.code + "\n")
            code = stop.code if isinstance(stop.code, int) else 1
        except BaseException:
            import traceback
            traceback.print_exc()
        finally:
            sys.stderr.flush()
            os._exit(code)
    os.waitpid(child, 0)
    deadline = time.monotonic() + DAEMON_START
    while time.monotonic() < deadline:
        sock = connect(path)
        if sock is not None:
            return sock
        time.sleep(0.001)  # the new daemon needs ~20 ms to listen: check often, it is cheap
    try:
        with open(log_path, errors="replace") as log_file:
            sys.stderr.write(log_file.read()[-4000:])
    except OSError:
        pass
    raise SystemExit("proxykernel-agent: the agent daemon did not start within %.0f s" % DAEMON_START)
