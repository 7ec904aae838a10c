"""The stream's buffers (``remote_agent.buffers``), through the Connection's read path and on their own.

Memory must follow the bytes received, never the length a header claims: a garbage length used to get
a buffer of its size at once (fuzzing 10^5 mutated streams peaked at 269 MB traced memory).
No sockets, no clock.
"""
from __future__ import annotations

import struct
import tracemalloc
from typing import Callable, Iterable, Iterator, List, Tuple

import pytest
from hypothesis import example, given, settings, strategies as st

from remote_agent import buffers, wire

MARGIN = 4 * 1024 * 1024  # the decoder's own fixed costs (a scratch buffer, a few objects), generously
MUTATING = settings(max_examples=300, deadline=None, database=None)
# An edit of a valid stream: (what, where, value). 0: set a byte; 1: set 4 bytes (a frame length, often);
# 2: insert a byte; 3: delete up to `value % 64` bytes.
EDITS = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 1 << 16), st.integers(0, 2 ** 32 - 1)),
                 min_size=1, max_size=6)
READS = st.lists(st.integers(1, 1 << 17), min_size=1, max_size=8)


def valid_stream() -> bytes:
    sender = wire.Connection(wire.Role.PROXY, session="s")
    sender.send_hello()
    sender.resume(0)
    sender.send_start({"argv": ["python"], "key": "k"})
    for i in range(6):
        sender.send_data(wire.CHANNELS[i % 5], [b"id", b"<IDS|MSG>", b"sig", b"{}" * (i * 40)])
    sender.send_ping(1.5)
    return sender.data_to_send()


STREAM = valid_stream()
HELLO_END = len(wire.MAGIC) + struct.unpack(">I", STREAM[len(wire.MAGIC):len(wire.MAGIC) + 4])[0] + 4


def mutate(data: bytes, edits: Iterable[Tuple[int, int, int]]) -> bytes:
    out = bytearray(data)
    for what, where, value in edits:
        at = where % (len(out) + 1)
        if what == 0:
            out[at:at + 1] = bytes([value & 0xFF])
        elif what == 1:
            out[at:at + 4] = struct.pack(">I", value)
        elif what == 2:
            out.insert(at, value & 0xFF)
        else:
            del out[at:at + value % 64]
    return bytes(out)


def read_until_error(conn: wire.Connection, data: bytes, sizes: Iterable[int]) -> None:
    """Feed ``data`` as reads into ``read_buffer`` come, each at most the next of ``sizes``; stop at
    the first ProtocolError (any other exception fails the test)."""
    at, sizes = 0, iter(sizes)
    while at < len(data):
        buffer = conn.read_buffer()
        count = min(len(buffer), next(sizes), len(data) - at)
        buffer[:count] = data[at:at + count]
        del buffer  # (a caller's readv holds no view either)
        at += count
        try:
            conn.received_into(count)
        except wire.ProtocolError:
            return


def receive_until_error(conn: wire.Connection, data: bytes, sizes: Iterable[int]) -> None:
    at, sizes = 0, iter(sizes)
    while at < len(data):
        count = next(sizes)
        try:
            conn.receive_data(data[at:at + count])
        except wire.ProtocolError:
            return
        at += count


def traced_peak(feed: Callable[[], None]) -> int:
    """The most memory allocated at once while ``feed`` runs (what existed before is not counted)."""
    tracemalloc.start()
    try:
        feed()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def cycle(sizes: List[int]) -> Iterator[int]:
    while True:
        yield from sizes


# -- memory follows the bytes received -----------------------------------------------------------
@pytest.mark.parametrize("path", [read_until_error, receive_until_error], ids=["read_buffer", "receive_data"])
@MUTATING
@given(edits=EDITS, reads=READS)
@example(edits=[(1, HELLO_END, 200 * 1024 * 1024)], reads=[1 << 16])  # a 200 MiB length, then a little
@example(edits=[(1, HELLO_END, wire.MAX_FRAME)], reads=[1])
def test_memory_follows_the_bytes_fed_not_the_lengths_claimed(
        path: Callable[[wire.Connection, bytes, Iterable[int]], None],
        edits: List[Tuple[int, int, int]], reads: List[int]) -> None:
    data = mutate(STREAM, edits)
    peak = traced_peak(lambda: path(wire.Connection(wire.Role.AGENT), data, cycle(reads)))
    assert peak <= len(data) + MARGIN, "%d bytes fed, %d allocated" % (len(data), peak)


def test_memory_stays_a_step_ahead_of_a_large_frame_that_is_still_arriving() -> None:
    """A header claiming 64 MiB, then 10 MiB of its body: what is allocated follows the 10 MiB
    (allocating at a fixed share of the claim, as an eighth, would take the whole 64 MiB here)."""
    head = STREAM[:HELLO_END] + struct.pack(">IB", 64 * 1024 * 1024, 2)
    data = head + b"\x00" * (10 * 1024 * 1024)
    peak = traced_peak(lambda: read_until_error(wire.Connection(wire.Role.AGENT), data, cycle([1 << 16])))
    assert peak <= len(data) + MARGIN, "%d bytes fed, %d allocated" % (len(data), peak)


def test_a_large_frame_is_read_into_one_buffer_that_grows_as_its_bytes_arrive() -> None:
    sender = wire.Connection(wire.Role.PROXY, session="s")
    sender.send_hello()
    sender.resume(0)
    body = bytes(range(256)) * (12 * 1024 * 1024 // 256)
    sender.send_data("iopub", [b"head", body])
    data = sender.data_to_send()
    conn = wire.Connection(wire.Role.AGENT)
    at, events, offered = 0, [], []
    while at < len(data):
        buffer = conn.read_buffer()
        offered.append(len(buffer))
        count = min(len(buffer), 300 * 1024, len(data) - at)
        buffer[:count] = data[at:at + count]
        del buffer
        at += count
        events.extend(conn.received_into(count))
    # Never more than a step ahead of what arrived: the scratch buffer, or the frame's own buffer
    # grown by at most GROW_STEP beyond the bytes in it.
    assert max(offered) <= max(buffers.GROW_STEP, buffers.SCRATCH_SIZE)
    data_events = [e for e in events if isinstance(e, wire.ChannelData)]
    assert len(data_events) == 1 and bytes(data_events[0].frames[1]) == body
    part = data_events[0].frames[1]
    assert isinstance(part, memoryview) and isinstance(part.obj, bytearray)  # a view of one buffer, no join
    assert len(part.obj) < len(body) + 1024


# -- the replay buffer on its own -----------------------------------------------------------------------
def entry(seq: int, size: int) -> buffers.Held:
    return seq, size, (b"x" * size,)


def test_the_replay_buffer_drops_the_oldest_droppable_frames_and_remembers_the_runs() -> None:
    replay = buffers.ReplayBuffer(max_buffer=250)
    for seq in range(1, 6):
        replay.add(entry(seq, 100), droppable=seq != 2)  # frame 2 is a reply: never dropped
    assert [seq for seq, _, _ in replay.unacked] == [2, 5] and replay.unacked_bytes == 200
    assert replay.get(1) is None and replay.missing_until(3, 10) == 4
    assert replay.skip_report(3, 4) == 200 and replay.dropped_frames == 2
    replay.ack(2)
    assert [seq for seq, _, _ in replay.unacked] == [5]
