"""Pure protocol tests for ``remote_agent.wire``: bytes in, events out, no sockets, no clock.

Frame type numbers are pinned here on purpose: renumbering them breaks agents already cached on remote
hosts, so it must come with a ``PROTOCOL_VERSION`` bump and a change to this file.
"""
from __future__ import annotations

import json
import struct
from typing import Iterable, List, Optional, Sequence, Tuple

import pytest
from hypothesis import given, settings, strategies as st

from remote_agent import buffers, frames as codec, wire

HELLO, DATA, ACK, START, INTERRUPT = 1, 2, 3, 6, 8
HEADER = 5  # u32 length + u8 type; the length counts the type byte
MODEST = settings(max_examples=200, deadline=None, database=None)
CUTS = st.lists(st.integers(min_value=0, max_value=1 << 20), max_size=12)
MESSAGES = st.lists(st.tuples(st.sampled_from(wire.CHANNELS),
                              st.lists(st.binary(max_size=40), max_size=6)), max_size=12)
BIG_PART = bytes(range(256)) * 4096  # 1 MiB
CONFIG = {"argv": ["python", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
          "env": {"LANG": "C.UTF-8"}, "key": "0f1e2d3c", "signature_scheme": "hmac-sha256"}
SENTENCE = "le noyau « python3 » n'a pas démarré: ✗ no such file — 内核"


# -- helpers ---------------------------------------------------------------------------------
def frame(kind: int, payload: bytes = b"") -> bytes:
    """One raw frame, built by hand so tests do not trust the encoder they check."""
    return struct.pack(">IB", len(payload) + 1, kind) + payload


def data_payload(channel_id: int, seq: int, count: int, body: bytes = b"") -> bytes:
    return struct.pack(">BQI", channel_id, seq, count) + body


def part(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def hello_bytes(role: wire.Role = wire.Role.PROXY) -> bytes:
    conn = wire.Connection(role)
    conn.send_hello()
    return conn.data_to_send()


def split(data: bytes, cuts: Iterable[int]) -> List[bytes]:
    """``data`` cut at ``cuts`` (taken modulo its length + 1); the pieces always join back to it."""
    points = sorted({cut % (len(data) + 1) for cut in cuts})
    return [data[a:b] for a, b in zip([0] + points, points + [len(data)])]


def decode(chunks: Iterable[bytes], conn: Optional[wire.Connection] = None) -> List[wire.Event]:
    conn = wire.Connection(wire.Role.AGENT) if conn is None else conn
    events: List[wire.Event] = []
    for chunk in chunks:
        events.extend(conn.receive_data(chunk))
    return events


def receiver() -> wire.Connection:
    """An agent-side Connection that has already accepted a proxy's hello."""
    conn = wire.Connection(wire.Role.AGENT)
    assert [type(e) for e in conn.receive_data(hello_bytes())] == [wire.Hello]
    return conn


def seqs(conn: wire.Connection) -> List[int]:
    """The unacked seqs, after checking ``unacked_bytes`` agrees with the frames held."""
    assert conn.replay.unacked_bytes == sum(len(joined(pieces)) for _, _, pieces in conn.unacked)
    assert all(size == len(joined(pieces)) for _, size, pieces in conn.unacked)
    return [seq for seq, _, _ in conn.unacked]


def joined(pieces: Sequence[bytes]) -> bytes:
    return b"".join(pieces)


def data_cases(big: bool) -> List[Tuple[str, Tuple[bytes, ...]]]:
    cases = [(ch, (b"id", b"<IDS|MSG>", b"sig", b"{}", b"{}", b"{}", b"{}")) for ch in wire.CHANNELS]
    cases += [("shell", ()), ("iopub", (b"",)), ("control", (b"", b"", b"")),
              ("stdin", tuple(b"%d" % i for i in range(100)))]
    if big:
        cases.append(("iopub", (b"head", BIG_PART, b"tail")))
    return cases


def send_everything(sender: wire.Connection, big: bool) -> List[wire.Event]:
    """Queue one of every message on ``sender``; return the events its peer must decode, in order."""
    sender.send_hello(capabilities=["resume"])
    sender.resume(0)  # as when the peer's hello says it has nothing yet
    expected: List[wire.Event] = [wire.Hello(wire.PROTOCOL_VERSION, "proxy", "s-1", ("resume",), 0)]
    for channel, parts in data_cases(big):
        expected.append(wire.ChannelData(channel, sender.send_data(channel, parts), parts))
    # (A ping is no event: the receiving Connection answers it itself.)
    controls = [("send_ack", (), wire.Ack(0)), ("send_ping", (12.5,), None),
                ("_send_pong", (-0.25,), wire.Pong(-0.25)), ("send_start", (CONFIG,), wire.Start(CONFIG)),
                ("send_ready", ({"pid": 4242},), wire.Ready({"pid": 4242})),
                ("send_interrupt", (), wire.Interrupt()), ("send_shutdown", (), wire.Shutdown()),
                ("send_kernel_exited", (-9,), wire.KernelExited(-9)),
                ("send_kernel_exited", (2 ** 31 - 1,), wire.KernelExited(2 ** 31 - 1)),
                ("send_error", (SENTENCE,), wire.ErrorReport(SENTENCE))]
    for method, args, event in controls:
        getattr(sender, method)(*args)
        if event is not None:
            expected.append(event)
    return expected


def encoded(big: bool) -> Tuple[bytes, List[wire.Event]]:
    sender = wire.Connection(wire.Role.PROXY, session="s-1")
    expected = send_everything(sender, big)
    return sender.data_to_send(), expected


STREAM, EXPECTED = encoded(big=False)


# -- round trips and splitting ----------------------------------------------------------------
@pytest.mark.parametrize("big", [False, True], ids=["small", "1MiB-part"])
def test_every_message_round_trips_in_order(big: bool) -> None:
    data, expected = encoded(big)
    events = decode([data])
    assert events == expected
    data_seqs = [e.seq for e in events if isinstance(e, wire.ChannelData)]
    assert data_seqs == list(range(1, len(data_cases(big)) + 1))


def test_every_two_chunk_split_decodes_like_the_whole_stream() -> None:
    bad = [at for at in range(len(STREAM) + 1) if decode([STREAM[:at], STREAM[at:]]) != EXPECTED]
    assert bad == []


def test_one_byte_at_a_time_decodes_like_the_whole_stream() -> None:
    assert decode(STREAM[i:i + 1] for i in range(len(STREAM))) == EXPECTED


def read_into(conn: wire.Connection, data: bytes, sizes: Iterable[int]) -> List[wire.Event]:
    """Feed ``data`` as reads into ``read_buffer`` would come, each at most the next of ``sizes``."""
    events: List[wire.Event] = []
    at, sizes = 0, iter(sizes)
    while at < len(data):
        buffer = conn.read_buffer()
        count = min(len(buffer), next(sizes), len(data) - at)
        buffer[:count] = data[at:at + count]
        at += count
        events.extend(conn.received_into(count))
    return events


@pytest.mark.parametrize("read", [1, 7, 4096, 65536, 1 << 22], ids=lambda n: "reads-of-%d" % n)
def test_reads_into_read_buffer_decode_like_the_whole_stream(read: int) -> None:
    data, expected = encoded(big=True)
    events = read_into(wire.Connection(wire.Role.AGENT), data, iter(lambda: read, None))
    assert events == expected


def test_a_large_frame_is_read_into_one_buffer_of_its_own_size() -> None:
    sender = wire.Connection(wire.Role.PROXY, session="s-1")
    sender.send_hello()
    sender.resume(0)
    body = bytes(range(256)) * (3 * buffers.DIRECT_FRAME // 256)
    sender.send_data("iopub", [b"head", body, b"tail"])
    sender.send_data("iopub", [b"small"])
    conn = wire.Connection(wire.Role.AGENT)
    events = read_into(conn, sender.data_to_send(), iter(lambda: 50000, None))
    data = [e for e in events if isinstance(e, wire.ChannelData)]
    assert [[bytes(p) for p in e.frames] for e in data] == [[b"head", body, b"tail"], [b"small"]]
    big = data[0].frames[1]
    assert isinstance(big, memoryview) and isinstance(big.obj, bytearray)  # a view, never joined
    assert len(big.obj) < len(body) + 64  # the frame's own buffer: the body and its few headers


def test_hello_split_just_after_magic_still_parses() -> None:
    # Regression: once MAGIC was consumed, a hello still incomplete at the end of a chunk must not be
    # searched for MAGIC again (it was reported as noise and lost).
    hello = hello_bytes()
    at = len(wire.MAGIC) + 2
    events = decode([hello[:at], hello[at:]])
    assert [type(e) for e in events] == [wire.Hello]


# -- noise before the hello -------------------------------------------------------------------
@pytest.mark.parametrize("noise", [
    b"", b"Welcome\r\n", b"Last login: Mon\r\n" + wire.MAGIC[:5] + b" motd\r\n", wire.MAGIC[:7],
    b"\x89" * 20, b"ok" + wire.MAGIC[:-1],
], ids=["none", "banner", "partial-magic-inside", "magic-minus-one", "high-bytes", "magic-minus-one-end"])
@pytest.mark.parametrize("noise_bytewise", [False, True], ids=["whole", "noise-bytewise"])
def test_noise_before_magic_is_reported_exactly(noise: bytes, noise_bytewise: bool) -> None:
    chunks = [noise[i:i + 1] for i in range(len(noise))] if noise_bytewise else [noise]
    events = decode(chunks + [hello_bytes()])
    assert b"".join(e.data for e in events if isinstance(e, wire.Noise)) == noise
    assert [type(e) for e in events if not isinstance(e, wire.Noise)] == [wire.Hello]


@pytest.mark.parametrize("extra, ok", [(0, True), (1, False)])
def test_noise_is_limited_to_max_noise(extra: int, ok: bool) -> None:
    data = b"x" * (wire.MAX_NOISE + extra) + hello_bytes()
    if ok:
        assert isinstance(decode([data])[-1], wire.Hello)
    else:
        with pytest.raises(wire.RemoteProtocolError, match="before the protocol hello"):
            decode([data])


def test_noise_without_magic_overflows_even_in_small_chunks() -> None:
    with pytest.raises(wire.RemoteProtocolError, match="not a proxykernel agent"):
        decode([b"motd line\n"] * (wire.MAX_NOISE // 10 + 2))


@pytest.mark.parametrize("garbage", [b"Welcome\r\n", hello_bytes(), b"\x00" * HEADER])
def test_garbage_after_the_hello_is_not_noise(garbage: bytes) -> None:
    with pytest.raises(wire.RemoteProtocolError, match="the stream is corrupt"):
        receiver().receive_data(garbage)


# -- malformed input ----------------------------------------------------------------------------
@pytest.mark.parametrize("length", [0, wire.MAX_FRAME + 1, 2 ** 32 - 1])
def test_bad_frame_length_fails_on_the_header_alone(length: int) -> None:
    conn = receiver()
    with pytest.raises(wire.RemoteProtocolError, match="outside the 1..%d-byte limit" % wire.MAX_FRAME):
        conn.receive_data(struct.pack(">IB", length, DATA))


def test_max_frame_length_header_is_accepted_and_waits_for_the_body() -> None:
    assert receiver().receive_data(struct.pack(">IB", wire.MAX_FRAME, DATA)) == []


@pytest.mark.parametrize("raw, phrase", [
    (frame(200), "unknown frame type 200"),
    (frame(HELLO, b"{}"), "second hello"),
    (frame(DATA, data_payload(len(wire.CHANNELS), 1, 0)), "unknown channel 5"),
    (frame(DATA, b"\x00\x00"), "truncated data frame"),
    (frame(DATA, data_payload(0, 1, 2, part(b"abc") + struct.pack(">I", 10) + b"xy")), "overrun"),
    (frame(DATA, data_payload(0, 1, 1, part(b"a") + b"zz")), "trailing bytes"),
    (frame(DATA, data_payload(0, 1, 1000)), "impossible part count"),
    (frame(DATA, data_payload(0, 2, 0)), "data frame 2 after 0: frames were lost"),
    (frame(DATA, data_payload(0, 1, 0)) * 2, "data frame 1 after 1"),
    (frame(ACK, b"\x00" * 3), "ack frame of the wrong size"),
    (frame(INTERRUPT, b"x"), "interrupt frame with a payload"),
    (frame(START, b"[1, 2]"), "start frame that is not a JSON object"),
    (frame(START, b"\xff{"), "start frame that is not valid JSON"),
], ids=["unknown-type", "second-hello", "unknown-channel", "truncated-head", "truncated-parts",
        "trailing", "impossible-count", "seq-gap", "seq-repeat", "ack-size", "interrupt-payload",
        "start-not-object", "start-not-utf8"])
def test_malformed_frame_after_hello_raises(raw: bytes, phrase: str) -> None:
    with pytest.raises(wire.RemoteProtocolError, match=phrase):
        receiver().receive_data(raw)


def test_first_frame_must_be_the_hello() -> None:
    with pytest.raises(wire.RemoteProtocolError, match="frame type 4 before its hello"):
        decode([wire.MAGIC + frame(4, struct.pack(">d", 1.0))])


@pytest.mark.parametrize("payload, phrase", [
    (b"not json", "not valid JSON"), (b"\xff\xfe", "not valid JSON"), (b"[1]", "not a JSON object"),
    (b'{"role": "agent"}', "no protocol version"), (b'{"version": "1"}', "no protocol version"),
    (b'{"version": 1, "capabilities": "resume"}', "malformed hello"),
    (b'{"version": 1, "capabilities": [1]}', "malformed hello"),
    (b'{"version": 1, "received": -1}', "malformed hello"),
])
def test_malformed_hello_raises(payload: bytes, phrase: str) -> None:
    with pytest.raises(wire.RemoteProtocolError, match=phrase):
        decode([wire.MAGIC + frame(HELLO, payload)])


def test_other_protocol_version_names_both_versions() -> None:
    theirs = wire.PROTOCOL_VERSION + 1
    payload = json.dumps({"version": theirs, "role": "agent"}).encode()
    with pytest.raises(wire.VersionMismatch) as info:
        decode([wire.MAGIC + frame(HELLO, payload)])
    assert isinstance(info.value, wire.RemoteProtocolError)
    assert "version %d" % theirs in str(info.value)
    assert "version %d" % wire.PROTOCOL_VERSION in str(info.value)


@pytest.mark.parametrize("in_hello", [True, False], ids=["hello", "start"])
def test_deeply_nested_json_is_a_protocol_error(in_hello: bool) -> None:
    # Regression (found by this suite): _parse_json catches only UnicodeDecodeError/ValueError, but json.loads raises
    # RecursionError on deeply nested input, so a peer escapes the exception tree with 100 kB of "[".
    nested = b"[" * 100_000
    conn = wire.Connection(wire.Role.AGENT) if in_hello else receiver()
    raw = wire.MAGIC + frame(HELLO, nested) if in_hello else frame(START, nested)
    with pytest.raises(wire.RemoteProtocolError, match="not valid JSON"):
        conn.receive_data(raw)


# -- local errors -----------------------------------------------------------------------------
def test_sending_on_an_unknown_channel_is_a_local_error() -> None:
    conn = wire.Connection(wire.Role.PROXY)
    with pytest.raises(wire.LocalProtocolError, match="unknown channel 'heartbeat'"):
        conn.send_data("heartbeat", [b"x"])
    assert conn.sent_seq == 0 and not conn.unacked and conn.data_to_send() == b""


def test_oversized_message_is_refused_without_burning_a_seq(monkeypatch: pytest.MonkeyPatch) -> None:
    # Regression (found by this suite): send_data increments sent_seq before _frame raises LocalProtocolError, so the
    # next message goes out as seq 2 and the peer resets the link with "frames were lost".
    sender = wire.Connection(wire.Role.PROXY)
    sender.send_hello()
    sender.resume(0)
    monkeypatch.setattr(codec, "MAX_FRAME", 128)
    with pytest.raises(wire.LocalProtocolError, match="exceeds the 128-byte frame limit"):
        sender.send_data("shell", [b"x" * 200])
    assert sender.send_data("shell", [b"ok"]) == 1
    assert decode([sender.data_to_send()])[1:] == [wire.ChannelData("shell", 1, (b"ok",))]


# -- acks and resume --------------------------------------------------------------------------
def sent_frames(sender: wire.Connection, count: int) -> List[bytes]:
    """Send ``count`` data messages, flushing each, and return each one's bytes on the wire."""
    out = []
    for i in range(count):
        sender.send_data(wire.CHANNELS[i % len(wire.CHANNELS)], [b"msg", b"%d" % i])
        out.append(sender.data_to_send())
    return out


def test_unacked_holds_data_until_an_ack_covers_it() -> None:
    proxy, agent = wire.Connection(wire.Role.PROXY), wire.Connection(wire.Role.AGENT)
    proxy.send_hello()
    proxy.resume(0)
    agent.send_hello()
    agent.resume(0)
    agent.receive_data(proxy.data_to_send())
    proxy.receive_data(agent.data_to_send())
    frames = sent_frames(proxy, 3)
    proxy.send_ping(1.0)  # control frames are never held for resend
    proxy.data_to_send()
    assert seqs(proxy) == [1, 2, 3] and proxy.replay.unacked_bytes == sum(map(len, frames))
    for upto, left in [(2, [3]), (2, [3]), (3, [])]:  # the repeated ack must change nothing
        agent.receive_data(b"".join(frames[agent.received_seq:upto]))
        agent.send_ack()
        assert proxy.receive_data(agent.data_to_send()) == [wire.Ack(upto)]
        assert seqs(proxy) == left and [joined(p) for _, _, p in proxy.unacked] == frames[upto:]
    assert proxy.replay.unacked_bytes == 0


@pytest.mark.parametrize("peer_received", range(6))
def test_resend_after_a_drop_delivers_each_message_once(peer_received: int) -> None:
    sender = wire.Connection(wire.Role.PROXY, session="s-1")  # the agent resumes only the same session
    sender.send_hello()
    sender.resume(0)
    hello = sender.data_to_send()
    frames = sent_frames(sender, 5)
    peer = wire.Connection(wire.Role.AGENT)  # the link drops after the peer got `peer_received` frames
    before = decode([hello] + frames[:peer_received], peer)[1:]
    assert peer.received_seq == peer_received

    sender.new_link()
    peer.new_link()  # both keep their sequence state across links
    sender.send_hello()
    sender.resume(peer.received_seq)
    assert seqs(sender) == list(range(peer_received + 1, 6))
    after = decode([sender.data_to_send()], peer)
    assert isinstance(after[0], wire.Hello)
    got = before + after[1:]
    assert got == [wire.ChannelData(wire.CHANNELS[i % 5], i + 1, (b"msg", b"%d" % i)) for i in range(5)]


def test_data_waits_for_the_peers_hello() -> None:
    sender = wire.Connection(wire.Role.PROXY)
    sender.send_hello()
    sender.send_data("shell", [b"early"])
    held = decode([sender.data_to_send()])
    assert [type(e) for e in held] == [wire.Hello]  # nothing before resume: the peer may lack more
    sender.resume(0)
    assert decode([hello_bytes(), sender.data_to_send()])[1:] == [wire.ChannelData("shell", 1, (b"early",))]


def test_overflow_drops_oldest_output_never_replies_and_reports_the_gap() -> None:
    sender = wire.Connection(wire.Role.AGENT, max_buffer=3000)
    sender.send_hello()  # no resume: the link is down, everything is kept for later
    sizes = {}
    for i in range(10):
        channel = "shell" if i == 2 else "iopub"
        sender.send_data(channel, [b"x" * 500])
        sizes[i + 1] = sender.unacked[-1][1]
    assert sender.replay.unacked_bytes <= 3000
    kept = seqs(sender)
    assert 3 in kept and kept[-1] == 10  # the shell reply survives; the newest output too
    peer = wire.Connection(wire.Role.PROXY)
    sender.new_link()
    sender.send_hello()
    sender.resume(0)
    events = decode([sender.data_to_send()], peer)[1:]
    skipped = [e for e in events if isinstance(e, wire.Skipped)]
    delivered = [e.seq for e in events if isinstance(e, wire.ChannelData)]
    assert delivered == kept
    assert sum(e.frames for e in skipped) == 10 - len(kept)
    assert sum(e.nbytes for e in skipped) == sum(sizes[i] for i in sizes if i not in kept)
    assert peer.received_seq == 10 and sender.replay.dropped_frames == 10 - len(kept)


def test_inconsistent_skip_is_a_protocol_error() -> None:
    with pytest.raises(wire.RemoteProtocolError, match="inconsistent skip"):
        receiver().receive_data(frame(13, struct.pack(">QQQ", 5, 2, 0)))


def test_resume_refuses_a_peer_ahead_of_us() -> None:
    sender = wire.Connection(wire.Role.PROXY)
    with pytest.raises(wire.RemoteProtocolError, match="claims frame 3"):
        sender.resume(3)


def test_heartbeat_pings_then_declares_a_silent_link_dead() -> None:
    beat = wire.Heartbeat(interval=1.0, timeout=5.0, now=100.0)
    assert beat.poll(100.5) is None
    assert beat.poll(101.0) is wire.Beat.PING
    assert beat.poll(101.5) is None
    beat.heard(104.0)
    assert beat.poll(108.9) is wire.Beat.PING
    assert beat.poll(109.1) is wire.Beat.DEAD
    beat.pong(108.9, now=109.0)
    assert beat.rtt == pytest.approx(0.1)


# -- properties ---------------------------------------------------------------------------------
def feed_until_error(conn: wire.Connection, chunks: Sequence[bytes], bound: Optional[int] = None) -> None:
    """Feed ``chunks``; stop at the first ProtocolError. Any other exception fails the test."""
    for chunk in chunks:
        try:
            conn.receive_data(chunk)
        except wire.ProtocolError:
            return
        if bound is not None:
            assert conn.buffered_bytes <= bound


@pytest.mark.parametrize("prefix", [b"", hello_bytes()], ids=["from-start", "after-hello"])
@MODEST
@given(data=st.binary(max_size=2000), cuts=CUTS)
def test_arbitrary_bytes_raise_only_protocol_errors(prefix: bytes, data: bytes, cuts: List[int]) -> None:
    feed_until_error(wire.Connection(wire.Role.AGENT), [prefix] + split(data, cuts))


@MODEST
@given(noise=st.binary(max_size=100), with_hello=st.booleans(), cuts=CUTS,
       frames=st.lists(st.tuples(st.integers(0, 300), st.integers(0, 255), st.binary(max_size=300)),
                       max_size=8))
def test_decoder_buffers_at_most_one_frame(noise: bytes, with_hello: bool, cuts: List[int],
                                           frames: List[Tuple[int, int, bytes]]) -> None:
    # remote_agent.frames reads MAX_FRAME and MAX_NOISE as module globals at call time, so patching them works.
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(codec, "MAX_FRAME", 160)
        mp.setattr(codec, "MAX_NOISE", 64)
        stream = noise + (hello_bytes() if with_hello else b"")
        stream += b"".join(struct.pack(">IB", n, kind) + body for n, kind, body in frames)
        feed_until_error(wire.Connection(wire.Role.AGENT), split(stream, cuts), bound=160 + HEADER)


@MODEST
@given(messages=MESSAGES, cuts=CUTS)
def test_any_messages_round_trip_under_any_chunking(messages: List[Tuple[str, List[bytes]]],
                                                    cuts: List[int]) -> None:
    sender = wire.Connection(wire.Role.PROXY)
    sender.send_hello()
    sender.resume(0)
    for channel, parts in messages:
        sender.send_data(channel, parts)
    events = decode(split(sender.data_to_send(), cuts))
    assert [type(e) for e in events[:1]] == [wire.Hello]
    assert events[1:] == [wire.ChannelData(ch, i + 1, tuple(p)) for i, (ch, p) in enumerate(messages)]


def test_skip_reports_the_bytes_of_runs_the_peer_partly_has() -> None:
    # Acks are batched: a dropped run often starts with frames the peer already has.
    sender = wire.Connection(wire.Role.AGENT, session="s", max_buffer=10_000)
    sender.send_hello()
    sender.resume(0)
    sender.data_to_send()
    for _ in range(3):
        sender.send_data("iopub", [b"a" * 1000])
    sender.new_link()
    for _ in range(50):
        sender.send_data("iopub", [b"x" * 1000])
    kept = seqs(sender)
    sender.send_hello()
    sender.resume(3)
    peer = wire.Connection(wire.Role.PROXY)
    peer.received_seq = 3  # it got the first three
    events = decode([sender.data_to_send()], peer)[1:]
    frame_size = len(frame(DATA, data_payload(3, 1, 1, part(b"x" * 1000))))
    lost = [seq for seq in range(4, 54) if seq not in kept]
    assert sum(e.frames for e in events if isinstance(e, wire.Skipped)) == len(lost)
    assert sum(e.nbytes for e in events if isinstance(e, wire.Skipped)) == len(lost) * frame_size


def test_a_stalled_link_takes_frames_lazily_and_skips_those_dropped_meanwhile() -> None:
    sender = wire.Connection(wire.Role.AGENT, session="s", max_buffer=5_000)
    sender.send_hello()
    sender.resume(0)
    sender.data_to_send()
    for i in range(20):  # written to nobody: the link is stalled
        sender.send_data("iopub", [b"%04d" % i * 250])
    first = sender.buffers_to_send(budget=1)  # one frame at most, and a skip before it
    events = decode([hello_bytes(wire.Role.AGENT), b"".join(first)], wire.Connection(wire.Role.PROXY))[1:]
    assert [type(e) for e in events] == [wire.Skipped, wire.ChannelData]
    assert events[1].seq == seqs(sender)[0] and sender.pending


def test_the_connection_answers_pings_and_acks_by_itself() -> None:
    """Neither end dispatches pings or decides when to ack: the Connection does both."""
    proxy, agent = wire.Connection(wire.Role.PROXY), wire.Connection(wire.Role.AGENT)
    for conn in (proxy, agent):
        conn.send_hello()
        conn.resume(0)
    agent.receive_data(proxy.data_to_send())
    proxy.receive_data(agent.data_to_send())
    proxy.send_ping(7.25)
    assert agent.receive_data(proxy.data_to_send()) == []  # no Ping event to dispatch...
    assert proxy.receive_data(agent.data_to_send()) == [wire.Pong(7.25)]  # ...yet the pong came back
    frames = b"".join(sent_frames(proxy, wire.ACK_EVERY_FRAMES))
    agent.receive_data(frames)
    assert proxy.receive_data(agent.data_to_send()) == [wire.Ack(wire.ACK_EVERY_FRAMES)]
    assert proxy.replay.unacked_bytes == 0
