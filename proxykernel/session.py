"""Kernels that outlive their frontend: what the proxy says and decides about sessions.

A kernel started for a notebook (``JPY_SESSION_NAME``, or ``--session``) is named after it on the
remote, so a later start for the same notebook reattaches to it while it lingers
(``remote_agent.reattach``). The link logs the Ready frame through ``ready_sentence``; with
``--persistent`` the proxy answers a frontend's shutdown itself and detaches (``shutdown_reply``).
"""
from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence

from remote_agent import peek
from remote_agent.wire import Buffer

if TYPE_CHECKING:
    from proxykernel.frontend import MessageSigner

__all__ = ["ready_sentence", "age", "shutdown_reply"]


def age(seconds: float) -> str:
    """``7500`` -> "2 h 5 min": how long ago a reattached kernel was started."""
    minutes = int(seconds // 60)
    if minutes < 1:
        return "%d s" % max(0, seconds)
    if minutes < 60:
        return "%d min" % minutes
    return "%d h %d min" % (minutes // 60, minutes % 60)


def ready_sentence(info: Dict[str, Any], elapsed: float) -> str:
    """The log line for the agent's Ready frame, ``elapsed`` seconds after the proxy started;
    called by ``Link`` when it arrives."""
    get = info.get
    reattached = get("reattached")
    if reattached is not None:
        return ("reattached to the kernel of %s started %s ago (pid %s) in %.2f s"
                % (get("session"), age(float(reattached)), get("pid"), elapsed))
    return ("kernel ready in %.2f s: ipykernel %s, Python %s on %s (pid %s)"
            % (elapsed, get("ipykernel"), get("python"), get("hostname"), get("pid")))


def shutdown_reply(frames: Sequence[Buffer], signer: "MessageSigner") -> Optional[List[Buffer]]:
    """For a message a frontend sent on control (routing id first): if it is a ``shutdown_request``
    that is not a restart and carries the frontend's signature, the ``shutdown_reply`` to send back
    to it; else None. With ``--persistent`` the proxy answers such a request itself and detaches,
    leaving the kernel running (``Proxy.detach_on_shutdown``)."""
    if peek.restart_requested(frames) is not False or not signer.verify_message(frames):
        return None
    try:
        header = json.loads(peek.message_part(frames, 1).decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        return None
    reply = signer.message("shutdown_reply", {"status": "ok", "restart": False}, header)
    return list(frames[:1]) + list(reply)
