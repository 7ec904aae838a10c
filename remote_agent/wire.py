"""The proxykernel stream protocol, sans-IO: bytes in, events out.

Both ends use this module: the local proxy imports it, and it travels to the remote host inside the
agent. It performs no I/O and reads no clock: callers feed received bytes to
``Connection.receive_data`` and write ``Connection.data_to_send()`` to their transport.

Stream layout, in each direction::

    [noise] MAGIC HELLO-frame frame frame ...
    frame = length:u32be  type:u8  payload[length-1]

Noise before MAGIC (a login banner, a chatty ``.bashrc``) is skipped and reported as a ``Noise``
event. After the hello, anything that does not parse is a ``RemoteProtocolError``: the link is reset,
never trusted, and a frame longer than ``MAX_FRAME`` is rejected before a byte of it is buffered.

Runs on Python >= 3.8 (the remote side): no newer syntax, stdlib only.
"""
from __future__ import annotations

import enum
import json
import struct
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Deque, Dict, List, Optional, Sequence, Tuple, Union

__all__ = [
    "PROTOCOL_VERSION", "MAGIC", "MAX_FRAME", "MAX_NOISE", "CHANNELS",
    "ProtocolError", "LocalProtocolError", "RemoteProtocolError", "VersionMismatch",
    "Hello", "ChannelData", "Ack", "Ping", "Pong", "Start", "Ready", "Interrupt", "Shutdown",
    "KernelExited", "ErrorReport", "LogLine", "Skipped", "Noise", "Event", "Connection", "Beat", "Heartbeat",
    "message_part", "is_welcome", "restart_requested", "Buffer",
]

PROTOCOL_VERSION = 1
MAGIC = b"\x89PXK\r\n\x1a\n"  # PNG-style: a high byte, CR LF and ^Z catch text-mode mangling
# Far above one Jupyter message a frontend accepts (tornado's websocket default is 10 MiB), small
# enough that a garbage length is caught before we allocate it.
MAX_FRAME = 256 * 1024 * 1024
# Noise kept while looking for MAGIC: a banner is a few kB; beyond this the peer is not an agent.
MAX_NOISE = 64 * 1024
# A frame at least this big is read straight into one buffer of its own size (read_buffer), so
# it is never joined from many reads: one copy and its memory saved, for large outputs.
DIRECT_FRAME = 1024 * 1024
SCRATCH_SIZE = 256 * 1024  # what one read_buffer offers when no large frame is under way
CHANNELS = ("shell", "control", "stdin", "iopub", "hb")
# Acks are cumulative and batched: often enough that the sender's replay buffer stays small.
ACK_EVERY_FRAMES = 128
ACK_EVERY_BYTES = 4 * 1024 * 1024

_HEADER = struct.Struct(">IB")
_DATA_HEAD = struct.Struct(">BQI")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_F64 = struct.Struct(">d")
_I32 = struct.Struct(">i")

(_HELLO, _DATA, _ACK, _PING, _PONG, _START, _READY, _INTERRUPT, _SHUTDOWN, _EXITED,
 _ERROR, _LOG, _SKIP) = range(1, 14)
_SKIP_BODY = struct.Struct(">QQQ")
# Output the sender may drop when its replay buffer is full; replies are never dropped.
DROPPABLE = frozenset(["iopub"])


class ProtocolError(Exception):
    """Base of this module's errors; ``str(error)`` is a sentence a user can act on."""


class LocalProtocolError(ProtocolError):
    """This side tried to do something the protocol forbids (a bug in the caller)."""


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes that are not valid protocol: the link must be reset."""


class VersionMismatch(RemoteProtocolError):
    """The peer speaks another protocol version."""


@dataclass(frozen=True)
class Hello:
    version: int
    role: str
    session: str
    capabilities: Tuple[str, ...] = ()
    received: int = 0  # last data seq this side has received (for resume)


@dataclass(frozen=True)
class ChannelData:
    channel: str
    seq: int
    frames: Tuple["Buffer", ...]


@dataclass(frozen=True)
class Ack:
    seq: int


@dataclass(frozen=True)
class Ping:
    timestamp: float


@dataclass(frozen=True)
class Pong:
    timestamp: float


@dataclass(frozen=True)
class Start:
    """Proxy -> agent: launch the kernel. Carries the session key, so it only ever crosses the stream."""
    config: Dict[str, Any] = field(hash=False)


@dataclass(frozen=True)
class Ready:
    """Agent -> proxy: the kernel process runs; ``info`` says where and what."""
    info: Dict[str, Any] = field(hash=False)


@dataclass(frozen=True)
class Interrupt:
    pass


@dataclass(frozen=True)
class Shutdown:
    pass


@dataclass(frozen=True)
class KernelExited:
    code: int


@dataclass(frozen=True)
class ErrorReport:
    sentence: str


@dataclass(frozen=True)
class LogLine:
    """A line of the agent's log (or the kernel's stderr), for the Jupyter server's log."""
    text: str


@dataclass(frozen=True)
class Skipped:
    """The sender dropped data frames up to ``seq`` (its replay buffer overflowed during an outage)."""
    seq: int
    frames: int
    nbytes: int


@dataclass(frozen=True)
class Noise:
    data: bytes


# A message part: bytes, or a zero-copy view of received or zmq-owned memory.
Buffer = Union[bytes, memoryview]

Event = Union[Hello, ChannelData, Ack, Ping, Pong, Start, Ready, Interrupt, Shutdown, KernelExited,
              ErrorReport, LogLine, Skipped, Noise]


def _json_payload(obj: Dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode("utf-8")


def _parse_json(payload: Buffer, what: str) -> Dict[str, Any]:
    try:
        obj = json.loads(bytes(payload).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):  # deep nesting is garbage too
        raise RemoteProtocolError("the peer sent a %s frame that is not valid JSON" % what) from None
    if not isinstance(obj, dict):
        raise RemoteProtocolError("the peer sent a %s frame that is not a JSON object" % what)
    return obj


def _parse_hello(payload: Buffer, peer: str) -> Hello:
    obj = _parse_json(payload, "hello")
    version = obj.get("version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise RemoteProtocolError("the peer's hello carries no protocol version")
    if version != PROTOCOL_VERSION:
        raise VersionMismatch(
            "the %s speaks proxykernel protocol version %s but this side speaks version %d; "
            "install the same proxykernel version on both sides (or clear the remote agent cache)"
            % (peer, version, PROTOCOL_VERSION))
    caps = obj.get("capabilities", [])
    received = obj.get("received", 0)
    if not (isinstance(caps, list) and all(isinstance(c, str) for c in caps)
            and isinstance(received, int) and received >= 0):
        raise RemoteProtocolError("the peer sent a malformed hello")
    return Hello(version, str(obj.get("role", "")), str(obj.get("session", "")), tuple(caps), received)


def _parse_data(payload: Buffer) -> ChannelData:
    if len(payload) < _DATA_HEAD.size:
        raise RemoteProtocolError("the peer sent a truncated data frame")
    channel_id, seq, count = _DATA_HEAD.unpack_from(payload)
    if channel_id >= len(CHANNELS):
        raise RemoteProtocolError("the peer sent data for unknown channel %d" % channel_id)
    view = memoryview(payload).toreadonly()  # read-only views hash like bytes (identities are keys)
    pos = _DATA_HEAD.size
    # Each part costs at least 4 bytes of length, so a count that cannot fit is garbage.
    if count * _U32.size > len(payload) - pos:
        raise RemoteProtocolError("the peer sent a data frame with an impossible part count")
    frames: List[Buffer] = []
    for _ in range(count):
        if pos + _U32.size > len(payload):
            raise RemoteProtocolError("the peer sent a data frame whose parts overrun it")
        (size,) = _U32.unpack_from(payload, pos)
        pos += _U32.size
        if pos + size > len(payload):
            raise RemoteProtocolError("the peer sent a data frame whose parts overrun it")
        frames.append(view[pos:pos + size])  # zero-copy: a view of the received frame
        pos += size
    if pos != len(payload):
        raise RemoteProtocolError("the peer sent a data frame with trailing bytes")
    return ChannelData(CHANNELS[channel_id], seq, tuple(frames))


def _fixed(fmt: struct.Struct, payload: bytes, what: str) -> Any:
    if len(payload) != fmt.size:
        raise RemoteProtocolError("the peer sent a %s frame of the wrong size" % what)
    return fmt.unpack(payload)[0]


def _parse_skip(payload: Buffer) -> Skipped:
    if len(payload) != _SKIP_BODY.size:
        raise RemoteProtocolError("the peer sent a skip frame of the wrong size")
    return Skipped(*_SKIP_BODY.unpack(payload))


def _parse_empty(event: Event, what: str) -> Any:
    def parse(payload: bytes) -> Event:
        if payload:
            raise RemoteProtocolError("the peer sent a %s frame with a payload" % what)
        return event
    return parse


# One table from frame type to parser: the whole receive side's dispatch.
_PARSERS = {
    _DATA: _parse_data,
    _ACK: lambda p: Ack(_fixed(_U64, p, "ack")),
    _PING: lambda p: Ping(_fixed(_F64, p, "ping")),
    _PONG: lambda p: Pong(_fixed(_F64, p, "pong")),
    _START: lambda p: Start(_parse_json(p, "start")),
    _READY: lambda p: Ready(_parse_json(p, "ready")),
    _INTERRUPT: _parse_empty(Interrupt(), "interrupt"),
    _SHUTDOWN: _parse_empty(Shutdown(), "shutdown"),
    _EXITED: lambda p: KernelExited(_fixed(_I32, p, "kernel-exited")),
    _ERROR: lambda p: ErrorReport(bytes(p).decode("utf-8", "replace")),
    _LOG: lambda p: LogLine(bytes(p).decode("utf-8", "replace")),
    _SKIP: _parse_skip,
}


class Connection:
    """One end of the stream: encodes what this side sends, decodes what the peer sends.

    Called by the proxy's and the agent's event loops: ``receive_data`` for every chunk read from the
    stream, then ``data_to_send`` to flush. The sequence state outlives a link: after a drop, call
    ``new_link``, exchange hellos, and ``resume`` with the peer's ``received`` count queues exactly the
    data frames the peer lacks. Until ``resume``, data frames are only kept (a link is not yet up).
    Sent data frames stay in ``unacked`` until the peer's cumulative ack covers them, up to
    ``max_buffer`` bytes, beyond which the oldest IOPub frames are dropped and reported to the peer.
    """

    def __init__(self, role: str, session: str = "", max_buffer: int = 256 * 1024 * 1024) -> None:
        self.role = role
        self.max_buffer = max_buffer
        self._scratch: Optional[bytearray] = None  # read_buffer's, made on first use
        self.reset_session(session)
        self.new_link()

    def reset_session(self, session: str) -> None:
        """Forget all sequence state: a new proxy, a new conversation."""
        self.session = session
        self.sent_seq = 0  # seq of the last data frame sent
        self.received_seq = 0  # seq of the last data frame received
        self.acked_received = 0  # last received seq we have acked to the peer
        self._bytes_since_ack = 0
        # (seq, size, pieces): a frame kept as the buffers it was made of, never joined (no copy).
        self.unacked: Deque[Tuple[int, int, Tuple[Any, ...]]] = deque()
        self._held: Dict[int, Tuple[int, int, Tuple[Any, ...]]] = {}  # the same entries, by seq
        self._droppable: Deque[bool] = deque()  # parallel to unacked
        self.unacked_bytes = 0
        self._drops: List[List[int]] = []  # runs [first_seq, last_seq, nbytes] dropped, not yet reported
        self.dropped_frames = 0
        self.dropped_bytes = 0

    def new_link(self) -> None:
        """A fresh byte stream: reset the decoder and the output, keep the sequence state."""
        self.peer_hello: Optional[Hello] = None
        self.resumed = False  # (agent) did the peer's hello continue our session?
        self.linked = False
        # What to write, in order: control frames as bytes, data frames as ranges of seqs that are
        # looked up in the replay buffer only when written, so a stalled link holds no copies and
        # frames dropped meanwhile become skips.
        self._out: Deque[Any] = deque()
        self._chunks: Deque["bytes | bytearray"] = deque()  # received, not yet parsed; the first from _offset
        self._offset = 0
        self.buffered_bytes = 0
        self._fill: Optional[bytearray] = None  # a large frame's own buffer, being read into
        self._filled = 0
        self._noise = 0
        self._magic_seen = False

    # -- sending ---------------------------------------------------------------------------
    def _frame(self, kind: int, payload: bytes = b"") -> bytes:
        if len(payload) + 1 > MAX_FRAME:
            raise LocalProtocolError("a message of %d bytes exceeds the %d-byte frame limit"
                                     % (len(payload), MAX_FRAME))
        return _HEADER.pack(len(payload) + 1, kind) + payload

    def send_hello(self, capabilities: Sequence[str] = ()) -> None:
        hello = {"version": PROTOCOL_VERSION, "role": self.role, "session": self.session,
                 "capabilities": list(capabilities), "received": self.received_seq}
        self._out.append(MAGIC + self._frame(_HELLO, _json_payload(hello)))

    def send_data(self, channel: str, frames: Sequence[Buffer]) -> int:
        """Queue one whole ZMQ message for ``channel``; returns its sequence number."""
        try:
            channel_id = CHANNELS.index(channel)
        except ValueError:
            raise LocalProtocolError("unknown channel %r" % (channel,)) from None
        seq = self.sent_seq + 1
        pieces: List[Any] = [b"", _DATA_HEAD.pack(channel_id, seq, len(frames))]
        size = _DATA_HEAD.size
        for part in frames:
            length = memoryview(part).nbytes
            pieces.append(_U32.pack(length))
            pieces.append(part)
            size += _U32.size + length
        if size + 1 > MAX_FRAME:  # refused before a seq is used up
            raise LocalProtocolError("a message of %d bytes exceeds the %d-byte frame limit"
                                     % (size, MAX_FRAME))
        pieces[0] = _HEADER.pack(size + 1, _DATA)
        self.sent_seq = seq
        entry = (seq, size + _HEADER.size, tuple(pieces))
        self.unacked.append(entry)
        self._held[seq] = entry
        self._droppable.append(channel in DROPPABLE)
        self.unacked_bytes += size + _HEADER.size
        if self.linked:
            last = self._out[-1] if self._out else None
            if isinstance(last, range) and last.stop == seq:
                self._out[-1] = range(last.start, seq + 1)
            else:
                self._out.append(range(seq, seq + 1))
        if self.unacked_bytes > self.max_buffer:
            self._drop_oldest_output()
        return seq

    def _drop_oldest_output(self) -> None:
        """Keep memory bounded: drop the oldest droppable frames until under ``max_buffer``."""
        index = 0
        while self.unacked_bytes > self.max_buffer and index < len(self.unacked):
            if not self._droppable[index]:
                index += 1
                continue
            seq, size, _ = self.unacked[index]
            del self.unacked[index]
            del self._held[seq]
            del self._droppable[index]
            self.unacked_bytes -= size
            if self._drops and self._drops[-1][1] == seq - 1:
                self._drops[-1][1] = seq
                self._drops[-1][2] += size
            else:
                self._drops.append([seq, seq, size])

    def _ack_due(self) -> bool:
        """True once enough data arrived that the peer should be allowed to free its copy."""
        return (self.received_seq - self.acked_received >= ACK_EVERY_FRAMES
                or self._bytes_since_ack >= ACK_EVERY_BYTES)

    def _send_ack(self) -> None:
        self.acked_received = self.received_seq
        self._bytes_since_ack = 0
        self._out.append(self._frame(_ACK, _U64.pack(self.received_seq)))

    def send_ping(self, now: float) -> None:
        self._out.append(self._frame(_PING, _F64.pack(now)))

    def _send_pong(self, timestamp: float) -> None:
        self._out.append(self._frame(_PONG, _F64.pack(timestamp)))

    def send_start(self, config: Dict[str, Any]) -> None:
        self._out.append(self._frame(_START, _json_payload(config)))

    def send_ready(self, info: Dict[str, Any]) -> None:
        self._out.append(self._frame(_READY, _json_payload(info)))

    def send_interrupt(self) -> None:
        self._out.append(self._frame(_INTERRUPT))

    def send_shutdown(self) -> None:
        self._out.append(self._frame(_SHUTDOWN))

    def send_kernel_exited(self, code: int) -> None:
        self._out.append(self._frame(_EXITED, _I32.pack(max(-2**31, min(code, 2**31 - 1)))))

    def send_error(self, sentence: str) -> None:
        self._out.append(self._frame(_ERROR, sentence.encode("utf-8")))

    def send_log(self, text: str) -> None:
        self._out.append(self._frame(_LOG, text.encode("utf-8", "replace")))

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
        out: List[Any] = []
        total = 0
        while self._out and (budget is None or total < budget):
            item = self._out.popleft()
            if not isinstance(item, range):
                out.append(item)
                continue
            seq = item.start
            while seq < item.stop and (budget is None or total < budget):
                entry = self._held.get(seq)
                if entry is None:  # dropped from the replay buffer before it was written
                    end = seq
                    while end + 1 < item.stop and end + 1 not in self._held:
                        end += 1
                    out.append(self._skip(seq, end))
                    seq = end + 1
                    continue
                out.extend(entry[2])
                total += entry[1]
                seq += 1
            if seq < item.stop:
                self._out.appendleft(range(seq, item.stop))
        return out

    def resume(self, peer_received: int) -> None:
        """The peer's hello arrived on this link: queue exactly what it lacks, then go live.

        Frames dropped from the replay buffer become skip frames, so the peer knows how much output
        it will never see instead of mistaking the gap for corruption.
        """
        if peer_received > self.sent_seq:
            raise RemoteProtocolError("the peer claims frame %d, but only %d were sent"
                                      % (peer_received, self.sent_seq))
        self._drop_acked(peer_received)
        if self.sent_seq > peer_received:
            self._out.append(range(peer_received + 1, self.sent_seq + 1))
        self.linked = True

    def _skip(self, first: int, last: int) -> bytes:
        """A skip frame for seqs first..last, which the peer will never get."""
        nbytes = 0
        for run_first, run_last, run_bytes in self._drops:
            low, high = max(first, run_first), min(last, run_last)
            if low <= high:  # a run the peer partly has: count its share (its frames are alike)
                nbytes += run_bytes * (high - low + 1) // (run_last - run_first + 1)
        self._drops = [run for run in self._drops if run[1] > last]
        self.dropped_frames += last - first + 1
        self.dropped_bytes += nbytes
        return self._frame(_SKIP, _SKIP_BODY.pack(last, last - first + 1, nbytes))

    def _drop_acked(self, seq: int) -> None:
        while self.unacked and self.unacked[0][0] <= seq:
            first, size, _ = self.unacked.popleft()
            del self._held[first]
            self._droppable.popleft()
            self.unacked_bytes -= size
        self._drops = [run for run in self._drops if run[1] > seq]

    # -- receiving -------------------------------------------------------------------------
    def receive_data(self, data: "bytes | bytearray") -> List[Event]:
        """Feed bytes read from the stream; returns the complete events they finish.

        Frames are cut from the received chunks without copying when they lie in one chunk, and
        with one join when they span several; data parts are views into them.
        """
        if data:
            self._chunks.append(data)
            self.buffered_bytes += len(data)
        events: List[Event] = []
        if not self._magic_seen and not self._find_magic(events):
            return events
        while self.buffered_bytes >= _HEADER.size:
            length, kind = _HEADER.unpack(self._peek(_HEADER.size))
            if length == 0 or length > MAX_FRAME:
                raise RemoteProtocolError(
                    "the peer announced a frame of %d bytes, outside the 1..%d-byte limit: "
                    "the stream is corrupt" % (length, MAX_FRAME))
            if self.buffered_bytes < 4 + length:
                break
            frame = self._take(4 + length)
            event = self._parse(kind, frame[_HEADER.size:])
            if isinstance(event, Ping):
                self._send_pong(event.timestamp)  # answered here, so neither end dispatches it
            else:
                events.append(event)
        if self._ack_due():
            self._send_ack()  # lets the peer free its replay copies; no owner needs to ask
        return events

    def read_buffer(self) -> memoryview:
        """Where the next read from the stream should go (``os.readv``), for ``received_into``:
        the rest of a large frame's own buffer once its header is in, else a scratch buffer."""
        if self._fill is None:
            size = self._frame_under_way()
            if size >= DIRECT_FRAME:
                fill = bytearray(size)
                at = 0
                for index, chunk in enumerate(self._chunks):
                    view = memoryview(chunk)[self._offset if index == 0 else 0:]
                    fill[at:at + len(view)] = view
                    at += len(view)
                self._chunks.clear()
                self._offset = 0
                self.buffered_bytes = 0
                self._fill, self._filled = fill, at
        if self._fill is not None:
            return memoryview(self._fill)[self._filled:]
        if self._scratch is None:
            self._scratch = bytearray(SCRATCH_SIZE)
        return memoryview(self._scratch)

    def received_into(self, nbytes: int) -> List[Event]:
        """``nbytes`` were read into the last ``read_buffer``: ``receive_data`` without a copy
        for large frames."""
        if self._fill is None:
            assert self._scratch is not None
            return self.receive_data(bytes(self._scratch[:nbytes]))
        self._filled += nbytes
        if self._filled < len(self._fill):
            return []
        whole, self._fill = self._fill, None
        return self.receive_data(whole)

    def _frame_under_way(self) -> int:
        """The size of the frame whose start is buffered but not its end, or 0."""
        if not self._magic_seen or self.buffered_bytes < _HEADER.size:
            return 0
        length, _ = _HEADER.unpack(self._peek(_HEADER.size))
        if 0 < length <= MAX_FRAME and self.buffered_bytes < 4 + length:
            return 4 + length
        return 0  # (a bad length is reported by receive_data)

    def _peek(self, count: int) -> "bytes | bytearray":
        first = self._chunks[0]
        if len(first) - self._offset < count:
            self._coalesce()
            first = self._chunks[0]
        return first[self._offset:self._offset + count]

    def _coalesce(self) -> None:
        """All buffered chunks into one (rare: only a header split across reads needs it)."""
        parts: List[Any] = [memoryview(self._chunks[0])[self._offset:]]
        parts.extend(list(self._chunks)[1:])
        joined = b"".join(parts)
        self._chunks = deque([joined])
        self._offset = 0

    def _take(self, count: int) -> memoryview:
        first = self._chunks[0]
        if len(first) - self._offset >= count:
            view = memoryview(first)[self._offset:self._offset + count]
            self._offset += count
            if self._offset == len(first):
                self._chunks.popleft()
                self._offset = 0
        else:
            parts: List[Any] = [memoryview(first)[self._offset:]]
            got = len(first) - self._offset
            self._chunks.popleft()
            self._offset = 0
            while got < count:
                chunk = self._chunks[0]
                if len(chunk) <= count - got:
                    parts.append(chunk)
                    got += len(chunk)
                    self._chunks.popleft()
                else:
                    self._offset = count - got
                    parts.append(memoryview(chunk)[:self._offset])
                    got = count
            view = memoryview(b"".join(parts))
        self.buffered_bytes -= count
        return view

    def _find_magic(self, events: List[Event]) -> bool:
        if not self._chunks:
            return False
        self._coalesce()  # before the hello only: a banner is small
        buffer = self._chunks[0]
        at = buffer.find(MAGIC)
        if at < 0:
            # Keep a tail that may be the start of MAGIC; report the rest as noise.
            keep = len(MAGIC) - 1
            if len(buffer) > keep:
                self._report_noise(events, buffer[:len(buffer) - keep])
                self._take(len(buffer) - keep)
            return False
        if at:
            self._report_noise(events, buffer[:at])
        self._take(at + len(MAGIC))
        self._magic_seen = True
        return True

    def _report_noise(self, events: List[Event], noise: "bytes | bytearray") -> None:
        self._noise += len(noise)
        if self._noise > MAX_NOISE:
            raise RemoteProtocolError(
                "the peer sent more than %d bytes before the protocol hello: it is not a proxykernel "
                "agent, or something on the remote prints to its output" % MAX_NOISE)
        events.append(Noise(bytes(noise)))

    def _parse(self, kind: int, payload: Buffer) -> Event:
        if self.peer_hello is None:
            if kind != _HELLO:
                raise RemoteProtocolError("the peer sent frame type %d before its hello" % kind)
            self.peer_hello = _parse_hello(payload, "remote agent" if self.role == "proxy" else "proxy")
            if self.role == "agent":
                # A hello from another proxy starts a new conversation. Reset here, before the
                # frames that follow it in the same chunk are counted.
                self.resumed = bool(self.session) and self.peer_hello.session == self.session
                if not self.resumed:
                    self.reset_session(self.peer_hello.session)
            return self.peer_hello
        if kind == _HELLO:
            raise RemoteProtocolError("the peer sent a second hello on the same stream")
        parser = _PARSERS.get(kind)
        if parser is None:
            raise RemoteProtocolError("the peer sent unknown frame type %d" % kind)
        event = parser(payload)
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
            self._drop_acked(event.seq)
        return event


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


# -- peeking into Jupyter messages (relayed opaquely otherwise) --------------------------------
def message_part(frames: Sequence[Buffer], index: int) -> bytes:
    """Part ``index`` after the ``<IDS|MSG>`` delimiter (0 = signature, 1 = header, 4 = content)."""
    for at, part in enumerate(frames):
        if part == b"<IDS|MSG>":
            return bytes(frames[at + 1 + index]) if at + 1 + index < len(frames) else b""
    return b""


def is_welcome(frames: Sequence[Buffer]) -> bool:
    """An IOPub ``iopub_welcome``: the kernel's answer to the agent's own subscription."""
    header = message_part(frames, 1)
    return len(header) < 1024 and b'"iopub_welcome"' in header


def restart_requested(frames: Sequence[Buffer]) -> Optional[bool]:
    """For a message on control: None unless it is a shutdown_request; then, does it ask for a restart?"""
    header = message_part(frames, 1)
    if b'"shutdown_request"' not in header:
        return None
    try:
        return bool(json.loads(message_part(frames, 4).decode("utf-8")).get("restart"))
    except (ValueError, AttributeError, RecursionError):
        return False
