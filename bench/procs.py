"""Process bookkeeping for the benchmark: who is the proxy, the agent, the kernel, and their peak RSS.

Reads /proc only. The "remote" side runs inside the loopback sshd's PID namespace, so pids the remote
prints (the agent's Ready info) are namespace pids; we never rely on them and find processes from the
host side instead: a kernel is a process whose command line runs ``ipykernel_launcher``, and the agent
is its parent (then any other non-kernel Python process of the same ssh session counts as agent too,
which covers an agent split into a detached daemon and an attach process).
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Set

from proxykernel.testing.procs import all_pids, descendants, pid_namespace, process_table, read_stat

__all__ = ["peak_rss_mb", "cmdline", "kernel_pids", "remote_agent_pids", "local_side_pids",
           "alive", "namespace_pid", "all_pids"]


def _status(pid: int) -> Dict[str, str]:
    try:
        with open("/proc/%d/status" % pid) as handle:
            return dict(line.rstrip("\n").split(":\t", 1) for line in handle if ":\t" in line)
    except OSError:
        return {}


def peak_rss_mb(pids: Iterable[int]) -> float:
    """Sum of VmHWM (peak resident set) of ``pids`` in MB (2**20 bytes); gone processes count 0."""
    total_kb = 0
    for pid in pids:
        value = _status(pid).get("VmHWM", "0 kB").split()[0]
        total_kb += int(value)
    return total_kb / 1024.0


def namespace_pid(pid: int) -> Optional[int]:
    """The pid of ``pid`` inside its innermost PID namespace (the last NSpid field)."""
    fields = _status(pid).get("NSpid", "").split()
    return int(fields[-1]) if fields else None


def cmdline(pid: int) -> List[str]:
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as handle:
            return [part.decode("utf-8", "replace") for part in handle.read().split(b"\0") if part]
    except OSError:
        return []


def alive(pid: int) -> bool:
    stat = read_stat(pid)
    return stat is not None and stat[1] != "Z"


def _is_kernel(pid: int) -> bool:
    return any("ipykernel_launcher" in part or part.endswith("ipykernel") for part in cmdline(pid))


def _is_sshd(pid: int) -> bool:
    stat = read_stat(pid)
    return stat is None or stat[0] in ("sshd", "unshare")


def kernel_pids(root_pid: int) -> List[int]:
    """Live kernels below ``root_pid`` (the sshd's unshare process, or a local proxy/launcher)."""
    return [p for p in descendants(root_pid) if alive(p) and _is_kernel(p)]


def remote_agent_pids(sshd_pid: int) -> List[int]:
    """The agent process(es) on the "remote" side: the parent of each kernel, plus any other live
    process in the sshd's namespace that is neither sshd, nor a kernel or a kernel's descendant
    (so each session's attach process counts too, whatever it runs as)."""
    table = process_table()
    tree = [p for p in descendants(sshd_pid, table) if p in table and table[p][1] != "Z"]
    kernels = [p for p in tree if _is_kernel(p)]
    under_kernels: Set[int] = set()
    for kernel in kernels:
        under_kernels.update(descendants(kernel, table))
    agents = {table[k][2] for k in kernels}
    ns = pid_namespace(kernels[0]) if kernels else None
    for pid in tree:
        if (pid not in kernels and pid not in under_kernels and not _is_sshd(pid)
                and (ns is None or pid_namespace(pid) == ns)):
            agents.add(pid)
    return sorted(p for p in agents if alive(p))


def local_side_pids(root_pid: int) -> Dict[str, List[int]]:
    """The process Jupyter started (proxy or launcher) and the ``ssh`` clients below it."""
    below = [p for p in descendants(root_pid) if alive(p)]
    ssh = [p for p in below if (read_stat(p) or ("",))[0] == "ssh"]
    return {"main": [root_pid] if alive(root_pid) else [], "ssh": ssh}
