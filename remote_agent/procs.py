"""What ``proxykernel ps`` and ``stop`` ask about a remote process: is it alive, what is its command
line, how much memory does it hold. Used by ``listing``; stdlib only, Python >= 3.8.

Read from /proc where there is one, and from ``ps`` where there is none (macOS). A /proc may number
processes in another PID namespace than ours (a container given the host's /proc; an sshd run under
``unshare --pid`` without its own /proc, as in the tests): then a pid is looked up by the ``NSpid``
line of each process in our namespace, and where that fails too the answer is "unknown" (None).
"""
from __future__ import annotations

import os
import subprocess
from typing import Optional

__all__ = ["alive", "proc_dir", "cmdline", "rss"]

PROC = "/proc"


def _nspid(entry: str) -> Optional[int]:
    """The last ``NSpid`` number of /proc/``entry``: its pid in its own namespace."""
    try:
        with open(os.path.join(PROC, entry, "status")) as status:
            for line in status:
                if line.startswith("NSpid:"):
                    return int(line.split()[-1])
    except (OSError, ValueError):
        pass
    return None


def proc_dir(pid: int) -> Optional[str]:
    """The /proc directory of the process our namespace calls ``pid``, or None if /proc cannot tell."""
    try:
        if os.readlink(os.path.join(PROC, "self")) == str(os.getpid()):
            return os.path.join(PROC, str(pid))  # /proc is our namespace's: the usual case
        namespace = os.readlink(os.path.join(PROC, "self", "ns", "pid"))
        entries = os.listdir(PROC)
    except OSError:
        return None
    for entry in entries:
        if entry.isdigit() and _nspid(entry) == pid:
            try:
                if os.readlink(os.path.join(PROC, entry, "ns", "pid")) == namespace:
                    return os.path.join(PROC, entry)
            except OSError:
                continue
    return None


def _ps(pid: int, column: str) -> Optional[str]:
    """``ps -o COLUMN= -p PID`` where there is no /proc at all (macOS, the BSDs); None otherwise."""
    if os.path.isdir(PROC):
        return None  # a /proc that could not tell: ps reads the same one
    try:
        done = subprocess.run(["ps", "-ww", "-o", column + "=", "-p", str(pid)], capture_output=True,
                              timeout=5, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return None
    text = done.stdout.decode("utf-8", "replace").strip()
    return text if done.returncode == 0 and text else None


def _read(pid: int, name: str) -> Optional[bytes]:
    directory = proc_dir(pid)
    if directory is None:
        return None
    try:
        with open(os.path.join(directory, name), "rb") as handle:
            return handle.read()
    except OSError:
        return None


def alive(pid: int) -> bool:
    """Does ``pid`` run (a zombie, exited but not yet reaped, does not)?"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's: alive
    stat = _read(pid, "stat")
    if stat is not None:
        return stat[stat.rfind(b")") + 2:][:1] != b"Z"  # the state follows "(comm) "
    state = _ps(pid, "state")
    return state is None or not state.startswith("Z")


def cmdline(pid: int) -> Optional[str]:
    """The command line of ``pid``, its arguments joined by spaces; None if it cannot be read."""
    raw = _read(pid, "cmdline")
    if raw is not None:
        return raw.replace(b"\0", b" ").decode("utf-8", "replace")
    return _ps(pid, "command")


def rss(pid: int) -> Optional[int]:
    """The resident memory of ``pid`` in bytes (VmRSS); None if it cannot be read."""
    status = _read(pid, "status")
    if status is not None:
        for line in status.splitlines():
            if line.startswith(b"VmRSS:"):
                return int(line.split()[1]) * 1024
        return None
    kilobytes = _ps(pid, "rss")
    return int(kilobytes) * 1024 if kilobytes is not None and kilobytes.isdigit() else None
