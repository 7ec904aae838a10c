"""``proxykernel ps`` and ``stop`` as they run on the remote: the daemons' status files read, the
stale ones removed, a kernel's memory looked up, a daemon told to stop.

Run by ``proxykernel/remote_ps.py`` (sent over ssh with this module's source, ``status``,
``procs`` and ``paths``): ``answer`` takes the request the local side sent and returns what it
prints. Stdlib only, Python >= 3.8; no daemon imports it.
"""
from __future__ import annotations

import os
import signal
import socket
import time
from typing import Any, Dict, List, Optional

from remote_agent import procs
from remote_agent.handoff import connect
from remote_agent.paths import runtime_dir
from remote_agent.status import read_statuses

__all__ = ["answer", "list_kernels", "is_daemon", "find", "stop", "STOP_WAIT"]

STOP_WAIT = 10.0  # seconds a daemon gets to stop its kernel (SIGTERM, SIGKILL 3 s later) and exit
SOCKET_SUFFIX = ".sock"


def is_daemon(status: Dict[str, Any], directory: str) -> bool:
    """Is the status's ``agent_pid`` still the daemon that wrote it? Alive, its socket still
    there, and its command line names its id (where it cannot be read: a daemon answers on that
    socket, as a new daemon checks for a stale one): a pid reused by another process is never
    taken for the daemon, so ``stop`` never signals a stranger."""
    pid = status.get("agent_pid")
    if not isinstance(pid, int) or pid <= 1 or not procs.alive(pid):
        return False
    path = os.path.join(directory, status["id"] + SOCKET_SUFFIX)
    if not os.path.exists(path):
        return False
    line = procs.cmdline(pid)
    if line is not None:
        return ("--id " + status["id"]) in line
    sock = connect(path)
    if sock is None:
        return False
    sock.close()
    return True


def list_kernels(directory: str) -> List[Dict[str, Any]]:
    """The kernels of the live daemons in ``directory``, each status with ``rss`` (the kernel's
    resident bytes, None if unknown) and ``lingers_until`` (detached: ``since`` + ``linger``);
    status files of daemons that are gone are removed."""
    kernels = []
    for path, status in read_statuses(directory):
        if not is_daemon(status, directory):
            try:
                os.unlink(path)
            except OSError:
                pass
            continue
        pid = status.get("kernel_pid")
        status["rss"] = procs.rss(pid) if isinstance(pid, int) else None
        detached = not status.get("attached") and isinstance(status.get("since"), (int, float))
        status["lingers_until"] = status["since"] + float(status.get("linger") or 0) if detached else None
        kernels.append(status)
    return kernels


def find(kernels: List[Dict[str, Any]], query: str) -> List[Dict[str, Any]]:
    """The kernels ``query`` names, best match first: the one with that id, else those with that
    session name, else those whose id starts with it. More than one: the caller says so."""
    for matches in ([k for k in kernels if k["id"] == query],
                    [k for k in kernels if k.get("session") == query],
                    [k for k in kernels if query and k["id"].startswith(query)]):
        if matches:
            return matches
    return []


def stop(kernels: List[Dict[str, Any]], directory: str, wait: float) -> List[Dict[str, Any]]:
    """SIGTERM to each daemon of ``kernels`` (it stops its kernel and exits), then wait up to
    ``wait`` seconds for all of them; each comes back with ``stopped`` and ``seconds``."""
    began = time.monotonic()
    waiting = []
    for kernel in kernels:
        kernel["stopped"] = not is_daemon(kernel, directory)  # gone meanwhile: nothing to do
        if kernel["stopped"]:
            continue
        try:
            os.kill(kernel["agent_pid"], signal.SIGTERM)
            waiting.append(kernel)
        except ProcessLookupError:
            kernel["stopped"] = True
        except PermissionError:
            pass  # not ours after all: left alone, and reported as not stopped
    while waiting and time.monotonic() - began < wait:
        time.sleep(0.05)
        for kernel in list(waiting):
            if not procs.alive(kernel["agent_pid"]):
                kernel["stopped"], kernel["seconds"] = True, time.monotonic() - began
                waiting.remove(kernel)
    return kernels


def answer(request: Dict[str, Any]) -> Dict[str, Any]:
    """What ``proxykernel ps``/``stop`` asked (``action``: "ps" or "stop", with ``query`` or
    ``all``, and ``wait``), answered with this host's name, its clock and the kernels concerned.
    ``stop`` of a query that names no kernel, or several, stops nothing and returns the matches."""
    directory = runtime_dir()
    now = time.time()
    kernels = list_kernels(directory)
    reply: Dict[str, Any] = {"hostname": socket.gethostname(), "now": now, "kernels": kernels}
    if request.get("action") != "stop":
        return reply
    query: Optional[str] = request.get("query")
    if request.get("all"):
        chosen = [kernel for kernel in kernels if not kernel.get("attached")]
    else:
        chosen = find(kernels, query or "")
        if len(chosen) != 1:
            reply["kernels"] = chosen
            return reply
    reply["kernels"] = stop(chosen, directory, float(request.get("wait", STOP_WAIT)))
    reply["stopping"] = True
    return reply
