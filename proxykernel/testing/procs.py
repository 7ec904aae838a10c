"""The process table, read from /proc (Linux): who is whose child, in which group and PID namespace.

The tests use it to check that nothing outlives them, the benchmark to find the proxy, the agent and
the kernel, and ``sshd.SSHServer`` to stop everything its "remote" side started.
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional, Set, Tuple

__all__ = ["Stat", "read_stat", "all_pids", "process_table", "pids_in_pgroup", "descendants", "pipes",
           "pid_namespace", "pids_in_namespace"]

Stat = Tuple[str, str, int, int, int]  # comm, state, ppid, pgid, sid


def read_stat(pid: int) -> Optional[Stat]:
    """(comm, state, ppid, pgid, sid) of a process from /proc/PID/stat, or None if gone."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            data = f.read().decode("utf-8", "replace")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # comm is in parentheses and may itself contain ") "; split at the last ")".
    lpar, rpar = data.index("("), data.rindex(")")
    fields = data[rpar + 2:].split()
    return data[lpar + 1:rpar], fields[0], int(fields[1]), int(fields[2]), int(fields[3])


def all_pids() -> List[int]:
    """Every pid /proc shows now."""
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def process_table() -> Dict[int, Stat]:
    """{pid: (comm, state, ppid, pgid, sid)} for all processes."""
    table = {}
    for pid in all_pids():
        st = read_stat(pid)
        if st is not None:
            table[pid] = st
    return table


def pids_in_pgroup(pgid: int) -> List[int]:
    """Live (non-zombie) processes whose process group is ``pgid``."""
    return sorted(p for p, st in process_table().items() if st[3] == pgid and st[1] != "Z")


def descendants(pid: int, table: Optional[Dict[int, Stat]] = None) -> List[int]:
    """All descendants of ``pid`` (by ppid), as a sorted list."""
    table = process_table() if table is None else table
    children: Dict[int, List[int]] = {}
    for p, st in table.items():
        children.setdefault(st[2], []).append(p)
    out: List[int] = []
    todo = list(children.get(pid, ()))
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, ()))
    return sorted(out)


def pipes(pid: int) -> Set[str]:
    """The pipes ``pid`` has open, as /proc/PID/fd shows them (``pipe:[INODE]``)."""
    found: Set[str] = set()
    try:
        names = os.listdir("/proc/%d/fd" % pid)
    except OSError:
        return found
    for name in names:
        try:
            target = os.readlink("/proc/%d/fd/%s" % (pid, name))
        except OSError:
            continue
        if target.startswith("pipe:"):
            found.add(target)
    return found


def pid_namespace(pid: int) -> Optional[str]:
    """The PID namespace of a process ('pid:[4026...]'), or None if gone."""
    try:
        return os.readlink("/proc/%d/ns/pid" % pid)
    except OSError:
        return None


def pids_in_namespace(ns: str) -> List[int]:
    """Live (non-zombie) processes in PID namespace ``ns`` (as from pid_namespace())."""
    out = []
    for pid in all_pids():
        if pid_namespace(pid) == ns:
            st = read_stat(pid)
            if st is not None and st[1] != "Z":
                out.append(pid)
    return sorted(out)
