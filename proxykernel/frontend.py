"""The local side Jupyter sees: the five kernel sockets, bound exactly as a kernel binds them.

Called by ``proxy.Proxy``: it hands every whole message a frontend sends to ``on_message`` and puts
the kernel's messages on the right socket with ``send``. Messages pass through as opaque frames; the
only message this module makes itself is IOPub's ``iopub_welcome``, signed with the session key.
"""
from __future__ import annotations

import datetime
import hashlib
import hmac
import json
import logging
import uuid
from typing import Any, Callable, Dict, List, Optional, Sequence

import zmq
from zmq.eventloop.zmqstream import ZMQStream

from proxykernel.config import ConnectionFileError, load_connection_file
from remote_agent.wire import Buffer

__all__ = ["Frontend", "load_connection_file", "ConnectionFileError"]

log = logging.getLogger("proxykernel")

class MessageSigner:
    """Makes the few Jupyter messages the proxy itself sends, signed as jupyter_client.Session
    does (importing Session would cost every start 60 ms)."""

    def __init__(self, key: bytes, scheme: str) -> None:
        self.key = key
        self.digest = getattr(hashlib, scheme.split("-", 1)[-1])
        self.session = uuid.uuid4().hex
        self.count = 0

    def message(self, msg_type: str, content: Dict[str, Any], parent: Optional[Dict[str, Any]] = None) -> List[bytes]:
        """The wire frames from ``<IDS|MSG>`` on: delimiter, signature, header, parent, metadata, content."""
        self.count += 1
        header = {"msg_id": "%s_%d" % (self.session, self.count), "msg_type": msg_type,
                  "username": "proxykernel", "session": self.session, "version": "5.3",
                  "date": datetime.datetime.now(datetime.timezone.utc).isoformat()}
        parts = [json.dumps(part).encode() for part in (header, parent or {}, {}, content)]
        signature = hmac.new(self.key, digestmod=self.digest)
        for part in parts:
            signature.update(part)
        return [b"<IDS|MSG>", signature.hexdigest().encode() if self.key else b""] + parts


MessageHandler = Callable[[str, List[bytes]], None]


class Frontend:
    """Binds shell/control/stdin (ROUTER), iopub (XPUB) and hb (ROUTER echo) on Jupyter's ports."""

    def __init__(self, info: Dict[str, object], on_message: MessageHandler,
                 context: zmq.Context) -> None:
        self.info = info
        self.on_message = on_message
        self.answer_heartbeat = True
        self.signer = MessageSigner(str(info["key"]).encode(),
                                    str(info.get("signature_scheme", "hmac-sha256")))
        self.streams: Dict[str, ZMQStream] = {}
        for channel, kind in (("shell", zmq.ROUTER), ("control", zmq.ROUTER),
                              ("stdin", zmq.ROUTER), ("iopub", zmq.XPUB), ("hb", zmq.ROUTER)):
            sock = context.socket(kind)
            sock.linger = 1000
            if kind == zmq.XPUB:
                sock.setsockopt(zmq.XPUB_VERBOSE, 1)  # see every subscription, to welcome each
                sock.sndhwm = 0  # a slow frontend gets its output late, never lossy
            sock.bind(self._url(channel))
            stream = ZMQStream(sock)
            stream.on_recv(self._handler(channel), copy=True)
            self.streams[channel] = stream

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
            self.on_message(channel, frames)
        return relay

    def _on_heartbeat(self, frames: List[bytes]) -> None:
        # Answered here, not by the remote kernel: a slow or briefly broken link must not look like
        # a dead kernel. The proxy clears answer_heartbeat once the remote kernel has really died.
        if self.answer_heartbeat:
            self.streams["hb"].send_multipart(frames)

    def _on_subscription(self, frames: List[bytes]) -> None:
        for frame in frames:
            if frame[:1] == b"\x01":
                self._welcome(frame[1:])

    def _welcome(self, topic: bytes) -> None:
        """What ipykernel's XPUB does: ``jupyter_client`` waits for IOPub traffic when it connects."""
        frames = self.signer.message("iopub_welcome", {"subscription": topic.decode("utf-8", "replace")})
        self.streams["iopub"].send_multipart(([topic] if topic else []) + frames)

    def publish_stream(self, text: str, before: Sequence[Buffer]) -> None:
        """Show ``text`` on stderr in the cell that the IOPub message ``before`` belongs to."""
        try:
            parent = json.loads(bytes(before[list(before).index(b"<IDS|MSG>") + 3]))
        except (ValueError, IndexError):
            parent = {}
        frames = self.signer.message("stream", {"name": "stderr", "text": text}, parent)
        self.streams["iopub"].socket.send_multipart([b"stream"] + frames)

    def send(self, channel: str, frames: Sequence[Buffer]) -> None:
        """Deliver a kernel message: on routed channels ``frames[0]`` is the frontend's identity."""
        stream = self.streams.get(channel)
        if stream is not None and channel != "hb":
            stream.socket.send_multipart(frames, copy=False)

    def close(self) -> None:
        for stream in self.streams.values():
            stream.close(linger=1000)
