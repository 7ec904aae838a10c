"""The proxykernel stream protocol, sans-IO: bytes in, events out.

Both ends use this module: the local proxy imports it, and it travels to the remote host inside the
agent. It performs no I/O and reads no clock: callers feed received bytes to
``Connection.receive_data`` and write ``Connection.data_to_send()`` to their transport.

The rooms: the frame format, events and error tree are in ``frames.py`` (re-exported here, so callers
say ``wire.Hello``); the link's explicit state and its one table of moves in ``state.py``; the receive
buffer, replay buffer and send queue in ``buffers.py``. This module holds ``Connection``, which ties
them together, and ``Heartbeat``.

Noise before MAGIC (a login banner, a chatty ``.bashrc``) is skipped and reported as a ``Noise``
event. After the hello, anything that does not parse is a ``RemoteProtocolError``: the link is reset,
never trusted (receiving on it raises again until ``Connection.new_link``), and a frame longer than
``MAX_FRAME`` is rejected before a byte of it is buffered. Memory follows the bytes received, never
the length a header claims.

Runs on Python >= 3.8 (the remote side): no newer syntax, stdlib only.
"""
from __future__ import annotations

import enum
from typing import Any, Deque, Dict, List, NoReturn, Optional, Sequence

from remote_agent import frames
from remote_agent.buffers import Held, ReceiveBuffer, ReplayBuffer, SendQueue
from remote_agent.frames import (  # re-exported: the protocol's public names, as callers know them
    ACK_EVERY_BYTES, ACK_EVERY_FRAMES, CHANNELS, DROPPABLE, MAGIC, MAX_FRAME, MAX_NOISE, PROTOCOL_VERSION, Ack,
    Buffer, ChannelData, ErrorReport, Event, Hello, Interrupt, KernelExited, Kind, LocalProtocolError, LogLine,
    Noise, Ping, Pong, ProtocolError, Ready, RemoteProtocolError, Shutdown, Skipped, Start, VersionMismatch)
from remote_agent.state import LinkState, Side, State, Trigger

__all__ = [
    "PROTOCOL_VERSION", "MAGIC", "MAX_FRAME", "MAX_NOISE", "CHANNELS", "DROPPABLE", "ACK_EVERY_FRAMES",
    "ACK_EVERY_BYTES", "ProtocolError", "LocalProtocolError", "RemoteProtocolError", "VersionMismatch",
    "Hello", "ChannelData", "Ack", "Ping", "Pong", "Start", "Ready", "Interrupt", "Shutdown",
    "KernelExited", "ErrorReport", "LogLine", "Skipped", "Noise", "Event", "Buffer",
    "Role", "Connection", "Beat", "Heartbeat", "State",
]

_HEADER = frames.HEADER.size
_FRAMING = (State.AWAITING_HELLO, State.OPEN, State.OPEN_RESUMED)  # receiving states that read frames


class Role(enum.Enum):
    """Which end of the stream a ``Connection`` is. The value is what its hello says on the wire."""
    PROXY = "proxy"
    AGENT = "agent"


class Connection:
    """One end of the stream: encodes what this side sends, decodes what the peer sends.

    Called by the proxy's and the agent's event loops: ``receive_data`` (or ``read_buffer`` then
    ``received_into``) for what is read from the stream, then ``data_to_send`` to flush. The sequence
    state outlives a link: after a drop, ``new_link``, exchange hellos, and ``resume`` with the peer's
    ``received`` count queues exactly the data frames the peer lacks (until then they are only kept in
    ``replay``). ``state`` is the link's (``state.py``): a protocol error while receiving is sticky
    until ``new_link``. Pings are answered and acks sent here, so neither end dispatches them.
    """

    def __init__(self, role: Role, session: str = "", max_buffer: int = 256 * 1024 * 1024) -> None:
        if not isinstance(role, Role):  # the strings of old: the wire says role.value
            raise TypeError("role must be a wire.Role, not %r" % (role,))
        self.role = role
        self.max_buffer = max_buffer
        self.state = LinkState()
        self._received = ReceiveBuffer()
        self._out = SendQueue(frames.encode_skip)
        self.reset_session(session)
        self.new_link()

    def reset_session(self, session: str) -> None:
        """Forget all sequence state: a new proxy, a new conversation."""
        self.session = session
        self.sent_seq = 0  # seq of the last data frame sent
        self.received_seq = 0  # seq of the last data frame received
        self.acked_received = 0  # last received seq we have acked to the peer
        self._bytes_since_ack = 0
        self.replay = ReplayBuffer(self.max_buffer)

    def new_link(self) -> None:
        """A fresh byte stream: reset the decoder, the output and the link's state; keep the sequence state."""
        self.state.reset()
        self._peer_hello: Optional[Hello] = None
        self._failure = ""  # why receiving failed, once state.receiving is ERROR
        self._out.clear()
        self._received.clear()
        self._noise = 0

    @property
    def peer_hello(self) -> Optional[Hello]:
        """The peer's hello on this link, once received."""
        return self._peer_hello

    @property
    def linked(self) -> bool:
        """Has ``resume`` run on this link (data frames are written as they are sent)?"""
        return self.state.sending is State.LINKED

    @property
    def resumed(self) -> bool:
        """(agent) Did the peer's hello continue this side's session (else it reset the session)?"""
        return self.state.receiving is State.OPEN_RESUMED

    @property
    def buffered_bytes(self) -> int:
        """Received bytes not yet parsed (a large frame being read into its own buffer aside)."""
        return self._received.size

    @property
    def unacked(self) -> Deque[Held]:
        """Data frames sent and not yet acked, oldest first: (seq, size on the wire, pieces)."""
        return self.replay.unacked

    # -- sending ---------------------------------------------------------------------------
    def send_hello(self, capabilities: Sequence[str] = ()) -> None:
        self._out.control(frames.encode_hello(self.role.value, self.session, capabilities, self.received_seq))

    def send_data(self, channel: str, parts: Sequence[Buffer]) -> int:
        """Queue one whole ZMQ message for ``channel``; returns its sequence number."""
        seq = self.sent_seq + 1
        size, pieces = frames.encode_data(channel, seq, parts)  # refused before a seq is used up
        self.sent_seq = seq
        self.replay.add((seq, size, pieces), channel in DROPPABLE)
        if self.linked:
            self._out.data(seq)
        return seq

    def send_ack(self) -> None:
        self.acked_received = self.received_seq
        self._bytes_since_ack = 0
        self._out.control(frames.encode_ack(self.received_seq))

    def send_ping(self, now: float) -> None:
        self._out.control(frames.encode_time(Kind.PING, now))

    def _send_pong(self, timestamp: float) -> None:
        self._out.control(frames.encode_time(Kind.PONG, timestamp))

    def send_start(self, config: Dict[str, Any]) -> None:
        self._out.control(frames.encode_json(Kind.START, config))

    def send_ready(self, info: Dict[str, Any]) -> None:
        self._out.control(frames.encode_json(Kind.READY, info))

    def send_interrupt(self) -> None:
        self._out.control(frames.encode(Kind.INTERRUPT))

    def send_shutdown(self) -> None:
        self._out.control(frames.encode(Kind.SHUTDOWN))

    def send_kernel_exited(self, code: int) -> None:
        self._out.control(frames.encode_exit_code(code))

    def send_error(self, sentence: str) -> None:
        self._out.control(frames.encode_text(Kind.ERROR, sentence))

    def send_log(self, text: str) -> None:
        self._out.control(frames.encode_text(Kind.LOG, text))

    @property
    def pending(self) -> bool:
        """Is anything queued for the transport?"""
        return bool(self._out)

    def data_to_send(self) -> bytes:
        """Everything queued since the last call, ready for the transport, as one bytes."""
        return b"".join(self.buffers_to_send())

    def buffers_to_send(self, budget: Optional[int] = None) -> List[Any]:
        """The same as buffers, not joined, for a vectored write (``socket.sendmsg``) with no copy;
        with a ``budget``, about that many bytes of data frames (the rest stays queued)."""
        return self._out.take(self.replay, budget)

    def resume(self, peer_received: int) -> None:
        """The peer's hello arrived on this link (or, for a new session, is known to say 0): queue
        exactly what it lacks, then go live. Once per link.

        Frames dropped from the replay buffer become skip frames, so the peer knows how much output
        it will never see instead of mistaking the gap for corruption.
        """
        if peer_received > self.sent_seq:
            self._fail(RemoteProtocolError("the peer claims frame %d, but only %d were sent"
                                           % (peer_received, self.sent_seq)))
        self.state.process(Side.SENDING, Trigger.RESUME)
        self.replay.ack(peer_received)
        if self.sent_seq > peer_received:
            self._out.replay(peer_received + 1, self.sent_seq)

    # -- receiving -------------------------------------------------------------------------
    def receive_data(self, data: "bytes | bytearray") -> List[Event]:
        """Feed bytes read from the stream; returns the complete events they finish.

        Frames are cut from the received chunks without copying when they lie in one chunk, and
        with one join when they span several; data parts are views into them.
        """
        self._check_receiving()
        self._received.append(data)
        return self._decode()

    def read_buffer(self) -> memoryview:
        """Where the next read from the stream should go (``os.readv``), for ``received_into``:
        the rest of a large frame's own buffer once enough of it is in, else a scratch buffer."""
        size = 0  # that of the frame under way, if its header is in
        if self.state.receiving in _FRAMING and self._received.size >= _HEADER:
            length: int = frames.HEADER.unpack(self._received.peek(_HEADER))[0]
            size = 4 + length if 0 < length <= frames.MAX_FRAME else 0  # (a bad one is _decode's to report)
        return self._received.read_buffer(size)

    def received_into(self, nbytes: int) -> List[Event]:
        """``nbytes`` were read into the last ``read_buffer``: ``receive_data`` without a copy
        for large frames."""
        self._check_receiving()
        return self._decode() if self._received.received_into(nbytes) else []

    def _check_receiving(self) -> None:
        if self.state.receiving is State.ERROR:
            raise RemoteProtocolError("nothing more is read from a stream that broke the protocol (%s)"
                                      % self._failure)

    def _fail(self, error: BaseException) -> NoReturn:
        """Receiving raised: the stream is not trusted again (sticky ERROR until ``new_link``)."""
        if self.state.receiving is not State.ERROR:
            self.state.process(Side.RECEIVING, Trigger.PROTOCOL_ERROR)
            self._failure = str(error)
        raise error

    def _decode(self) -> List[Event]:
        events: List[Event] = []
        try:
            if self.state.receiving is State.AWAITING_MAGIC and not self._find_magic(events):
                return events
            received = self._received
            while received.size >= _HEADER:
                length, kind = frames.read_header(received.peek(_HEADER))
                if received.size < 4 + length:
                    break
                event = self._parse(kind, received.take(4 + length)[_HEADER:])
                if isinstance(event, Ping):
                    self._send_pong(event.timestamp)  # answered here, so neither end dispatches it
                else:
                    events.append(event)
        except BaseException as error:  # (as h11 does: a half-parsed stream is never trusted)
            self._fail(error)
        if (self.received_seq - self.acked_received >= ACK_EVERY_FRAMES
                or self._bytes_since_ack >= ACK_EVERY_BYTES):
            self.send_ack()  # lets the peer free its replay copies; no owner needs to ask
        return events

    def _find_magic(self, events: List[Event]) -> bool:
        found, noise = self._received.skip_to(MAGIC)
        if noise:
            self._noise += len(noise)
            if self._noise > frames.MAX_NOISE:
                raise RemoteProtocolError(
                    "the peer sent more than %d bytes before the protocol hello: it is not a proxykernel "
                    "agent, or something on the remote prints to its output" % frames.MAX_NOISE)
            events.append(Noise(noise))
        if found:
            self.state.process(Side.RECEIVING, Trigger.MAGIC)
        return found

    def _parse(self, kind: int, payload: Buffer) -> Event:
        if self.state.receiving is State.AWAITING_HELLO:
            if kind != Kind.HELLO:
                raise RemoteProtocolError("the peer sent frame type %d before its hello" % kind)
            return self._hello(payload)
        event = frames.parse(kind, payload)
        if isinstance(event, ChannelData):
            if event.seq != self.received_seq + 1:
                raise RemoteProtocolError("the peer sent data frame %d after %d: frames were lost"
                                          % (event.seq, self.received_seq))
            self.received_seq = event.seq
            self._bytes_since_ack += memoryview(payload).nbytes
        elif isinstance(event, Skipped):
            if event.seq < self.received_seq or event.seq - self.received_seq != event.frames:
                raise RemoteProtocolError("the peer sent an inconsistent skip to frame %d" % event.seq)
            self.received_seq = event.seq
        elif isinstance(event, Ack):
            if event.seq > self.sent_seq:
                raise RemoteProtocolError("the peer acknowledged frame %d, but only %d were sent"
                                          % (event.seq, self.sent_seq))
            self.replay.ack(event.seq)
        return event

    def _hello(self, payload: Buffer) -> Hello:
        hello = frames.parse_hello(payload, "remote agent" if self.role is Role.PROXY else "proxy")
        trigger = Trigger.HELLO
        if self.role is Role.AGENT:
            # A hello from another proxy starts a new conversation. Reset here, before the frames
            # that follow it in the same chunk are counted.
            if self.session and hello.session == self.session:
                trigger = Trigger.SESSION_HELLO
            else:
                self.reset_session(hello.session)
        self.state.process(Side.RECEIVING, trigger)
        self._peer_hello = hello
        return hello


class Beat(enum.Enum):
    """What ``Heartbeat.poll`` asks of the link's owner."""
    PING = "ping"  # send a ping now
    DEAD = "dead"  # nothing heard for ``timeout``: the link is dead


class Heartbeat:
    """When to ping, and when a silent link is dead. Time is a parameter: ``poll(now)``.

    Any bytes from the peer count as life (a long frame in transit is not silence); the peer
    answers pings, so a healthy idle link is never silent for more than ``interval``.
    """

    def __init__(self, interval: float, timeout: float, now: float) -> None:
        self.interval = interval
        self.timeout = timeout
        self.last_heard = now
        self.last_ping = now
        self.rtt: Optional[float] = None

    def heard(self, now: float) -> None:
        self.last_heard = now

    def pong(self, timestamp: float, now: float) -> None:
        self.rtt = now - timestamp

    def poll(self, now: float) -> Optional[Beat]:
        """What the link's owner must do now, if anything (called on its timer tick)."""
        if now - self.last_heard > self.timeout:
            return Beat.DEAD
        if now - self.last_ping >= self.interval:
            self.last_ping = now
            return Beat.PING
        return None
