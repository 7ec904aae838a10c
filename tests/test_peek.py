"""The agent's peeks into Jupyter messages (``remote_agent.peek``): read, never re-serialize; anything
that is not what they look for does not match. No sockets."""
from __future__ import annotations

import json
from typing import List, Optional

import pytest

from remote_agent import peek


def message(msg_type: str, content: object, ids: int = 1) -> List[bytes]:
    header = json.dumps({"msg_type": msg_type, "msg_id": "m"}).encode()
    return [b"id%d" % i for i in range(ids)] + [b"<IDS|MSG>", b"sig", header, b"{}", b"{}",
                                                 json.dumps(content).encode()]


def test_message_part_counts_from_the_delimiter_as_views_too() -> None:
    frames = message("execute_request", {"code": "1"}, ids=3)
    assert peek.message_part(frames, 0) == b"sig"
    assert peek.message_part([memoryview(f) for f in frames], 4) == b'{"code": "1"}'
    assert peek.message_part(frames, 5) == b"" and peek.message_part([b"no", b"delimiter"], 0) == b""


def test_is_welcome_matches_only_an_iopub_welcome_header() -> None:
    assert peek.is_welcome(message("iopub_welcome", {}))
    assert not peek.is_welcome(message("stream", {"text": '"iopub_welcome"'}))  # content is not read
    assert not peek.is_welcome([b"<IDS|MSG>", b"sig", b'"iopub_welcome"' + b" " * 2000])  # nor a huge header


@pytest.mark.parametrize("content, expected", [
    ({"restart": True}, True), ({"restart": False}, False), ({}, False), ("not a dict", False),
    ([1] * 3, False),
])
def test_restart_requested_reads_a_shutdown_requests_content(content: object, expected: Optional[bool]) -> None:
    assert peek.restart_requested(message("shutdown_request", content)) is expected


def test_restart_requested_is_none_for_other_messages_and_false_for_garbage() -> None:
    assert peek.restart_requested(message("execute_request", {"restart": True})) is None
    garbage = message("shutdown_request", {})[:-1] + [b"[" * 100_000]
    assert peek.restart_requested(garbage) is False
