"""Which cell a notice of the proxy's own belongs in: the one running, or else the next one run.

The proxy has things to tell the notebook's user that no kernel says (the host wants a new login,
see relogin.py). A Jupyter frontend shows an IOPub message in the cell whose ``execute_request`` is
the message's parent, so ``Cells`` keeps the requests that have no ``execute_reply`` yet, reading
only the header parts of shell messages (never re-serializing them), and holds a notice for the
next request when no cell runs.
"""
from __future__ import annotations

import json
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Sequence, Tuple

from remote_agent.peek import message_part
from remote_agent.wire import Buffer

__all__ = ["Cells", "MAX_TRACKED"]

MAX_TRACKED = 256  # requests kept waiting for their reply; older ones (replies never seen) are forgotten

Header = Dict[str, Any]


def _header(part: bytes) -> Optional[Header]:
    try:
        header = json.loads(part.decode("utf-8"))
    except (ValueError, RecursionError):
        return None
    return header if isinstance(header, dict) and isinstance(header.get("msg_id"), str) else None


class Cells:
    """The cells running or queued, as seen on the shell channel; owned by ``Frontend``, which calls
    ``request`` for each shell message from a frontend, ``reply`` for each one to a frontend, and
    ``notice`` when the proxy has something to show."""

    def __init__(self) -> None:
        self.waiting: "OrderedDict[str, Header]" = OrderedDict()  # msg_id -> header, oldest first
        self.held: List[str] = []  # notices for the next cell run

    def request(self, frames: Sequence[Buffer]) -> List[Tuple[str, Header]]:
        """A frontend's shell message: an ``execute_request`` is a cell to be run. Returns the held
        notices to show in it now, each with the parent header to show it under."""
        part = message_part(frames, 1)
        if b'"execute_request"' not in part:
            return []
        header = _header(part)
        if header is None or header.get("msg_type") != "execute_request":
            return []
        self.waiting[header["msg_id"]] = header
        while len(self.waiting) > MAX_TRACKED:
            self.waiting.popitem(last=False)
        held, self.held = self.held, []
        return [(text, header) for text in held]

    def reply(self, frames: Sequence[Buffer]) -> None:
        """A kernel's shell message: an ``execute_reply`` ends the cell it answers."""
        if b'"execute_reply"' in message_part(frames, 1):
            parent = _header(message_part(frames, 2))
            if parent is not None:
                self.waiting.pop(parent["msg_id"], None)

    def notice(self, text: str) -> Optional[Header]:
        """Where ``text`` goes: the running cell's request header, or None (then it is held for the
        next cell run)."""
        running = next(iter(self.waiting.values()), None)
        if running is None:
            self.held.append(text)
        return running
