"""What each ssh session runs on the remote: attach this stream to the kernel's daemon.

Started by the bootstrap (``proxykernel/bootstrap.py``). It finds the kernel's daemon by its unix
socket in a 0700 per-user directory, forks one if there is none, and hands ssh's stdin/stdout to it
(SCM_RIGHTS), so the stream's bytes go between sshd and the daemon with no process in between.
It then waits on the socket until the daemon lets the stream go. When ssh dies only this process
goes; the daemon and the kernel stay.
Stdlib only, and small: it runs on every (re)connection, so it must start fast.
"""
from __future__ import annotations

import argparse
import array
import os
import socket
import sys
import threading
import time
from typing import List, Optional, Tuple

from remote_agent.paths import socket_path

__all__ = ["main", "connect", "options", "HANDOFF", "TAKEN"]

DAEMON_START = 10.0  # how long we wait for a new daemon's socket
READ_SIZE = 1 << 20
# Sent with ssh's two fds (SCM_RIGHTS ancillary data) to the daemon, which answers TAKEN. Neither can
# be taken for the start of a stream: the proxy's starts with the MAGIC's 0x89 or noise, the
# agent's with MAGIC or a frame's length, whose first byte is 0 for any frame under 16 MiB.
HANDOFF = b"PXK-FDS\n"
TAKEN = b"\x06"


def options(argv: List[str]) -> argparse.Namespace:
    """The agent's arguments, as the proxy writes them (``proxy.Proxy.run``)."""
    parser = argparse.ArgumentParser(prog="remote_agent")
    parser.add_argument("--id", required=True, help="the kernel's id: names its socket")
    parser.add_argument("--linger", type=float, default=3600.0)
    parser.add_argument("--ping", type=float, default=1.0)
    parser.add_argument("--dead", type=float, default=5.0)
    parser.add_argument("--buffer", type=int, default=256 * 1024 * 1024)
    return parser.parse_args(argv)


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
        reply = sock.recv(READ_SIZE)
    except OSError:
        os._exit(0)
    if not reply:
        os._exit(0)
    if reply != TAKEN:
        # A daemon of an older agent (running since before an upgrade) reads the stream from its
        # socket: it dropped the fds unread, and what it said is the start of its stream.
        _pump(stream_in, stream_out, sock, reply)
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


def connect(path: str) -> Optional[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        return None
    return sock


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
            from remote_agent.agent import daemon_main
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


def _pump(stream_in: int, stream_out: int, sock: socket.socket, first: bytes) -> None:
    """For an older daemon only: copy bytes both ways (``first`` came from the daemon already)
    until either side ends; then this process (only) exits."""
    def upstream() -> None:
        try:
            while True:
                data = os.read(stream_in, READ_SIZE)
                if not data:
                    break
                sock.sendall(data)
        except OSError:
            pass
        try:
            sock.shutdown(socket.SHUT_WR)  # the daemon sees the stream end and waits for another
        except OSError:
            pass

    threading.Thread(target=upstream, daemon=True).start()
    data = first
    try:
        while data:
            view = memoryview(data)
            while view:
                view = view[os.write(stream_out, view):]
            data = sock.recv(READ_SIZE)
    except OSError:
        pass
    os._exit(0)
