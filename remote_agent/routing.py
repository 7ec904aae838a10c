"""ZMQ messages between the stream and the kernel, routed per frontend identity.

One DEALER per frontend identity and channel (shell, control, stdin) toward the kernel, so replies
and ``input_request``s reach the frontend that asked; one SUB that relays the kernel's IOPub. Frames
go through as they came (``copy=False`` buffers), never re-serialized.

Owned by ``agent.Agent``, which calls ``open`` for each kernel it launches, ``relay_request`` for each
frame from the proxy, ``relay_reply``/``relay_iopub`` when a socket is readable, ``check_welcome``
on each loop turn, and ``close`` before the next kernel. Imports zmq: the daemon imports this only
after the first kernel was launched (see ``daemon``).
"""
from __future__ import annotations

import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import zmq

from remote_agent import peek, wire
from remote_agent.kernel import channel_url
from remote_agent.resign import Resigner

__all__ = ["Router", "REQUEST_CHANNELS"]

REQUEST_CHANNELS = ("shell", "control", "stdin")
# Our sockets connect before the kernel has bound its own: ZMQ retries every RECONNECT_MS (its
# default, 100 ms, would add up to that to every start).
RECONNECT_MS = 10
# A kernel that greets subscribers (iopub_welcome, ipykernel 7+) gets no request before our SUB is
# greeted, so the first cell's output cannot be published before we listen; this long at most.
WELCOME_WAIT = 10.0
BATCH = 64  # messages relayed per socket and wake-up, so one busy socket cannot starve the others


class Router:
    """The ZMQ side of one kernel at a time: its sockets, registered on the loop's poller, and what
    the frontends' messages told us about the kernel (``used``, ``restart_expected``)."""

    def __init__(self, conn: wire.Connection, poller: zmq.Poller, on_restart: Callable[[], None]) -> None:
        """``on_restart`` is called when the kernel has answered a restart's shutdown_request."""
        self.conn = conn
        self.poller = poller
        self.on_restart = on_restart
        self.context = zmq.Context()
        self.context.setsockopt(zmq.RECONNECT_IVL, RECONNECT_MS)  # (a default for its sockets)
        self.info: Dict[str, Any] = {}  # the kernel's connection info
        self.live = False  # a kernel is there to take requests
        self.used = False  # a pre-started kernel is handed over only if nobody used it
        self.restart_expected = False
        self.iopub: Optional[zmq.Socket[bytes]] = None
        self.welcomed = False  # the kernel's iopub_welcome to our own SUB is not for the frontends
        self.subscribed = True  # our SUB is known to hear the kernel; else requests wait in held
        self.held: List[wire.ChannelData] = []
        self.opened_at = 0.0
        self.resigner: Optional[Resigner] = None  # set for a kernel reattached under a new key
        # (channel, frontend identity) -> DEALER, and back: replies go to the frontend that asked.
        self.dealers: Dict[Tuple[str, bytes], zmq.Socket[bytes]] = {}
        self.routes: Dict[zmq.Socket[bytes], Tuple[str, bytes]] = {}

    def open(self, info: Dict[str, Any], greets: bool, now: float) -> None:
        """A kernel was launched with connection ``info``: subscribe to its IOPub. If it ``greets``
        subscribers, requests wait for its welcome (or WELCOME_WAIT after ``now``)."""
        self.info = info
        self.resigner = None
        self.live = True
        self.used = False
        self.restart_expected = False
        self.welcomed = False
        self.subscribed = not greets
        self.opened_at = now
        self.iopub = self.context.socket(zmq.SUB)
        self.iopub.rcvhwm = 0  # never drop output on our side; the replay buffer bounds memory
        self.iopub.setsockopt(zmq.SUBSCRIBE, b"")
        self.iopub.connect(channel_url(info, "iopub"))
        self.poller.register(self.iopub, zmq.POLLIN)

    def kernel_gone(self) -> None:
        """The kernel was forgotten: requests for it are dropped, none waits any more."""
        self.live = False
        self.held.clear()
        self.subscribed = True

    def close(self) -> None:
        """Close the kernel's sockets (before the next kernel, and when the daemon exits)."""
        for sock in list(self.routes) + ([self.iopub] if self.iopub is not None else []):
            self.poller.unregister(sock)
            sock.close(linger=0)
        self.routes.clear()
        self.dealers.clear()
        self.iopub = None

    def term(self) -> None:
        """End the ZMQ context, after ``close``, when the daemon exits."""
        self.context.term()

    def check_welcome(self, now: float) -> None:
        """On each loop turn: stop waiting for a welcome that did not come within WELCOME_WAIT."""
        if not self.subscribed and now - self.opened_at > WELCOME_WAIT:
            self.hear_kernel()

    def hear_kernel(self) -> None:
        """Our SUB hears the kernel (or we stop waiting for it): the held requests may go."""
        if not self.subscribed:
            self.subscribed = True
            held, self.held = self.held, []
            for event in held:
                self.relay_request(event)

    def relay_request(self, event: wire.ChannelData) -> None:
        """A frontend's message for shell/control/stdin: frames[0] is its routing identity."""
        if event.channel not in REQUEST_CHANNELS or not event.frames or not self.live:
            return
        if not self.subscribed:
            self.held.append(event)
            return
        identity, frames = bytes(event.frames[0]), list(event.frames[1:])
        if self.resigner is not None:
            resigned = self.resigner.to_kernel(frames)
            if resigned is None:
                return
            frames = resigned
        self.used = True
        if event.channel == "control":
            restart = peek.restart_requested(frames)
            if restart is not None:
                self.restart_expected = restart
        self.dealer(event.channel, identity).send_multipart(frames, copy=False)

    def dealer(self, channel: str, identity: bytes) -> zmq.Socket[bytes]:
        """The DEALER that speaks for frontend ``identity`` on ``channel``, made on first use."""
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
        sock.connect(channel_url(self.info, channel))
        self.dealers[(channel, identity)] = sock
        self.routes[sock] = (channel, identity)
        self.poller.register(sock, zmq.POLLIN)
        return sock

    def relay(self, sock: Any) -> bool:
        """Relay from ``sock`` if it is one of ours (a ready socket from the loop's poll)."""
        if sock is self.iopub:
            self.relay_iopub()
        elif sock in self.routes:
            self.relay_reply(sock)
        else:
            return False
        return True

    def relay_reply(self, sock: zmq.Socket[bytes]) -> None:
        """A DEALER is readable: the kernel's replies go to the frontend that DEALER speaks for."""
        channel, identity = self.routes[sock]
        for _ in range(BATCH):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            relayed = self.to_frontend([frame.buffer for frame in frames])
            if relayed is None:
                continue
            self.conn.send_data(channel, [identity] + relayed)
            if (channel == "control" and self.restart_expected
                    and b'"shutdown_reply"' in peek.message_part(relayed, 1)):
                self.on_restart()
                return

    def relay_iopub(self) -> None:
        """Our SUB is readable: the kernel's output goes to every frontend (the proxy's XPUB)."""
        assert self.iopub is not None
        for _ in range(BATCH):
            try:
                frames = self.iopub.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            buffers: List[wire.Buffer] = [frame.buffer for frame in frames]  # no copy: as they came
            self.hear_kernel()
            if not self.welcomed and peek.is_welcome(buffers):
                self.welcomed = True
                continue
            relayed = self.to_frontend(buffers)
            if relayed is not None:
                self.conn.send_data("iopub", relayed)

    def to_frontend(self, buffers: List[wire.Buffer]) -> Optional[List[wire.Buffer]]:
        """A kernel's message as the frontend must see it: as it came, or re-signed with the
        frontend's key after a reattach (None: it failed the kernel's own signature check)."""
        return buffers if self.resigner is None else self.resigner.to_frontend(buffers)

    def drain(self, seconds: float) -> None:
        """Relay what the kernel sent just before exiting (a shutdown_reply, the last output).
        Called by the Agent when the kernel has exited, before it is forgotten."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            ready = [sock for sock, _ in self.poller.poll(20) if isinstance(sock, zmq.Socket)]
            if not ready:
                return
            for sock in ready:
                self.relay(sock)
