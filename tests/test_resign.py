"""Re-signing between a frontend's key and a kernel's (after a reattach), the decision to reattach,
and what the log says of it: no sockets, no clock. Messages are made and checked by jupyter_client's
own ``Session``, as the frontend and the kernel do."""
from __future__ import annotations

from typing import Any, List

from jupyter_client.session import Session

from proxykernel.session import age, ready_sentence
from remote_agent import frames, wire
from remote_agent.reattach import carry_over, reattaches, signer
from remote_agent.resign import Resigner, Signer

FRONTEND, KERNEL = b"frontend-key", b"kernel-key"


def wire_frames(session: Session, msg_type: str, ids: List[bytes]) -> List[Any]:
    msg = session.msg(msg_type, content={"code": "x"})
    return ids + session.serialize(msg)  # type: ignore[no-any-return]


def resigner(reports: List[str]) -> Resigner:
    return Resigner(frontend=Signer(FRONTEND.decode()), kernel=Signer(KERNEL.decode()), report=reports.append)


def test_a_frontends_message_reaches_the_kernel_signed_with_the_kernels_key() -> None:
    reports: List[str] = []
    sent = wire_frames(Session(key=FRONTEND), "execute_request", [b"routing-id"])
    resigned = resigner(reports).to_kernel(list(sent))
    assert resigned is not None and resigned[0] == b"routing-id"
    _, parts = Session(key=KERNEL).feed_identities(resigned[1:])
    assert Session(key=KERNEL).deserialize(parts)["content"] == {"code": "x"}  # raises on a bad signature
    assert resigned[3:] == sent[3:]  # only the signature changed
    assert reports == []


def test_a_kernels_message_reaches_the_frontend_signed_with_the_frontends_key() -> None:
    sent = wire_frames(Session(key=KERNEL), "stream", [b"stream"])
    resigned = resigner([]).to_frontend(list(sent))
    assert resigned is not None
    _, parts = Session(key=FRONTEND).feed_identities(resigned)
    assert Session(key=FRONTEND).deserialize(parts)["msg_type"] == "stream"


def test_a_wrong_signature_is_dropped_and_reported_once() -> None:
    reports: List[str] = []
    check = resigner(reports)
    for _ in range(3):
        assert check.to_kernel(wire_frames(Session(key=b"another"), "kernel_info_request", [b"id"])) is None
    assert check.to_kernel([b"id", b"no delimiter"]) is None
    assert check.dropped == 4
    assert reports == ["dropped a message from a frontend with a wrong signature (this kernel was reattached "
                       "under a new key; further such messages are dropped without a word)"]


def test_unsigned_sessions_stay_unsigned_and_unknown_schemes_are_refused() -> None:
    plain = Signer("")
    assert plain.sign([b"a", b"b", b"c", b"d"]) == b""
    try:
        Signer("k", "hmac-nosuch")
    except ValueError as error:
        assert "nosuch" in str(error)
    else:
        raise AssertionError("an unknown scheme must be refused")


def test_only_a_new_key_for_the_same_live_session_reattaches() -> None:
    running = {"key": "k1", "session": "a.ipynb", "reattach": True}
    new = dict(running, key="k2")
    assert reattaches(running, new, alive=True)
    assert not reattaches(running, dict(running), alive=True)  # same key: a restart
    assert not reattaches(running, new, alive=False)
    assert not reattaches(running, dict(new, session="b.ipynb"), alive=True)
    assert not reattaches(running, dict(new, reattach=False), alive=True)
    assert not reattaches(running, dict(new, session=None), alive=True)


def test_carry_over_resends_only_output_and_moves_it_to_the_new_key() -> None:
    old = wire.Connection(wire.Role.AGENT, max_buffer=1 << 20)
    old.send_data("iopub", wire_frames(Session(key=b"old"), "stream", [b"stream"]))
    old.send_data("shell", wire_frames(Session(key=b"old"), "execute_reply", [b"id"]))
    new = wire.Connection(wire.Role.AGENT, max_buffer=1 << 20)
    count = carry_over(old.unacked, new, signer({"key": "old"}), signer({"key": "new"}), print)
    assert count == 1
    (_, _, pieces), = new.unacked
    channel, parts = frames.data_message(pieces)
    assert channel == "iopub"
    _, message = Session(key=b"new").feed_identities([bytes(part) for part in parts])
    assert Session(key=b"new").deserialize(message)["msg_type"] == "stream"


def test_the_log_says_how_old_a_reattached_kernel_is() -> None:
    assert [age(s) for s in (5, 61, 3600, 7500)] == ["5 s", "1 min", "1 h 0 min", "2 h 5 min"]
    assert ready_sentence({"reattached": 7500.0, "session": "analysis.ipynb", "pid": 4711}, 0.4) \
        == "reattached to the kernel of analysis.ipynb started 2 h 5 min ago (pid 4711) in 0.40 s"
    assert ready_sentence({"pid": 7, "python": "3.12.1", "ipykernel": "7.0", "hostname": "h"}, 1.0) \
        == "kernel ready in 1.00 s: ipykernel 7.0, Python 3.12.1 on h (pid 7)"
