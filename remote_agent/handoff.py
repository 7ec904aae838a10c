"""What ``attach`` and the daemon agree on: the agent's arguments, the daemon's socket, and the two
words of the fd hand-over.

Imported by ``attach`` (every ssh session) and by the daemon's side (``daemon``, ``link``), so neither
of those imports the other. Stdlib only, and small: ``attach`` must start fast.
"""
from __future__ import annotations

import argparse
import socket
import sys
from typing import List, Optional

__all__ = ["HANDOFF", "TAKEN", "options", "connect", "log"]

# Sent with ssh's two fds (SCM_RIGHTS ancillary data) to the daemon, which answers TAKEN. Neither can
# be taken for the start of a stream: the proxy's starts with the MAGIC's 0x89 or noise, the
# agent's with MAGIC or a frame's length, whose first byte is 0 for any frame under 16 MiB.
HANDOFF = b"PXK-FDS\n"
TAKEN = b"\x06"


def options(argv: List[str]) -> argparse.Namespace:
    """The agent's arguments, as the proxy writes them (``proxy.Proxy.run``): parsed by ``attach``
    in each ssh session, and again by the daemon it forks (``daemon.daemon_main``)."""
    parser = argparse.ArgumentParser(prog="remote_agent")
    parser.add_argument("--id", required=True, help="the kernel's id: names its socket")
    parser.add_argument("--linger", type=float, default=3600.0)
    parser.add_argument("--ping", type=float, default=1.0)
    parser.add_argument("--dead", type=float, default=5.0)
    parser.add_argument("--buffer", type=int, default=256 * 1024 * 1024)
    # In a batch job the daemon is the job's own process: attach waits this long for its socket
    # instead of forking a daemon into its own short-lived step.
    parser.add_argument("--wait-daemon", type=float, default=0.0)
    parser.add_argument("--job", help="the batch job the daemon runs in (remote_job), for `proxykernel ps`")
    return parser.parse_args(argv)


def connect(path: str) -> Optional[socket.socket]:
    """A connection to the daemon's unix socket at ``path``, or None if no daemon listens there.
    Called by ``attach`` to find the daemon, and by a new daemon to tell a stale socket from a live one."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        return None
    return sock


def log(message: str) -> None:
    """One line on stderr: ssh's stderr for ``attach`` (the proxy logs it), the daemon's log file
    for the daemon."""
    sys.stderr.write("proxykernel-agent: %s\n" % message)
    sys.stderr.flush()
