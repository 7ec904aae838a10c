"""The local side Jupyter sees: the five kernel sockets, bound exactly as a kernel binds them.

Called by ``proxy.Proxy``: it hands every whole message a frontend sends to ``on_message`` and puts
the kernel's messages on the right socket with ``send``. Messages pass through as opaque frames; the
only message this module makes itself is IOPub's ``iopub_welcome``, signed with the session key.
"""
from __future__ import annotations

import asyncio
import datetime
import json
import logging
import uuid
from collections import deque
from typing import Any, Callable, Deque, Dict, List, Optional, Sequence

import zmq

from proxykernel.config import ConnectionFileError, load_connection_file
from proxykernel.notices import Cells
from remote_agent.peek import message_part
from remote_agent.resign import DELIMITER, Signer
from remote_agent.wire import Buffer

__all__ = ["Frontend", "BindError", "SocketReader", "load_connection_file", "ConnectionFileError"]

log = logging.getLogger("proxykernel")

HELD_IOPUB = 10000  # IOPub messages kept for the first subscriber, the newest ones

class MessageSigner(Signer):
    """Makes the few Jupyter messages the proxy itself sends, signed as jupyter_client.Session
    does (importing Session would cost every start 60 ms), and checks a frontend's signature
    (``verify_message``) where the proxy acts on a message itself."""

    def __init__(self, key: str, scheme: str) -> None:
        super().__init__(key, scheme)
        self.session = uuid.uuid4().hex
        self.count = 0

    def message(self, msg_type: str, content: Dict[str, Any], parent: Optional[Dict[str, Any]] = None) -> List[bytes]:
        """The wire frames from ``<IDS|MSG>`` on: delimiter, signature, header, parent, metadata, content."""
        self.count += 1
        header = {"msg_id": "%s_%d" % (self.session, self.count), "msg_type": msg_type,
                  "username": "proxykernel", "session": self.session, "version": "5.3",
                  "date": datetime.datetime.now(datetime.timezone.utc).isoformat()}
        parts = [json.dumps(part).encode() for part in (header, parent or {}, {}, content)]
        return [DELIMITER, self.sign(parts)] + parts


MessageHandler = Callable[[str, List[bytes]], None]


class SocketReader:
    """Reads one ZMQ socket from the asyncio loop, and is the only way the proxy sends on it.

    Made by ``Frontend`` for each of its sockets. libzmq's ``ZMQ_FD`` is edge-triggered, and any
    operation on the socket (a send too) processes its pending commands: a message that arrived while
    the loop was busy is then announced by no further edge. So every drain reads until ``ZMQ_EVENTS``
    shows no input, and every send re-checks it and drains on the next iteration if input is waiting
    (issue 9: a request could sit unread for a minute after two quick replies on the same socket).
    """

    BATCH = 64  # messages per drain before yielding to the loop, so one busy socket starves no other

    def __init__(self, sock: zmq.Socket[Any], on_recv: Callable[[List[bytes]], None],
                 loop: asyncio.AbstractEventLoop) -> None:
        self.socket = sock
        self.on_recv = on_recv
        self.loop = loop
        self._scheduled = False
        loop.add_reader(sock.FD, self.drain)
        self._schedule()  # anything that came before the reader existed

    def _schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            self.loop.call_soon(self._drain_soon)

    def _drain_soon(self) -> None:
        self._scheduled = False
        self.drain()

    def drain(self) -> None:
        """Called by the loop when the socket's fd fires, and after our own sends saw input waiting."""
        sock = self.socket
        for _ in range(self.BATCH):
            if sock.closed or not int(sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
                return
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self.on_recv(frames)
        self._schedule()  # more may be waiting, and no edge will say so

    def send(self, frames: Sequence[Buffer]) -> None:
        """Send one whole message now (no queue: a ROUTER or XPUB send never blocks)."""
        self.socket.send_multipart(frames, copy=False)
        if int(self.socket.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
            self._schedule()  # the send took the wake-up of a message that is waiting

    def close(self) -> None:
        self.loop.remove_reader(self.socket.FD)
        self.socket.close(linger=1000)


class BindError(Exception):
    """One of the kernel's ports cannot be bound; the message is the sentence for the user."""


class Frontend:
    """Binds shell/control/stdin (ROUTER), iopub (XPUB) and hb (ROUTER echo) on Jupyter's ports."""

    def __init__(self, info: Dict[str, object], on_message: MessageHandler,
                 context: zmq.Context[Any]) -> None:
        """Called by ``Proxy.run`` from within the running loop, once the connection file is read."""
        self.info = info
        self.on_message = on_message
        self.answer_heartbeat = True
        # IOPub messages from the kernel until a subscribed frontend sends its first request (None
        # after that), so the output a reattached kernel produced meanwhile reaches a frontend.
        self.subscribed = False
        self.requested = False
        self.held_iopub: Optional[Deque[List[bytes]]] = deque(maxlen=HELD_IOPUB)
        self.cells = Cells()  # where the proxy's own notices go (``notify``)
        self.signer = MessageSigner(str(info["key"]), str(info.get("signature_scheme", "hmac-sha256")))
        loop = asyncio.get_running_loop()
        self.readers: Dict[str, SocketReader] = {}
        for channel, kind in (("shell", zmq.ROUTER), ("control", zmq.ROUTER),
                              ("stdin", zmq.ROUTER), ("iopub", zmq.XPUB), ("hb", zmq.ROUTER)):
            sock = context.socket(kind)
            sock.linger = 1000
            if kind == zmq.XPUB:
                sock.setsockopt(zmq.XPUB_VERBOSE, 1)  # see every subscription, to welcome each
                sock.sndhwm = 0  # a slow frontend gets its output late, never lossy
            try:
                sock.bind(self._url(channel))
            except zmq.ZMQError as error:
                sock.close(linger=0)
                self.close()
                raise BindError("cannot listen on %s, the %s port Jupyter chose for this kernel: %s "
                                "(another process took it after Jupyter picked it); start the kernel again"
                                % (self._url(channel), channel, error.strerror)) from None
            self.readers[channel] = SocketReader(sock, self._handler(channel), loop)

    def _url(self, channel: str) -> str:
        port = self.info["%s_port" % channel]
        if self.info["transport"] == "ipc":
            return "ipc://%s-%s" % (self.info["ip"], port)
        return "tcp://%s:%s" % (self.info["ip"], port)

    def _handler(self, channel: str) -> Callable[[List[bytes]], None]:
        if channel == "iopub":
            return self._on_subscription
        if channel == "hb":
            return self._on_heartbeat

        def relay(frames: List[bytes]) -> None:
            if channel == "shell":
                for text, parent in self.cells.request(frames):  # held for the cell now run
                    self._stream(text, parent)
            if channel in ("shell", "control") and not self.requested:
                self.requested = True
                self._release_iopub()
            self.on_message(channel, frames)
        return relay

    def _on_heartbeat(self, frames: List[bytes]) -> None:
        # Answered here, not by the remote kernel: a slow or briefly broken link must not look like
        # a dead kernel. The proxy clears answer_heartbeat once the remote kernel has really died.
        if self.answer_heartbeat:
            self.readers["hb"].send(frames)

    def _on_subscription(self, frames: List[bytes]) -> None:
        for frame in frames:
            if frame[:1] == b"\x01":
                self._welcome(frame[1:])
                self.subscribed = True
                self._release_iopub()

    def _release_iopub(self) -> None:
        """Once a frontend has subscribed and one has sent a request (in either order: they come
        on different sockets), publish what the kernel said before. Not at the first subscription
        alone: Jupyter Server's own activity watcher subscribes at once, the notebook's connection
        later, and that one sends a kernel_info_request as soon as it listens."""
        if not (self.subscribed and self.requested):
            return
        held, self.held_iopub = self.held_iopub, None
        for frames in held or ():
            self.readers["iopub"].send(frames)

    def _welcome(self, topic: bytes) -> None:
        """What ipykernel's XPUB does: ``jupyter_client`` waits for IOPub traffic when it connects."""
        frames = self.signer.message("iopub_welcome", {"subscription": topic.decode("utf-8", "replace")})
        self.readers["iopub"].send(([topic] if topic else []) + frames)

    def publish_stream(self, text: str, before: Sequence[Buffer]) -> None:
        """Show ``text`` on stderr in the cell that the IOPub message ``before`` belongs to."""
        try:
            parent = json.loads(message_part(before, 2))
        except ValueError:
            parent = {}
        self._stream(text, parent)

    def notify(self, text: str) -> None:
        """Show ``text`` on stderr in the cell that is running, or else in the next cell run; called
        by ``Proxy`` for what the user must know and no kernel says (the host wants a new login)."""
        parent = self.cells.notice(text)
        if parent is not None:
            self._stream(text, parent)

    def _stream(self, text: str, parent: Dict[str, Any]) -> None:
        frames = self.signer.message("stream", {"name": "stderr", "text": text}, parent)
        self.send("iopub", [b"stream"] + frames)

    def send(self, channel: str, frames: Sequence[Buffer]) -> None:
        """Deliver a kernel message: on routed channels ``frames[0]`` is the frontend's identity.
        IOPub output that comes before a subscribed frontend's first request is held for it (after a
        reattach, the output produced while no frontend was there), where a PUB would drop it."""
        if channel == "iopub" and self.held_iopub is not None:
            self.held_iopub.append([bytes(frame) for frame in frames])  # views of buffers that move on
            return
        reader = self.readers.get(channel)
        if channel == "shell":
            self.cells.reply(frames)
        if reader is not None and channel != "hb":
            reader.send(frames)

    def close(self) -> None:
        for reader in self.readers.values():
            reader.close()
