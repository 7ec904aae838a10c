"""The remote agent's daemon: one per kernel, detached, outliving ssh sessions.

Forked by ``remote_agent.attach`` (what each ssh session runs) on the Python the user chose, so the
kernel runs on that same interpreter; ``daemon_main`` is its entry. It launches ipykernel, bridges
its five channels to whichever stream is attached, keeps what the proxy has not acknowledged for
replay, and stops the kernel after ``--linger`` seconds with no proxy attached.

A stream attaches as ssh's own stdin/stdout pipes, which the session's attach process passes over
the unix socket (SCM_RIGHTS): the daemon reads and writes them directly, and closes them and that
socket when it lets the stream go, which ends the attach process and with it the ssh session.

The fast path: a new daemon launches the kernel before it imports zmq. ``read_first_start`` reads
the first link with the stdlib until the Start frame and starts ipykernel (about 0.3 s to get
going); only then does ``daemon_main`` import ``agent`` (and with it zmq, 30-40 ms of CPU), while the
kernel boots. This module, and what it imports at its top, must therefore stay free of zmq.

Self-contained: stdlib and pyzmq (which ipykernel already brings); Python >= 3.8 syntax; a
``zmq.Poller`` loop (``agent.Agent``), no tornado.
"""
from __future__ import annotations

import errno
import os
import select
import signal
import socket
import sys
import time
from typing import Any, List

from remote_agent import wire
from remote_agent.handoff import connect, options
from remote_agent.kernel import discard_launch, launch_kernel
from remote_agent.link import FirstLink, receive_link
from remote_agent.paths import socket_path

__all__ = ["daemon_main", "read_first_start", "FIRST_START_WAIT"]

# How long a new daemon waits, zmq not yet imported, for its first link and that link's Start
# frame. The first link brings Start at once; one that does not (a reconnect that found the old
# daemon gone) is served by the Agent after this.
FIRST_START_WAIT = 1.0


def daemon_main(argv: List[str]) -> None:
    """The daemon's entry point, in the process ``attach`` forked for it; exits with the kernel's
    code when the kernel is done with."""
    opts = options(argv)
    path = socket_path(opts.id)
    listener = _listen(path)
    signal.signal(signal.SIGTERM, _exit_on_signal)
    first = FirstLink(wire.Connection(wire.Role.AGENT, max_buffer=opts.buffer))
    try:
        try:
            read_first_start(listener, first)
            from remote_agent.agent import Agent  # imports zmq, while the kernel starts
            agent = Agent(listener, opts, first.conn)
        except BaseException:
            if first.launch is not None:  # a SIGTERM, or no usable zmq: no kernel is left behind
                discard_launch(first.launch)
            if first.link is not None:
                first.link.close()
            raise
        code = agent.run(first)
    finally:
        listener.close()
        for leftover in (path, path[:-len(".sock")] + ".log", path[:-len(".sock")] + ".json"):  # .json: status
            try:
                os.unlink(leftover)
            except OSError:
                pass
    sys.exit(code if 0 <= code < 256 else 1)


def _listen(path: str) -> socket.socket:
    """The daemon's unix socket at ``path``; a stale one left by a daemon that died is replaced."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(path)
    except OSError as error:
        if error.errno != errno.EADDRINUSE or connect(path) is not None:
            raise SystemExit("proxykernel-agent: cannot listen on %s: %s" % (path, error)) from None
        os.unlink(path)  # a stale socket from a daemon that died: take its place
        listener.bind(path)
    listener.listen(4)
    return listener


def _exit_on_signal(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds through Agent.run, which stops the kernel


def read_first_start(listener: socket.socket, first: FirstLink) -> None:
    """Accept the first link and read it until the Start frame has been parsed, then launch the
    kernel. Called once by ``daemon_main``, before zmq is imported. Stdlib only; stops early (the
    Agent takes over as is) on EOF, an error or a timeout."""
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
        link = receive_link(control)
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
            first.launch = launch_kernel(start.config)
            break
