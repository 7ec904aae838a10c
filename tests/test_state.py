"""The link's explicit state (``remote_agent.state``): the one table of moves, and a Connection that
follows it — a protocol error while receiving is sticky until ``new_link``. No sockets, no clock."""
from __future__ import annotations

import itertools
import json
import struct
from typing import List, Tuple

import pytest

from remote_agent import wire
from remote_agent.state import TRANSITIONS, LinkState, Side, State, Trigger

RECEIVING = [State.AWAITING_MAGIC, State.AWAITING_HELLO, State.OPEN, State.OPEN_RESUMED, State.ERROR]
SENDING = [State.HOLDING, State.LINKED]
REFUSED = [(side, state, trigger) for side, states in ((Side.RECEIVING, RECEIVING), (Side.SENDING, SENDING))
           for state, trigger in itertools.product(states, Trigger) if (side, state, trigger) not in TRANSITIONS]


def at(side: Side, state: State) -> LinkState:
    """A LinkState whose ``side`` half is ``state`` (the other half as a fresh link has it)."""
    link = LinkState()
    setattr(link, side.value, state)
    return link


def halves(link: LinkState) -> Tuple[State, State]:
    return link.receiving, link.sending


# -- the table ----------------------------------------------------------------------------------
def test_a_fresh_link_awaits_magic_and_holds_its_data() -> None:
    assert halves(LinkState()) == (State.AWAITING_MAGIC, State.HOLDING)


@pytest.mark.parametrize("row", sorted(TRANSITIONS.items(), key=str), ids=lambda r: "%s-%s-%s" % (
    r[0][0].name, r[0][1].name, r[0][2].name))
def test_every_row_is_an_allowed_move(row: Tuple[Tuple[Side, State, Trigger], State]) -> None:
    (side, state, trigger), new = row
    link = at(side, state)
    other = halves(link)[1 if side is Side.RECEIVING else 0]
    assert link.process(side, trigger) is new
    assert getattr(link, side.value) is new
    assert halves(link)[1 if side is Side.RECEIVING else 0] is other  # the other half never moves


@pytest.mark.parametrize("side, state, trigger", REFUSED, ids=lambda v: getattr(v, "name", v))
def test_every_other_move_is_refused_and_changes_nothing(side: Side, state: State, trigger: Trigger) -> None:
    link = at(side, state)
    before = halves(link)
    with pytest.raises(wire.LocalProtocolError, match="not allowed while the link's %s half is" % side.value):
        link.process(side, trigger)
    assert halves(link) == before


def test_error_is_reachable_from_every_receiving_state_and_left_only_by_reset() -> None:
    for state in RECEIVING:
        if state is not State.ERROR:
            assert TRANSITIONS[(Side.RECEIVING, state, Trigger.PROTOCOL_ERROR)] is State.ERROR
    assert not [row for row in TRANSITIONS if row[1] is State.ERROR]
    link = at(Side.RECEIVING, State.ERROR)
    link.reset()
    assert halves(link) == (State.AWAITING_MAGIC, State.HOLDING)


def test_the_halves_keep_to_their_own_states() -> None:
    for side, state, _ in TRANSITIONS:
        assert state in (RECEIVING if side is Side.RECEIVING else SENDING)
    for (side, _, _), new in TRANSITIONS.items():
        assert new in (RECEIVING if side is Side.RECEIVING else SENDING)


# -- a Connection follows it ---------------------------------------------------------------------
def hello_bytes(role: wire.Role, session: str = "") -> bytes:
    conn = wire.Connection(role, session=session)
    conn.send_hello()
    return conn.data_to_send()


def frame(kind: int, payload: bytes = b"") -> bytes:
    return struct.pack(">IB", len(payload) + 1, kind) + payload


def test_a_stream_moves_the_receiving_half_through_magic_and_hello() -> None:
    conn = wire.Connection(wire.Role.PROXY)
    hello = hello_bytes(wire.Role.AGENT)
    steps: List[Tuple[bytes, State]] = [
        (b"Last login: today\n", State.AWAITING_MAGIC), (hello[:5], State.AWAITING_MAGIC),
        (hello[5:len(wire.MAGIC) + 2], State.AWAITING_HELLO), (hello[len(wire.MAGIC) + 2:], State.OPEN)]
    for chunk, state in steps:
        conn.receive_data(chunk)
        assert conn.state.receiving is state
    assert conn.peer_hello is not None and conn.peer_hello.role == "agent"
    assert not conn.resumed and not conn.linked


@pytest.mark.parametrize("same", [True, False], ids=["same-session", "new-session"])
def test_an_agent_knows_from_the_hello_whether_the_session_resumed(same: bool) -> None:
    agent = wire.Connection(wire.Role.AGENT, session="s-1")
    agent.send_data("iopub", [b"kept for s-1"])
    agent.receive_data(hello_bytes(wire.Role.PROXY, "s-1" if same else "s-2"))
    assert agent.state.receiving is (State.OPEN_RESUMED if same else State.OPEN)
    assert agent.resumed is same
    assert agent.session == ("s-1" if same else "s-2") and agent.sent_seq == (1 if same else 0)


def test_a_protocol_error_is_sticky_until_a_new_link() -> None:
    conn = wire.Connection(wire.Role.AGENT)
    conn.send_hello()
    conn.resume(0)
    conn.receive_data(hello_bytes(wire.Role.PROXY))
    with pytest.raises(wire.RemoteProtocolError, match="unknown frame type 200"):
        conn.receive_data(frame(200))
    assert conn.state.receiving is State.ERROR
    ping = frame(4, struct.pack(">d", 1.0))  # valid on its own: refused all the same
    for receive in (lambda: conn.receive_data(ping), lambda: conn.received_into(0)):
        with pytest.raises(wire.RemoteProtocolError, match=r"broke the protocol \(.*unknown frame type 200"):
            receive()
    assert conn.state.receiving is State.ERROR and conn.linked  # the sending half is untouched...
    conn.send_error("bye")  # ...so the agent can still tell the proxy why it drops the link
    assert conn.data_to_send().endswith(b"bye")
    conn.new_link()
    assert (conn.state.receiving, conn.state.sending) == (State.AWAITING_MAGIC, State.HOLDING)
    assert [type(e) for e in conn.receive_data(hello_bytes(wire.Role.PROXY) + ping)] == [wire.Hello]


def test_an_error_inside_a_chunk_loses_the_rest_of_it_for_good() -> None:
    conn = wire.Connection(wire.Role.AGENT)
    with pytest.raises(wire.RemoteProtocolError, match="before its hello"):
        conn.receive_data(wire.MAGIC + frame(5, struct.pack(">d", 1.0)) + hello_bytes(wire.Role.PROXY)[8:])
    with pytest.raises(wire.RemoteProtocolError, match="broke the protocol"):
        conn.receive_data(b"")


def test_a_second_resume_on_one_link_is_refused_and_queues_nothing_twice() -> None:
    conn = wire.Connection(wire.Role.PROXY)
    conn.send_data("shell", [b"one"])
    conn.resume(0)
    with pytest.raises(wire.LocalProtocolError, match="resume.* not allowed while the link's sending half is linked"):
        conn.resume(0)
    assert conn.data_to_send().count(b"one") == 1


def test_a_peer_that_claims_more_than_was_sent_breaks_the_stream() -> None:
    conn = wire.Connection(wire.Role.PROXY)
    with pytest.raises(wire.RemoteProtocolError, match="claims frame 3"):
        conn.resume(3)
    assert conn.state.receiving is State.ERROR and not conn.linked


# -- roles ------------------------------------------------------------------------------------
@pytest.mark.parametrize("role", list(wire.Role))
def test_the_hello_says_the_role_as_before(role: wire.Role) -> None:
    # Agents cached on remote hosts read these words: the enum must not change the wire format.
    raw = hello_bytes(role)
    assert json.loads(raw[len(wire.MAGIC) + 5:])["role"] == {"PROXY": "proxy", "AGENT": "agent"}[role.name]


def test_a_role_is_a_role_not_a_string() -> None:
    with pytest.raises(TypeError, match="wire.Role"):
        wire.Connection("agent")  # type: ignore[arg-type]
