"""The stream protocol's buffers: bytes received and not yet parsed, frames sent and not yet acked,
and the queue of what to write next.

``wire.Connection`` owns one of each and is their only caller; none knows the frame format beyond
what the Connection tells it (a frame's size, a frame's seq, how to encode a skip), so they are tested
through it and on their own. No I/O, no clock. Runs on Python >= 3.8 (the remote side): stdlib only.
"""
from __future__ import annotations

from collections import deque
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple, Union

__all__ = ["DIRECT_FRAME", "GROW_STEP", "SCRATCH_SIZE", "ReceiveBuffer", "ReplayBuffer", "SendQueue", "Held"]

# A frame at least this big is read straight into one buffer of its own (read_buffer), so it is
# never joined from many reads: one copy and its memory saved, for large outputs.
DIRECT_FRAME = 1024 * 1024
# That buffer grows as the frame's bytes arrive, GROW_STEP at a time, so memory never runs more than
# GROW_STEP ahead of the bytes received, whatever a (garbage) header claims. Growing a bytearray
# reallocates in place where it can (glibc moves large blocks with mremap, no copy), and the frame is
# still never joined from many reads.
GROW_STEP = 1024 * 1024
SCRATCH_SIZE = 256 * 1024  # what one read_buffer offers when no large frame is under way

_Chunk = Union[bytes, bytearray]
# A frame kept for replay: (seq, size on the wire, pieces). The pieces are the buffers it was made
# of (its header, then each part's length and the part itself), never joined: no copy.
Held = Tuple[int, int, Tuple[Any, ...]]


def _zeros(count: int) -> bytes:
    """``count`` zero bytes to grow a buffer by; one shared block (calloc'd pages: no memory until
    written, and it is only ever read)."""
    global _ZEROS
    if len(_ZEROS) < count:
        _ZEROS = bytes(GROW_STEP)
    return _ZEROS if count == len(_ZEROS) else _ZEROS[:count]


_ZEROS = b""


class ReceiveBuffer:
    """Bytes read from the stream and not yet cut into frames.

    Called only by ``wire.Connection``: ``append`` with what its owner hands to ``receive_data``;
    ``read_buffer`` and ``received_into`` when the owner reads the stream straight into memory
    offered here (``os.readv``); ``peek``, ``take`` and ``skip_to`` as the decoder cuts frames;
    ``clear`` on a new link. Frames that lie in one chunk are cut without a copy.
    """

    def __init__(self) -> None:
        self._scratch: Optional[bytearray] = None  # made on first use, kept across links
        self.clear()

    def clear(self) -> None:
        """Forget every byte: a fresh stream (``Connection.new_link``)."""
        self._chunks: Deque[_Chunk] = deque()  # received, not yet parsed; the first from _offset
        self._offset = 0
        self.size = 0  # bytes in _chunks (a large frame being filled is not counted until complete)
        self._fill: Optional[bytearray] = None  # a large frame's own buffer, being read into
        self._filled = 0
        self._fill_size = 0  # the size that frame's buffer grows to

    def append(self, data: _Chunk) -> None:
        """Bytes the owner read itself (``Connection.receive_data``); kept as they are, no copy."""
        if data:
            self._chunks.append(data)
            self.size += len(data)

    # -- reading straight into our memory ---------------------------------------------------
    def read_buffer(self, frame_size: int) -> memoryview:
        """Where the owner's next read should go (``Connection.read_buffer``): the rest of a large
        frame's own buffer, else a scratch buffer. ``frame_size`` is the size of the frame whose
        header is buffered (0 if none), as the decoder read it from that header."""
        if self._fill is None and frame_size >= DIRECT_FRAME and frame_size > self.size:
            self._start_fill(frame_size)
        if self._fill is None:
            if self._scratch is None:
                self._scratch = bytearray(SCRATCH_SIZE)
            return memoryview(self._scratch)
        if self._filled == len(self._fill):
            self._grow_fill(min(GROW_STEP, self._fill_size - self._filled))
        return memoryview(self._fill)[self._filled:]

    def _grow_fill(self, count: int) -> None:
        assert self._fill is not None
        try:
            self._fill.extend(_zeros(count))
        except BufferError:  # the owner still holds a view of the last read_buffer: grow by a copy
            grown = bytearray(len(self._fill) + count)
            grown[:len(self._fill)] = self._fill
            self._fill = grown

    def received_into(self, nbytes: int) -> bool:
        """``nbytes`` were read into the last ``read_buffer`` (``Connection.received_into``);
        True if there is something new to parse (a large frame only once it is complete)."""
        if self._fill is None:
            assert self._scratch is not None, "received_into without read_buffer"
            self.append(bytes(memoryview(self._scratch)[:nbytes]))  # one copy (a slice would be two)
            return nbytes > 0
        self._filled += nbytes
        if self._filled < self._fill_size:
            return False
        whole, self._fill = self._fill, None
        self.append(whole)
        return True

    def _start_fill(self, frame_size: int) -> None:
        """A large frame's header is in: its bytes so far move into a buffer of its own, which
        ``read_buffer`` grows as the rest arrives."""
        # All that is buffered belongs to this frame: its end is not in yet.
        fill = bytearray(min(frame_size, self.size + GROW_STEP))
        at = 0
        for index, chunk in enumerate(self._chunks):
            view = memoryview(chunk)[self._offset if index == 0 else 0:]
            fill[at:at + len(view)] = view
            at += len(view)
        self._chunks.clear()
        self._offset = 0
        self.size = 0
        self._fill, self._filled, self._fill_size = fill, at, frame_size

    # -- cutting frames ---------------------------------------------------------------------
    def peek(self, count: int) -> _Chunk:
        """The next ``count`` bytes (``count`` <= ``size``), left in place."""
        first = self._chunks[0]
        if len(first) - self._offset < count:
            self._coalesce()
            first = self._chunks[0]
        return first[self._offset:self._offset + count]

    def take(self, count: int) -> memoryview:
        """The next ``count`` bytes (``count`` <= ``size``), consumed: a view of the chunk they lie
        in, or of one join when they span several."""
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
        self.size -= count
        return view

    def skip_to(self, pattern: bytes) -> Tuple[bool, bytes]:
        """Consume the bytes before ``pattern`` and the pattern itself: (found, the bytes skipped). Not
        found, all but a tail that may be the pattern's start are skipped. Joins what is buffered:
        meant for the few bytes before the protocol starts (a login banner), not for frames."""
        if not self._chunks:
            return False, b""
        self._coalesce()
        at = self._chunks[0].find(pattern)
        if at < 0:
            return False, bytes(self.take(max(0, self.size - (len(pattern) - 1))))
        skipped = bytes(self.take(at))
        self.take(len(pattern))
        return True, skipped

    def _coalesce(self) -> None:
        """All buffered chunks into one (rare: a header split across reads, or a banner)."""
        parts: List[Any] = [memoryview(self._chunks[0])[self._offset:]]
        parts.extend(list(self._chunks)[1:])
        self._chunks = deque([b"".join(parts)])
        self._offset = 0


class ReplayBuffer:
    """Data frames sent and not yet acknowledged by the peer, kept to resend after a drop.

    Called only by ``wire.Connection``: ``add`` for each data frame sent (``send_data``), ``ack``
    when the peer's cumulative ack or its hello says what it has, ``get`` when a queued frame is
    finally written, ``skip_report`` for frames dropped before they were. At most ``max_buffer``
    bytes are kept: beyond that the oldest droppable frames (IOPub output, never replies) go, and
    the runs dropped are remembered until the peer is told (a skip frame).
    """

    def __init__(self, max_buffer: int) -> None:
        self.max_buffer = max_buffer
        self.unacked: Deque[Held] = deque()
        self._held: Dict[int, Held] = {}  # the same entries, by seq
        self._droppable: Deque[bool] = deque()  # parallel to unacked
        self.unacked_bytes = 0
        self._drops: List[List[int]] = []  # runs [first_seq, last_seq, nbytes] dropped, not yet reported
        self.dropped_frames = 0  # reported to the peer so far
        self.dropped_bytes = 0

    def add(self, entry: Held, droppable: bool) -> None:
        """A data frame was sent: keep it until acked, or until dropped if ``droppable`` (output)."""
        self.unacked.append(entry)
        self._held[entry[0]] = entry
        self._droppable.append(droppable)
        self.unacked_bytes += entry[1]
        if self.unacked_bytes > self.max_buffer:
            self._drop_oldest_output()

    def get(self, seq: int) -> Optional[Held]:
        """Frame ``seq`` if still held (not acked, not dropped)."""
        return self._held.get(seq)

    def missing_until(self, seq: int, stop: int) -> int:
        """The last seq of the run of dropped frames starting at ``seq`` (``seq`` is not held), before ``stop``."""
        end = seq
        while end + 1 < stop and end + 1 not in self._held:
            end += 1
        return end

    def ack(self, seq: int) -> None:
        """The peer has every frame up to ``seq``: free them."""
        while self.unacked and self.unacked[0][0] <= seq:
            first, size, _ = self.unacked.popleft()
            del self._held[first]
            self._droppable.popleft()
            self.unacked_bytes -= size
        self._drops = [run for run in self._drops if run[1] > seq]

    def skip_report(self, first: int, last: int) -> int:
        """Frames ``first..last`` were dropped and the peer is being told: the bytes they held."""
        nbytes = 0
        for run_first, run_last, run_bytes in self._drops:
            low, high = max(first, run_first), min(last, run_last)
            if low <= high:  # a run the peer partly has: count its share (its frames are alike)
                nbytes += run_bytes * (high - low + 1) // (run_last - run_first + 1)
        self._drops = [run for run in self._drops if run[1] > last]
        self.dropped_frames += last - first + 1
        self.dropped_bytes += nbytes
        return nbytes

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


class SendQueue:
    """What to write next, in order: control frames as bytes, data frames as ranges of seqs.

    Called only by ``wire.Connection``: ``control`` for each control frame, ``data`` for each data
    frame sent on a live link and ``replay`` for what the peer lacks on ``resume``; ``take`` when
    the owner writes. Data frames are looked up in the replay buffer only when written, so a stalled
    link holds no copies and frames dropped meanwhile become skips (``skip_frame(last, count, nbytes)``
    encodes one).
    """

    def __init__(self, skip_frame: Callable[[int, int, int], bytes]) -> None:
        self._skip_frame = skip_frame
        self._items: Deque[Union[bytes, range]] = deque()

    def __bool__(self) -> bool:
        return bool(self._items)

    def clear(self) -> None:
        self._items.clear()

    def control(self, frame: bytes) -> None:
        self._items.append(frame)

    def data(self, seq: int) -> None:
        """Data frame ``seq``, the newest sent (it joins the range queued last, if it follows it)."""
        last = self._items[-1] if self._items else None
        if isinstance(last, range) and last.stop == seq:
            self._items[-1] = range(last.start, seq + 1)
        else:
            self._items.append(range(seq, seq + 1))

    def replay(self, first: int, last: int) -> None:
        """Data frames ``first..last``, after a resume."""
        self._items.append(range(first, last + 1))

    def take(self, replay: ReplayBuffer, budget: Optional[int] = None) -> List[Any]:
        """Buffers to write, in order, not joined; with a ``budget``, about that many bytes of data
        frames (the rest stays queued)."""
        out: List[Any] = []
        total = 0
        while self._items and (budget is None or total < budget):
            item = self._items.popleft()
            if not isinstance(item, range):
                out.append(item)
                continue
            seq = item.start
            while seq < item.stop and (budget is None or total < budget):
                entry = replay.get(seq)
                if entry is None:  # dropped from the replay buffer before it was written
                    end = replay.missing_until(seq, item.stop)
                    out.append(self._skip_frame(end, end - seq + 1, replay.skip_report(seq, end)))
                    seq = end + 1
                    continue
                out.extend(entry[2])
                total += entry[1]
                seq += 1
            if seq < item.stop:
                self._items.appendleft(range(seq, item.stop))
        return out
