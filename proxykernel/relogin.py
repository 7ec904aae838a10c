"""A link that needs a new interactive login: noticed once per outage, sans-IO.

On a host that asks for a password or a one-time code, kernels reach the host only through the
connection ``proxykernel login`` opened (their ssh runs in BatchMode, never prompting). When that
connection is gone (dropped, logged out, expired), each reconnect attempt fails with ssh's
"Permission denied (password)". ``Link`` keeps retrying with its backoff, as during any outage, and
asks ``LoginWait`` after every failed ssh whether to tell the user; the proxy then logs the sentence
and shows it in the notebook (``NeedsLogin``). Once the user has logged in again, the next attempt
goes through the new connection and the link resumes with nothing lost.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import List, Optional, Sequence

from proxykernel.config import ProxyConfig
from proxykernel.ssh import login_sentence, needs_login

__all__ = ["NeedsLogin", "LoginWait", "WAIT_FOR_LOGIN"]

log = logging.getLogger("proxykernel")

WAIT_FOR_LOGIN = "; the kernel waits until then (at most --reconnect-timeout) and goes on where it was"


@dataclass(frozen=True)
class NeedsLogin:
    """A link action: show ``sentence`` in the notebook (the running cell's output, or the next one's)."""
    sentence: str


class LoginWait:
    """Owned by ``Link``: after each ssh that ended while the link was lost, ``check`` says whether
    the reason is a login the user must give again, once per outage (an outage is named by the
    time it began)."""

    def __init__(self, config: ProxyConfig) -> None:
        self.sentence = login_sentence(replace(config.ssh, host=config.host), then=WAIT_FOR_LOGIN)
        self.told: Optional[float] = None  # the outage (its start) the user was told about

    def check(self, ssh_lines: Sequence[str], lost_at: Optional[float]) -> List[NeedsLogin]:
        """``ssh_lines``: what the ssh that just ended printed while booting; ``lost_at``: when the
        current outage began (None: the link is not lost)."""
        if lost_at is None or lost_at == self.told or not needs_login(ssh_lines):
            return []
        self.told = lost_at
        log.warning("%s", self.sentence)
        return [NeedsLogin(self.sentence)]
