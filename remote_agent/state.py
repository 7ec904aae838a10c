"""The state of one link of the stream protocol: an enum of states and one table of the moves between them.

Modelled on h11's ``_state.py``. A link has two halves, each with its own state, as h11 keeps one state
per party: what this side has *received* on the stream (MAGIC, then the peer's hello, then anything)
and what it *sends* (data frames held until the peer's hello says what it lacks, then sent as they
come). ``wire.Connection`` is the only caller: it moves a half with ``LinkState.process`` when
something happens, and ``reset`` starts a fresh stream (``Connection.new_link``). A move that is not
a row of ``TRANSITIONS`` is refused with a ``LocalProtocolError`` (a bug in the caller: data the peer
sends never asks for a move the decoder has not checked first).
A protocol error while receiving moves to ``ERROR``, which has no way out but ``reset``.

Runs on Python >= 3.8 (the remote side): stdlib only.
"""
from __future__ import annotations

import enum
from typing import Dict, Tuple

from remote_agent.frames import LocalProtocolError

__all__ = ["Side", "State", "Trigger", "TRANSITIONS", "LinkState"]


class Side(enum.Enum):
    """Which half of the link a state describes."""
    RECEIVING = "receiving"  # what the peer has sent on this stream, as far as it was decoded
    SENDING = "sending"  # what this side sends on it


class State(enum.Enum):
    """Where one half of a link stands. The first five are the receiving half's, the last two the sending half's."""
    AWAITING_MAGIC = "awaiting magic"  # a fresh stream: noise (a login banner) is skipped until MAGIC
    AWAITING_HELLO = "awaiting hello"  # MAGIC seen: the next frame must be the peer's hello
    OPEN = "open"  # the peer's hello is in: every frame type may follow
    OPEN_RESUMED = "open, resumed"  # (agent) as OPEN, and the hello continued the session this side has
    ERROR = "error"  # the peer broke the protocol: nothing more is read from this stream
    HOLDING = "holding"  # data frames are kept, not written: the peer has not said what it lacks
    LINKED = "linked"  # resume() queued what the peer lacks: data frames are written as they are sent


class Trigger(enum.Enum):
    """What moves a half of the link."""
    MAGIC = "MAGIC found"
    HELLO = "the peer's hello"
    SESSION_HELLO = "the peer's hello for this side's session"  # (agent) the proxy reconnected
    RESUME = "resume()"  # the owner queued what the peer lacks (after its hello, or ahead of it)
    PROTOCOL_ERROR = "a protocol error"  # raised while receiving


# Every allowed move, one row each. What is not here is refused.
TRANSITIONS: Dict[Tuple[Side, State, Trigger], State] = {
    (Side.RECEIVING, State.AWAITING_MAGIC, Trigger.MAGIC): State.AWAITING_HELLO,
    (Side.RECEIVING, State.AWAITING_HELLO, Trigger.HELLO): State.OPEN,
    (Side.RECEIVING, State.AWAITING_HELLO, Trigger.SESSION_HELLO): State.OPEN_RESUMED,
    (Side.RECEIVING, State.AWAITING_MAGIC, Trigger.PROTOCOL_ERROR): State.ERROR,
    (Side.RECEIVING, State.AWAITING_HELLO, Trigger.PROTOCOL_ERROR): State.ERROR,
    (Side.RECEIVING, State.OPEN, Trigger.PROTOCOL_ERROR): State.ERROR,
    (Side.RECEIVING, State.OPEN_RESUMED, Trigger.PROTOCOL_ERROR): State.ERROR,
    # A first link resumes ahead of the peer's hello (a new session: the peer has nothing yet), so
    # the sending half moves on its own, whatever the receiving half's state.
    (Side.SENDING, State.HOLDING, Trigger.RESUME): State.LINKED,
}

_INITIAL = {Side.RECEIVING: State.AWAITING_MAGIC, Side.SENDING: State.HOLDING}


class LinkState:
    """The two halves' states for the current link (h11's ``ConnectionState``).

    ``wire.Connection`` makes one and calls ``process`` as bytes are decoded and as its owner calls
    ``resume``; ``reset`` on ``new_link``.
    """

    def __init__(self) -> None:
        self.receiving = State.AWAITING_MAGIC
        self.sending = State.HOLDING

    def reset(self) -> None:
        """A fresh stream: both halves start over."""
        self.receiving = _INITIAL[Side.RECEIVING]
        self.sending = _INITIAL[Side.SENDING]

    def process(self, side: Side, trigger: Trigger) -> State:
        """Move ``side`` on ``trigger`` by the table; returns the new state. Raises
        ``LocalProtocolError`` (and changes nothing) for a move the table does not allow."""
        current = self.receiving if side is Side.RECEIVING else self.sending
        new = TRANSITIONS.get((side, current, trigger))
        if new is None:
            raise LocalProtocolError("%s is not allowed while the link's %s half is %s"
                             % (trigger.value, side.value, current.value))
        if side is Side.RECEIVING:
            self.receiving = new
        else:
            self.sending = new
        return new

    def __repr__(self) -> str:
        return "LinkState(receiving=%s, sending=%s)" % (self.receiving.name, self.sending.name)
