"""Peeks into Jupyter messages, which the stream otherwise relays opaquely as lists of parts.

The agent calls these on the few messages whose meaning it must act on: its own IOPub subscription's
welcome, a ``shutdown_request`` (restart or not) and the kernel's ``shutdown_reply``. They read, never
re-serialize, and a message that is not what they look for simply does not match. Runs on Python >= 3.8
(the remote side): stdlib only.
"""
from __future__ import annotations

import json
from typing import Optional, Sequence, Union

__all__ = ["message_part", "is_welcome", "restart_requested"]

_Part = Union[bytes, memoryview]  # as ``wire.Buffer``: received views or zmq-owned memory


def message_part(frames: Sequence[_Part], index: int) -> bytes:
    """Part ``index`` after the ``<IDS|MSG>`` delimiter (0 = signature, 1 = header, 4 = content)."""
    for at, part in enumerate(frames):
        if part == b"<IDS|MSG>":
            return bytes(frames[at + 1 + index]) if at + 1 + index < len(frames) else b""
    return b""


def is_welcome(frames: Sequence[_Part]) -> bool:
    """An IOPub ``iopub_welcome``: the kernel's answer to the agent's own subscription."""
    header = message_part(frames, 1)
    return len(header) < 1024 and b'"iopub_welcome"' in header


def restart_requested(frames: Sequence[_Part]) -> Optional[bool]:
    """For a message on control: None unless it is a shutdown_request; then, does it ask for a restart?"""
    header = message_part(frames, 1)
    if b'"shutdown_request"' not in header:
        return None
    try:
        return bool(json.loads(message_part(frames, 4).decode("utf-8")).get("restart"))
    except (ValueError, AttributeError, RecursionError):
        return False
