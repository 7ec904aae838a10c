"""A new start for the same notebook takes over the kernel that lingers for it.

Jupyter Server names each kernel's notebook in ``JPY_SESSION_NAME``; the proxy sends that name in its
Start frame (``"session"``, with ``"reattach"`` unless ``--no-reattach``) and names the daemon after
it and the kernelspec's settings, so a start for the same notebook reaches the same daemon. There,
``Agent.start`` asks ``reattaches``: the daemon still runs a kernel for that session and the start
brings a new key (the same key is a restart of the same connection file, which always gets a fresh
kernel). Then the kernel stays, messages are re-signed between the two keys (``resign``), and the
output the previous frontend never acknowledged is sent again in the new session
(``carry_over``), re-signed for the new frontend.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Iterable

from remote_agent import frames, wire
from remote_agent.buffers import Held
from remote_agent.resign import Resigner, Signer

__all__ = ["reattaches", "signer", "carry_over"]


def reattaches(running: Dict[str, Any], config: Dict[str, Any], alive: bool) -> bool:
    """Does a Start for ``config`` take over the kernel started for ``running`` (its Start config),
    which is ``alive``? Called by ``Agent.start`` for each Start frame."""
    session = config.get("session")
    return (alive and bool(session) and bool(config.get("reattach"))
            and running.get("session") == session and running.get("key") != config.get("key"))


def signer(config: Dict[str, Any]) -> Signer:
    """The signer of a Start config's (or a connection file's) key."""
    return Signer(str(config.get("key", "")), str(config.get("signature_scheme", "hmac-sha256")))


def carry_over(held: Iterable[Held], conn: wire.Connection, previous: Signer, new: Signer,
               log: Callable[[str], None]) -> int:
    """Send again, in ``conn``'s new session, the IOPub output of ``held`` (what the previous
    proxy did not acknowledge), moved from the ``previous`` frontend's key to the ``new`` one.
    Replies to the previous frontend's requests are left out: nobody asks for them any more.
    Returns how many messages went."""
    moved = Resigner(frontend=new, kernel=previous, report=log)
    count = 0
    for _, _, pieces in list(held):
        channel, parts = frames.data_message(pieces)
        resigned = moved.to_frontend(parts) if channel == "iopub" else None
        if resigned is not None:
            conn.send_data(channel, resigned)
            count += 1
    return count

