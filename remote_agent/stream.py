"""The attached stream in the daemon's loop: at most one link at a time, its heartbeat, and the bytes
on their way to it.

Owned by ``agent.Agent``: its loop calls ``watch`` before each poll, ``accept`` when the daemon's
socket is readable, ``on_ready`` for the link's fds, ``check_heartbeat`` with the loop's time, and
``flush`` at the end of every turn. A link that breaks the protocol, goes silent, ends or is
replaced is let go (``detach``), which ends its attach process and ssh session; the daemon and the
kernel stay, waiting for the next one.
"""
from __future__ import annotations

import argparse
import itertools
import os
import socket
import time
from collections import deque
from typing import Any, Callable, Deque, List, Optional

import zmq

from remote_agent import wire
from remote_agent.link import Link, receive_link

__all__ = ["Stream", "Outbox", "OUT_BUDGET"]

SENDMSG_PIECES = 512  # buffers per vectored write (IOV_MAX is 1024 on Linux)
# Bytes taken from the replay buffer into the link's write queue at a time: a stalled link then
# holds no more than this beyond the (capped) replay buffer itself.
OUT_BUDGET = 4 * 1024 * 1024


class Outbox:
    """The bytes on their way to the attached stream, as the buffers they came in (no copy), for
    vectored writes. ``Stream.flush`` fills it from the connection's replay buffer, at most
    ``OUT_BUDGET`` ahead of the stream, and writes it whenever the stream is writable."""

    def __init__(self) -> None:
        self._views: Deque[memoryview] = deque()
        self.size = 0  # bytes queued

    def __bool__(self) -> bool:
        return bool(self._views)

    def fill(self, pieces: List[Any]) -> None:
        """Queue ``pieces`` (what ``wire.Connection.buffers_to_send`` returned)."""
        for piece in pieces:
            view = memoryview(piece).cast("B")
            if view.nbytes:
                self._views.append(view)
                self.size += view.nbytes

    def write(self, fd: int) -> Optional[str]:
        """Write what the (non-blocking) ``fd`` takes now; why the stream broke, if it did."""
        while self._views:
            try:
                sent = os.writev(fd, list(itertools.islice(self._views, SENDMSG_PIECES)))
            except BlockingIOError:
                return None
            except OSError as error:
                return str(error)
            self.size -= sent
            while sent:
                head = self._views[0]
                if sent >= head.nbytes:
                    sent -= head.nbytes
                    self._views.popleft()
                else:
                    self._views[0] = head[sent:]
                    sent = 0
        return None

    def clear(self) -> None:
        """Forget what was queued: the stream it was for is gone (the replay buffer still has it)."""
        self._views.clear()
        self.size = 0


class Stream:
    """The attached link (if any) as the loop drives it: reads into the connection, writes out of
    it, watches the link's heartbeat and its attach process."""

    def __init__(self, conn: wire.Connection, poller: zmq.Poller, options: argparse.Namespace,
                 log: Callable[[str], None], on_events: Callable[[List[wire.Event]], None]) -> None:
        """``on_events`` gets what each read decoded; ``options`` has ``ping``, ``dead``, ``linger``."""
        self.conn = conn
        self.poller = poller
        self.options = options
        self.log = log
        self.on_events = on_events
        self.link: Optional[Link] = None
        self.heartbeat: Optional[wire.Heartbeat] = None
        self.outbox = Outbox()
        self.replay_at_attach = conn.replay
        self.detached_since = time.monotonic()

    def watch(self) -> Optional[Link]:
        """Before each poll: have the link's fds polled (its write fd only while bytes wait).
        Returns the link polled, for ``on_ready``."""
        link = self.link
        if link is not None:
            self.poller.register(link.read_fd, zmq.POLLIN)
            self.poller.register(link.write_fd, zmq.POLLOUT if self.outbox else 0)  # 0: unregister
        return link

    def on_ready(self, fd: Any, polled: Optional[Link]) -> bool:
        """Handle a ready ``fd`` if it is the ``polled`` link's, and that link is still attached
        (not replaced or detached meanwhile). Its write fd is left to ``flush``."""
        if polled is None or polled is not self.link:
            return False
        if fd == polled.read_fd:
            self.read_link()
        elif fd == polled.control.fileno():
            self.read_control()
        else:
            return False
        return True

    def accept(self, listener: socket.socket) -> None:
        """A connection to the daemon's socket: a new ssh session's stream replaces the current one."""
        control, _ = listener.accept()
        link = receive_link(control)
        if link is None:
            return
        if self.link is not None:
            self.detach("a new connection replaces the old one")
        self.attach(link, time.monotonic())
        self.conn.new_link()

    def attach(self, link: Link, now: float) -> None:
        """Take ``link`` as the stream, heard from at ``now`` (also for the daemon's first link)."""
        self.link = link
        self.replay_at_attach = self.conn.replay  # a new proxy's hello replaces it (see Agent.reattach)
        # attach's end of the control socket: it closes only if attach dies (its ssh session is over).
        self.poller.register(link.control.fileno(), zmq.POLLIN)
        self.heartbeat = wire.Heartbeat(self.options.ping, self.options.dead, now)

    def detach(self, why: str) -> None:
        """Let the stream go (its attach process exits, and with it the ssh session); wait for another."""
        if self.link is None:
            return
        for fd in (self.link.read_fd, self.link.write_fd, self.link.control.fileno()):
            self.poller.register(fd, 0)  # 0 unregisters, if registered
        self.link.close()
        self.link = None
        self.heartbeat = None
        self.outbox.clear()
        self.conn.new_link()
        self.detached_since = time.monotonic()
        self.log("proxy detached (%s); waiting up to %.0f s for it to come back" % (why, self.options.linger))

    def check_heartbeat(self, now: float) -> None:
        """On each loop turn: ping the proxy when due; let a link that went silent go."""
        if self.heartbeat is None:
            return
        beat = self.heartbeat.poll(now)
        if beat is wire.Beat.PING:
            self.conn.send_ping(time.time())
        elif beat is wire.Beat.DEAD:
            self.detach("no traffic from the proxy for %.1f s" % self.heartbeat.timeout)

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
        """The link is readable: decode what came and pass the events on; its end lets it go."""
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
        self.on_events(events)

    def reject(self, error: wire.ProtocolError) -> None:
        """The link broke the protocol: tell the proxy why, then drop the link."""
        if self.conn.peer_hello is None or not self.conn.linked:
            self.conn.send_hello()  # so the proxy can read our version before the error
        self.conn.send_error(str(error))
        self.flush()
        self.detach(str(error))

    def flush(self) -> None:
        """Write what is queued with vectored writes: frames go out as the buffers they came in,
        taken from the replay buffer at most OUT_BUDGET bytes ahead of the stream."""
        while self.link is not None:
            if self.outbox.size < OUT_BUDGET and self.conn.pending:
                self.outbox.fill(self.conn.buffers_to_send(OUT_BUDGET - self.outbox.size))
            error = self.outbox.write(self.link.write_fd)
            if error is not None:
                self.detach(error)
            if self.outbox or not self.conn.pending:
                return
        self.conn.buffers_to_send()  # no stream attached: control frames have nowhere to go

    def flush_blocking(self, seconds: float) -> None:
        """Flush, waiting up to ``seconds`` for the stream to take it all (a kernel's exit report)."""
        deadline = time.monotonic() + seconds
        self.flush()
        while self.outbox and self.link is not None and time.monotonic() < deadline:
            self.poller.register(self.link.write_fd, zmq.POLLOUT)
            self.poller.poll(20)
            self.flush()
