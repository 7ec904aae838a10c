"""``proxykernel ps HOST`` and ``proxykernel stop HOST ID|NAME``: the kernels the agent holds on a
host for this user, and ending one (or every detached one).

Called by command.py. One ssh session each: remote_ps.py runs on the remote Python with the
agent's own modules that read the daemons' status files (remote_agent/status.py writes them,
remote_agent/listing.py reads them, removes stale ones, and signals a daemon), sent on its stdin;
no user value reaches the remote shell, and nothing secret is sent or shown. The reply is turned
into a table here (or printed as JSON with ``--json``); times are shown against the remote's own
clock, so a skewed clock shifts nothing.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import remote_agent
from proxykernel import remote_ps
from proxykernel.batch import JOB_PREFIX
from proxykernel.bootstrap import BootReader, remote_program
from proxykernel.probe import ProbeFailed, Runner, Target, read_probe
from proxykernel.remote_batch import JOB
from proxykernel.scheduler import scheduler
from remote_agent.listing import STOP_WAIT

__all__ = ["ask", "request", "kernel_rows", "kernel_row", "stop_lines", "notes", "duration", "memory",
           "AGENT_MODULES", "HEADER", "SHORT_ID", "STOP_WAIT"]

# The agent's modules remote_ps.py runs, in import order.
AGENT_MODULES = ("paths", "procs", "status", "jobs", "listing")
HEADER = ("ID", "SESSION", "PID", "STARTED", "STATE", "MEMORY", "LINGERS UNTIL", "PYTHON")
SHORT_ID = 12  # hex digits of a daemon's id shown in the table; ``stop`` takes any unique prefix


def request(action: str, query: Optional[str] = None, everything: bool = False,
            wait: float = STOP_WAIT) -> bytes:
    """remote_ps.py's stdin: what to do, and the source of the agent's modules that do it."""
    package = os.path.dirname(os.path.abspath(remote_agent.__file__))
    modules = []
    for name in AGENT_MODULES:
        with open(os.path.join(package, name + ".py"), encoding="utf-8") as source:
            modules.append([name, source.read()])
    sched = scheduler()  # the login host's kernels in batch jobs: asked through its interface
    spec = {"label": sched.label, "state": sched.state(), "cancel": sched.cancel(), "running": list(sched.running),
            "waiting": list(sched.waiting), "marker": JOB, "prefix": JOB_PREFIX}
    return json.dumps({"action": action, "query": query, "all": everything, "wait": wait, "scheduler": spec,
                       "modules": modules}).encode()


def ask(run: Runner, target: Target, stdin: bytes) -> Dict[str, Any]:
    """Run remote_ps.py on ``target`` with ``stdin`` (from ``request``); its reply, or ProbeFailed."""
    result = run(target.command(remote_program(remote_ps)), stdin)
    found = BootReader().feed(result.stdout)
    reply: Dict[str, Any] = read_probe(target, found[0] if found else None, result.code, result.stderr)
    return reply


def duration(seconds: float) -> str:
    """``2 h 5 min``: how long, to the unit that matters."""
    seconds = max(0, int(seconds))
    if seconds < 60:
        return "%d s" % seconds
    if seconds < 3600:
        return "%d min" % (seconds // 60)
    if seconds < 86400:
        return "%d h %d min" % (seconds // 3600, seconds % 3600 // 60)
    return "%d d %d h" % (seconds // 86400, seconds % 86400 // 3600)


def memory(size: Optional[int]) -> str:
    """A resident size in bytes as people read it; ``-`` when unknown."""
    if size is None:
        return "-"
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20)):
        if size >= scale:
            return "%.1f %s" % (size / scale, unit) if size < 10 * scale else "%d %s" % (size // scale, unit)
    return "%d KiB" % (size // 1024)


def _printable(text: str) -> str:
    """A remote value shown on our terminal: no control characters (a notebook's path is anyone's)."""
    return "".join(char if char.isprintable() else "?" for char in text)


def _until(until: float, remote_now: float, local_now: float) -> str:
    """A remote deadline as our clock will read it, and how far off it is."""
    left = until - remote_now
    if left <= 0:
        return "now"
    when = time.localtime(local_now + left)
    return "%s (in %s)" % (time.strftime("%a %H:%M" if left > 20 * 3600 else "%H:%M", when), duration(left))


def _job(kernel: Dict[str, Any]) -> str:
    """``job 1234 RUNNING on n7``, ``job 1234 PENDING (Resources)``: what the scheduler says of it
    (just ``job 1234`` when only the daemon's status file said it)."""
    words = ["job", str(kernel["job"])]
    state, reason, node = (kernel.get(key) for key in ("job_state", "job_reason", "node"))
    if state:
        words.append(str(state))
        if node and state == "RUNNING":
            words += ["on", str(node)]
        elif reason and reason != "None":
            words.append("(%s)" % reason)
    return _printable(" ".join(words))


def kernel_row(kernel: Dict[str, Any], remote_now: float, local_now: float) -> Tuple[str, ...]:
    """One line of ``proxykernel ps`` for one kernel of the reply; a kernel known only from its
    batch job (``status`` False: its daemon's file is on the compute node) shows the job alone."""
    if kernel.get("status") is False:
        return (kernel["id"][:SHORT_ID], "-", "-", "-", _job(kernel), "-", "-", "-")
    since = remote_now - float(kernel.get("since") or remote_now)
    state = "%s (%s)" % ("attached" if kernel.get("attached") else "detached", duration(since))
    if kernel.get("persistent"):
        state += ", persistent"
    if kernel.get("job"):  # a kernel in a batch job (--slurm)
        state += ", " + _job(kernel)
    started = kernel.get("started")
    until = kernel.get("lingers_until")
    return (kernel["id"][:SHORT_ID], _printable(kernel.get("session") or "-"),
            str(kernel.get("kernel_pid") or "-"),
            duration(remote_now - started) + " ago" if started is not None else "-", state,
            memory(kernel.get("rss")), _until(until, remote_now, local_now) if until is not None else "-",
            _printable(kernel.get("python") or "-"))


def kernel_rows(reply: Dict[str, Any], local_now: float) -> List[Tuple[str, ...]]:
    """The table of ``proxykernel ps`` (header first), oldest kernel first (one between kernels
    last), for a reply received
    when our clock read ``local_now``."""
    kernels = sorted(reply["kernels"], key=lambda kernel: kernel.get("started") or reply["now"])
    return [HEADER] + [kernel_row(kernel, reply["now"], local_now) for kernel in kernels]


def notes(reply: Dict[str, Any], host: str) -> List[str]:
    """The lines ``proxykernel ps`` prints below its table: what it could not see on ``host``."""
    said = []
    if any(kernel.get("status") is False for kernel in reply["kernels"]):
        said.append("note: kernels shown by their job alone run on compute nodes, whose local disk %s cannot "
                    "read: session, pid, memory and attachment are not known here" % host)
    if reply.get("scheduler_missing"):
        said.append("note: %d kernel(s) recorded in batch jobs on %s, but %s is not on PATH there to tell "
                    "whether their jobs run: pass the kernelspec's --pre-command (e.g. 'module load slurm')"
                    % (reply.get("recorded_jobs", 0), host, _printable(reply["scheduler_missing"])))
    return said


def _name(kernel: Dict[str, Any]) -> str:
    session = kernel.get("session")
    return "%s%s" % (kernel["id"][:SHORT_ID], " (%s)" % _printable(session) if session else "")


def stop_lines(reply: Dict[str, Any], host: str, query: Optional[str]) -> Tuple[List[str], Optional[str]]:
    """What ``proxykernel stop`` says about the reply: a line per kernel stopped, and the one
    sentence of an error (a daemon that did not exit in time), if any. ProbeFailed with one
    sentence when ``query`` named no kernel, or several: nothing was stopped then."""
    kernels: Sequence[Dict[str, Any]] = reply["kernels"]
    if query is not None and not reply.get("stopping"):
        if not kernels:
            raise ProbeFailed("no kernel on %s has the id or session name %r (see 'proxykernel ps %s')"
                              % (host, query, host))
        raise ProbeFailed("%r names %d kernels on %s (%s): give more of an id" % (
            query, len(kernels), host, ", ".join(_name(kernel) for kernel in kernels)))
    if not kernels:
        return ["no detached kernel on %s" % host], None
    lines = []
    for kernel in kernels:
        if "seconds" in kernel and kernel.get("cancelled"):
            lines.append("stopped %s, job %s cancelled, in %.1f s" % (
                _name(kernel), _printable(str(kernel["job"])), kernel["seconds"]))
        elif "seconds" in kernel:
            lines.append("stopped %s, kernel pid %s, in %.1f s" % (
                _name(kernel), kernel.get("kernel_pid") or "-", kernel["seconds"]))
        elif kernel["stopped"]:
            lines.append("%s had already stopped" % _name(kernel))
    unseen = [_name(kernel) for kernel in kernels if kernel.get("unreachable")]
    if unseen:
        return lines, ("the agent of %s on %s answers on its socket, but its process is not visible from an ssh "
                       "session there (another PID namespace): it cannot be stopped from here"
                       % (", ".join(unseen), host))
    cancelled = [_name(kernel) for kernel in kernels if not kernel["stopped"] and kernel.get("cancelled")]
    if cancelled:
        return lines, ("the job of %s on %s was cancelled but has not ended yet (see 'proxykernel ps %s')"
                       % (", ".join(cancelled), host, host))
    stuck = [_name(kernel) for kernel in kernels if not kernel["stopped"]]
    if stuck:
        return lines, ("the agent of %s on %s has not exited yet after SIGTERM; it may still be stopping its "
                       "kernel (see 'proxykernel ps %s')" % (", ".join(stuck), host, host))
    return lines, None
