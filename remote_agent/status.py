"""The daemon's status file, ``<id>.json`` beside its socket: what ``proxykernel ps`` shows.

Written by the daemon (``agent.Agent`` owns a ``StatusFile`` and calls ``update`` on every loop
turn; it writes only when something shown changed: a kernel launched or gone, a stream attached or
let go), removed by ``daemon.daemon_main`` when the daemon exits. Read on the remote by
``listing`` (what ``proxykernel ps`` and ``stop`` run there). Stdlib only, Python >= 3.8.

The file is 0600 in the 0700 runtime directory and replaced atomically (a temporary file, then
``os.replace``), so a reader sees a whole old or a whole new one. It holds no secret: never the
session key, nothing from the kernel's connection file. Fields (times are wall-clock, ``time.time``):
``id``, ``agent_pid`` (the daemon), ``session`` (the Start config's ``"session"``, None if absent),
``persistent``, ``kernel_pid`` (None between kernels), ``python``, ``started`` (the kernel's start),
``attached``, ``since`` (the last attach or detach), ``linger`` (seconds), ``job`` (the batch
job the daemon runs in, ``--slurm``: its id as a string; else None).
"""
from __future__ import annotations

import json
import os
import sys
from typing import Any, Dict, List, Optional, Tuple

from remote_agent.paths import listed, runtime_dir

__all__ = ["StatusFile", "status_path", "write_status", "read_statuses", "FORMAT", "SUFFIX"]

FORMAT = 1  # bumped if a field changes meaning; readers take what they know and ignore the rest
SUFFIX = ".json"


def status_path(kernel_id: str, directory: Optional[str] = None) -> str:
    """Where the daemon of ``kernel_id`` keeps its status: beside its socket ``<id>.sock``."""
    return os.path.join(directory or runtime_dir(), kernel_id + SUFFIX)


def write_status(path: str, fields: Dict[str, Any]) -> None:
    """Replace the file at ``path`` with ``fields`` as JSON, 0600 from creation, atomically."""
    partial = "%s.%d.tmp" % (path, os.getpid())  # not "*.json": readers skip it
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(fields, handle)
        os.replace(partial, path)
    except BaseException:
        try:
            os.unlink(partial)
        except OSError:
            pass
        raise


class StatusFile:
    """The daemon's status file as the daemon keeps it current.

    Made by ``agent.Agent`` with the daemon's options (``id``, ``linger``); ``update`` is called on
    every loop turn with what the loop knows and rewrites the file only when a shown value changed.
    Failing to write (a full disk) costs ``ps`` its line, never the kernel: errors are ignored.
    """

    def __init__(self, path: str, options: Any) -> None:
        self.path = path
        self.options = options  # read at each write: ``linger`` may change for a kernel
        self.shown: Optional[Tuple[Any, ...]] = None
        self.since = 0.0

    def update(self, kernel: Optional[Tuple[int, float]], config: Dict[str, Any], attached: bool,
               now: float) -> None:
        """Called on every loop turn: ``kernel`` (its pid and when it was launched, wall clock; None
        without a kernel), the kernel's Start ``config``, whether a stream is attached, and the
        wall-clock time ``now``."""
        shown = (kernel, attached, config.get("session"), bool(config.get("persistent", False)),
                 self.options.linger)
        if shown == self.shown:
            return
        if self.shown is None or attached != self.shown[1]:
            self.since = now
        self.shown = shown
        try:
            write_status(self.path, self.fields(kernel, attached, config))
        except OSError:
            pass

    def fields(self, kernel: Optional[Tuple[int, float]], attached: bool, config: Dict[str, Any]) -> Dict[str, Any]:
        """What the file says; only the two named keys are taken from ``config`` (it has the key)."""
        session = config.get("session")
        kernel_pid, started = kernel if kernel is not None else (None, None)
        return {"format": FORMAT, "id": self.options.id, "agent_pid": os.getpid(),
                "session": session if isinstance(session, str) else None,
                "persistent": bool(config.get("persistent", False)), "kernel_pid": kernel_pid,
                "python": sys.executable, "started": started, "attached": attached,
                "since": self.since, "linger": float(self.options.linger), "job": getattr(self.options, "job", None)}


def read_statuses(directory: str) -> List[Tuple[str, Dict[str, Any]]]:
    """Every status file in ``directory`` as (path, fields), sorted by path; files that are not a
    status (unreadable, not JSON, no id matching the name) are left out. Called by ``listing``."""
    found = []
    for name in listed(directory):
        if not name.endswith(SUFFIX):
            continue
        path = os.path.join(directory, name)
        try:
            with open(path) as handle:
                fields = json.load(handle)
        except (OSError, ValueError):
            continue
        if isinstance(fields, dict) and fields.get("id") == name[:-len(SUFFIX)]:
            found.append((path, fields))
    return found
