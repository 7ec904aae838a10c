"""Re-signing messages between a frontend and a kernel that hold different keys.

Jupyter gives every kernel start a fresh key. A start that reattaches to a lingering kernel (same
notebook, ``JPY_SESSION_NAME``) brings the frontend's new key, while the kernel still checks the one
it was started with. The agent's router then passes each message through a ``Resigner``: a
frontend's message is verified with the frontend's key and signed with the kernel's; a kernel's
message is verified with the kernel's key and signed with the frontend's. No check is ever skipped:
a message that fails it is dropped (and reported once). Parts are relayed as they came; only the
signature part is replaced. Runs on Python >= 3.8 (the remote side): stdlib only.
"""
from __future__ import annotations

import hashlib
import hmac
from typing import Any, Callable, List, Optional, Sequence

__all__ = ["Signer", "Resigner", "DELIMITER", "delimiter_at"]

DELIMITER = b"<IDS|MSG>"


class Signer:
    """HMAC of a message's four JSON parts, as jupyter_client's ``Session.sign`` computes it."""

    def __init__(self, key: str, scheme: str = "hmac-sha256") -> None:
        """``key`` and ``scheme`` as a connection file gives them (an empty key: unsigned messages)."""
        algorithm = scheme.split("-", 1)[1] if scheme.startswith("hmac-") else ""
        if key and algorithm not in hashlib.algorithms_available:
            raise ValueError("unknown signature scheme %r" % scheme)
        self._hmac = hmac.new(key.encode(), digestmod=getattr(hashlib, algorithm)) if key else None

    def sign(self, parts: Sequence[Any]) -> bytes:
        """The hex signature of header, parent header, metadata and content (``parts``)."""
        if self._hmac is None:
            return b""
        digest = self._hmac.copy()
        for part in parts:
            digest.update(part)
        return digest.hexdigest().encode()

    def verify(self, signature: Any, parts: Sequence[Any]) -> bool:
        """Does ``signature`` match (in constant time)?"""
        return hmac.compare_digest(bytes(signature), self.sign(parts))

    def verify_message(self, frames: Sequence[Any]) -> bool:
        """Was the whole message in ``frames`` (routing ids first) signed with this key?"""
        at = delimiter_at(frames)
        return at >= 0 and len(frames) >= at + 6 and self.verify(frames[at + 1], frames[at + 2:at + 6])


class Resigner:
    """Verifies with one key and signs with the other, in each direction. Made by ``Agent.reattach``
    for the router; one per reattached start (a new kernel is started without one)."""

    def __init__(self, frontend: Signer, kernel: Signer, report: Callable[[str], None]) -> None:
        """``report`` gets one sentence the first time a message fails its check (the log)."""
        self.frontend = frontend
        self.kernel = kernel
        self.report = report
        self.dropped = 0  # messages that failed their check

    def to_kernel(self, frames: List[Any]) -> Optional[List[Any]]:
        """A frontend's message (routing ids, delimiter, signature, ...): re-signed, or None if its
        signature is not the frontend's."""
        return self._resign(frames, self.frontend, self.kernel, "a frontend")

    def to_frontend(self, frames: List[Any]) -> Optional[List[Any]]:
        """A kernel's message (a reply, or IOPub): re-signed, or None if the kernel did not sign it."""
        return self._resign(frames, self.kernel, self.frontend, "the kernel")

    def _resign(self, frames: List[Any], check: Signer, sign: Signer, sender: str) -> Optional[List[Any]]:
        at = delimiter_at(frames)
        if at < 0 or len(frames) < at + 6:
            self._drop("a message from %s without the Jupyter message parts" % sender)
            return None
        parts = frames[at + 2:at + 6]
        if not check.verify(frames[at + 1], parts):
            self._drop("a message from %s with a wrong signature" % sender)
            return None
        return frames[:at + 1] + [sign.sign(parts)] + frames[at + 2:]

    def _drop(self, what: str) -> None:
        self.dropped += 1
        if self.dropped == 1:
            self.report("dropped %s (this kernel was reattached under a new key; further such "
                        "messages are dropped without a word)" % what)


def delimiter_at(frames: Sequence[Any]) -> int:
    """Where the ``<IDS|MSG>`` delimiter is among a message's parts (-1: none)."""
    for at, part in enumerate(frames):
        if len(part) == len(DELIMITER) and bytes(part) == DELIMITER:
            return at
    return -1
