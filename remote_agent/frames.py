"""The stream protocol's frame format: its limits, its error tree, its events, and how each frame type
is encoded and parsed. No state: ``wire.Connection`` calls these as it sends and receives (and ``wire``
re-exports the public names, so callers say ``wire.Hello``). Frame type numbers are fixed: agents
cached on remote hosts speak them, so renumbering needs a ``PROTOCOL_VERSION`` bump.

Stream layout, in each direction::

    [noise] MAGIC HELLO-frame frame frame ...
    frame = length:u32be  type:u8  payload[length-1]

Runs on Python >= 3.8 (the remote side): no newer syntax, stdlib only.
"""
from __future__ import annotations

import enum
import json
import struct
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Sequence, Tuple, Union

__all__ = [
    "PROTOCOL_VERSION", "MAGIC", "MAX_FRAME", "MAX_NOISE", "CHANNELS", "DROPPABLE", "ACK_EVERY_FRAMES",
    "ACK_EVERY_BYTES", "HEADER", "Kind",
    "ProtocolError", "LocalProtocolError", "RemoteProtocolError", "VersionMismatch",
    "Hello", "ChannelData", "Ack", "Ping", "Pong", "Start", "Ready", "Interrupt", "Shutdown",
    "KernelExited", "ErrorReport", "LogLine", "Skipped", "Noise", "Event", "Buffer",
    "read_header", "parse_hello", "parse", "encode", "encode_data", "data_message", "encode_hello", "encode_json",
    "encode_ack", "encode_time", "encode_exit_code", "encode_text", "encode_skip",
]

PROTOCOL_VERSION = 1
MAGIC = b"\x89PXK\r\n\x1a\n"  # PNG-style: a high byte, CR LF and ^Z catch text-mode mangling
# Far above one Jupyter message a frontend accepts (tornado's websocket default is 10 MiB), small
# enough that a garbage length is caught before we allocate it.
MAX_FRAME = 256 * 1024 * 1024
# Noise kept while looking for MAGIC: a banner is a few kB; beyond this the peer is not an agent.
MAX_NOISE = 64 * 1024
CHANNELS = ("shell", "control", "stdin", "iopub", "hb")
# Acks are cumulative and batched: often enough that the sender's replay buffer stays small.
ACK_EVERY_FRAMES = 128
ACK_EVERY_BYTES = 4 * 1024 * 1024

HEADER = struct.Struct(">IB")  # length (counting the type byte), type
_DATA_HEAD = struct.Struct(">BQI")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_F64 = struct.Struct(">d")
_I32 = struct.Struct(">i")

_SKIP_BODY = struct.Struct(">QQQ")
# Output the sender may drop when its replay buffer is full; replies are never dropped.
DROPPABLE = frozenset(["iopub"])


class Kind(enum.IntEnum):
    """The frame types, as numbered on the wire."""
    HELLO = 1
    DATA = 2
    ACK = 3
    PING = 4
    PONG = 5
    START = 6
    READY = 7
    INTERRUPT = 8
    SHUTDOWN = 9
    EXITED = 10
    ERROR = 11
    LOG = 12
    SKIP = 13


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
    """Each side's first frame on a stream: who it is, its session, and how much it has received (for resume)."""
    version: int
    role: str
    session: str
    capabilities: Tuple[str, ...] = ()
    received: int = 0  # last data seq this side has received (for resume)


@dataclass(frozen=True)
class ChannelData:
    """One whole ZMQ message on a kernel channel, numbered for acks and replay."""
    channel: str
    seq: int
    frames: Tuple["Buffer", ...]


@dataclass(frozen=True)
class Ack:
    """The peer has everything up to ``seq``: free the replay copies."""
    seq: int


@dataclass(frozen=True)
class Ping:
    """A heartbeat; the receiving Connection answers it with a Pong itself."""
    timestamp: float


@dataclass(frozen=True)
class Pong:
    """The answer to our Ping, echoing its timestamp (round-trip time)."""
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
    """Proxy -> agent: send SIGINT to the kernel."""


@dataclass(frozen=True)
class Shutdown:
    """Proxy -> agent: stop the kernel and exit."""


@dataclass(frozen=True)
class KernelExited:
    """Agent -> proxy: the kernel process ended with ``code``."""
    code: int


@dataclass(frozen=True)
class ErrorReport:
    """The peer gives up, with a sentence for the user."""
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
    """Bytes before the protocol's magic (a login banner, a stray print), skipped and reported."""
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


def read_header(header: "bytes | bytearray | memoryview") -> Tuple[int, int]:
    """(length, type) of the frame whose ``HEADER`` this is; a length outside 1..MAX_FRAME means
    the stream is corrupt (refused before anything is allocated for it)."""
    length, kind = HEADER.unpack(header)
    if length == 0 or length > MAX_FRAME:
        raise RemoteProtocolError(
            "the peer announced a frame of %d bytes, outside the 1..%d-byte limit: "
            "the stream is corrupt" % (length, MAX_FRAME))
    return length, kind


def parse_hello(payload: Buffer, peer: str) -> Hello:
    """The peer's hello (``peer`` names it in a version mismatch's sentence)."""
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


def _fixed(fmt: struct.Struct, payload: Buffer, what: str) -> Any:
    if len(payload) != fmt.size:
        raise RemoteProtocolError("the peer sent a %s frame of the wrong size" % what)
    return fmt.unpack(payload)[0]


def _parse_skip(payload: Buffer) -> Skipped:
    if len(payload) != _SKIP_BODY.size:
        raise RemoteProtocolError("the peer sent a skip frame of the wrong size")
    return Skipped(*_SKIP_BODY.unpack(payload))


def _parse_empty(event: Event, what: str) -> Callable[[Buffer], Event]:
    def parse(payload: Buffer) -> Event:
        if payload:
            raise RemoteProtocolError("the peer sent a %s frame with a payload" % what)
        return event
    return parse


# One table from frame type to parser: the whole receive side's dispatch (the hello aside).
_PARSERS: Dict[int, Callable[[Buffer], Event]] = {
    Kind.DATA: _parse_data,
    Kind.ACK: lambda p: Ack(_fixed(_U64, p, "ack")),
    Kind.PING: lambda p: Ping(_fixed(_F64, p, "ping")),
    Kind.PONG: lambda p: Pong(_fixed(_F64, p, "pong")),
    Kind.START: lambda p: Start(_parse_json(p, "start")),
    Kind.READY: lambda p: Ready(_parse_json(p, "ready")),
    Kind.INTERRUPT: _parse_empty(Interrupt(), "interrupt"),
    Kind.SHUTDOWN: _parse_empty(Shutdown(), "shutdown"),
    Kind.EXITED: lambda p: KernelExited(_fixed(_I32, p, "kernel-exited")),
    Kind.ERROR: lambda p: ErrorReport(bytes(p).decode("utf-8", "replace")),
    Kind.LOG: lambda p: LogLine(bytes(p).decode("utf-8", "replace")),
    Kind.SKIP: _parse_skip,
}


def parse(kind: int, payload: Buffer) -> Event:
    """The event a frame after the hello carries."""
    if kind == Kind.HELLO:
        raise RemoteProtocolError("the peer sent a second hello on the same stream")
    parser = _PARSERS.get(kind)
    if parser is None:
        raise RemoteProtocolError("the peer sent unknown frame type %d" % kind)
    return parser(payload)


# -- encoding (wire.Connection's send_* methods) -------------------------------------------------
def encode(kind: int, payload: bytes = b"") -> bytes:
    """One frame, header and payload."""
    if len(payload) + 1 > MAX_FRAME:
        raise LocalProtocolError("a message of %d bytes exceeds the %d-byte frame limit"
                                 % (len(payload), MAX_FRAME))
    return HEADER.pack(len(payload) + 1, kind) + payload


def encode_data(channel: str, seq: int, frames: Sequence[Buffer]) -> Tuple[int, Tuple[Any, ...]]:
    """A data frame as (its size, the pieces it is made of): its header, then each part's length and
    the part itself, never joined, so the parts go out as the buffers they came in."""
    try:
        channel_id = CHANNELS.index(channel)
    except ValueError:
        raise LocalProtocolError("unknown channel %r" % (channel,)) from None
    pieces: List[Any] = [b"", _DATA_HEAD.pack(channel_id, seq, len(frames))]
    size = _DATA_HEAD.size
    for part in frames:
        length = memoryview(part).nbytes
        pieces.append(_U32.pack(length))
        pieces.append(part)
        size += _U32.size + length
    if size + 1 > MAX_FRAME:
        raise LocalProtocolError("a message of %d bytes exceeds the %d-byte frame limit" % (size, MAX_FRAME))
    pieces[0] = HEADER.pack(size + 1, Kind.DATA)
    return size + HEADER.size, tuple(pieces)


def data_message(pieces: Tuple[Any, ...]) -> Tuple[str, List[Any]]:
    """The channel and parts of a data frame that ``encode_data`` made (a replay buffer's entry),
    for the agent to send them again in a new session (a reattach)."""
    channel_id, _, _ = _DATA_HEAD.unpack(pieces[1])
    return CHANNELS[channel_id], list(pieces[3::2])


def encode_hello(role: str, session: str, capabilities: Sequence[str], received: int) -> bytes:
    """MAGIC and the hello: what every stream starts with."""
    hello = {"version": PROTOCOL_VERSION, "role": role, "session": session,
             "capabilities": list(capabilities), "received": received}
    return MAGIC + encode(Kind.HELLO, _json_payload(hello))


def encode_json(kind: int, obj: Dict[str, Any]) -> bytes:
    return encode(kind, _json_payload(obj))


def encode_ack(seq: int) -> bytes:
    return encode(Kind.ACK, _U64.pack(seq))


def encode_time(kind: int, timestamp: float) -> bytes:
    """A ping or a pong."""
    return encode(kind, _F64.pack(timestamp))


def encode_exit_code(code: int) -> bytes:
    return encode(Kind.EXITED, _I32.pack(max(-2**31, min(code, 2**31 - 1))))


def encode_text(kind: int, text: str) -> bytes:
    """An error's sentence or a log line."""
    return encode(kind, text.encode("utf-8", "replace"))


def encode_skip(last: int, count: int, nbytes: int) -> bytes:
    """Frames up to ``last`` (``count`` of them, ``nbytes`` bytes) were dropped: the peer never gets them."""
    return encode(Kind.SKIP, _SKIP_BODY.pack(last, count, nbytes))
