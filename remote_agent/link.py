"""An attached ssh stream, as the daemon receives it: ssh's own stdin/stdout pipes, handed over by
the session's ``attach`` process on the daemon's unix socket (SCM_RIGHTS).

Used by the daemon's two phases: ``daemon.read_first_start`` (before zmq is imported) receives the
first link into a ``FirstLink``; ``stream.Stream`` takes that over and receives every later link.
Stdlib only, for the first phase.
"""
from __future__ import annotations

import array
import os
import socket
from typing import List, Optional

from remote_agent import wire
from remote_agent.handoff import HANDOFF, TAKEN, log
from remote_agent.kernel import Launch

__all__ = ["Link", "receive_link", "FirstLink"]

# How long a connection to our socket may take to hand over its ssh stream. attach sends it right
# after connecting; only a stuck or foreign client takes longer, and the loop waits for it meanwhile.
HANDOFF_WAIT = 2.0


class Link:
    """An attached ssh stream: ssh's stdin and stdout, lent by the session's attach process,
    which waits on ``control`` until we close it. The fds may be pipes or sockets; both are
    non-blocking here. Made by ``receive_link``; closed by ``stream.Stream`` when it lets the stream go."""

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


def receive_link(control: socket.socket) -> Optional[Link]:
    """Take the ssh stream that attach hands over on a new connection to our socket (HANDOFF with
    two fds) and acknowledge it. Called for each accepted connection. None, with the connection
    closed, when something else came: a daemon's check whether we are alive connects and closes at once."""
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
            return Link(control, fds[0], fds[1])
        if data:
            log("a connection to the daemon's socket sent %r instead of an ssh stream" % data[:16])
    except OSError as error:
        log("a connection to the daemon's socket failed before it handed over a stream: %s" % error)
    for fd in fds:
        os.close(fd)
    control.close()
    return None


class FirstLink:
    """What a new daemon got before it had zmq: its first link, what that link said, and the
    kernel launched for its Start frame. Filled by ``daemon.read_first_start``; ``Agent.take_over``
    takes it over."""

    def __init__(self, conn: wire.Connection) -> None:
        self.conn = conn  # has parsed what was read: frames after Start are in ``events``
        self.link: Optional[Link] = None
        self.accepted_at = 0.0
        self.events: List[wire.Event] = []
        self.error: Optional[wire.ProtocolError] = None  # raised by the decoder
        self.closed: Optional[str] = None  # why the link ended, if it did
        self.launch: Optional[Launch] = None
