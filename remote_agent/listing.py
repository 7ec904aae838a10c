"""``proxykernel ps`` and ``stop`` as they run on the remote: the daemons' status files read, the
stale ones removed, a kernel's memory looked up, a daemon told to stop; on a login host, the
kernels in batch jobs added (``jobs``) and a job cancelled.

Run by ``proxykernel/remote_ps.py`` (sent over ssh with this module's source, ``jobs``, ``status``,
``procs``, ``handoff`` and ``paths``): ``answer`` takes the request the local side sent and returns
what it prints. Stdlib only, Python >= 3.8; no daemon imports it.
"""
from __future__ import annotations

import os
import signal
import socket
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from remote_agent import jobs, procs
from remote_agent.paths import runtime_dir
from remote_agent.status import read_statuses

__all__ = ["answer", "list_kernels", "answers", "daemon_state", "is_daemon", "find", "stop", "with_jobs",
           "STOP_WAIT", "OURS", "ALIVE", "DEAD"]

STOP_WAIT = 10.0  # seconds a daemon gets to stop its kernel (SIGTERM, SIGKILL 3 s later) and exit
ANSWER_WAIT = 2.0  # seconds a daemon's socket gets to accept a connection (it accepts on its next loop turn)
SOCKET_SUFFIX = ".sock"
OURS, ALIVE, DEAD = "ours", "alive", "dead"  # daemon_state's answers
Batch = Tuple[Dict[str, Any], str]  # the scheduler's commands (``jobs``) and the job files' directory


def answers(path: str) -> Optional[bool]:
    """Does a daemon listen on the unix socket at ``path``? False only when it is known not to
    (no such file, or the connection is refused: nobody listens); None when it cannot be told (a
    timeout, no permission), which counts as alive: a status file is never removed on a guess."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(ANSWER_WAIT)
    try:
        sock.connect(path)
    except (FileNotFoundError, ConnectionRefusedError):
        return False
    except OSError:
        return None
    finally:
        sock.close()  # a connection that brings no stream: the daemon skips it
    return True


def daemon_state(status: Dict[str, Any], directory: str) -> str:
    """What is known of the daemon that wrote ``status``: ``OURS`` (alive, and its ``agent_pid`` is
    that daemon: its command line names its id, or where that cannot be read it answers on its
    socket), ``ALIVE`` (it answers on its socket, but its pid is not one we can see as it, as from
    another PID namespace or a container: never signalled), or ``DEAD`` (its socket is gone or
    refuses connections). A pid reused by another process is never taken for the daemon."""
    path = os.path.join(directory, status["id"] + SOCKET_SUFFIX)
    if not os.path.exists(path):
        return DEAD
    pid = status.get("agent_pid")
    visible = isinstance(pid, int) and pid > 1 and procs.alive(pid)
    line = procs.cmdline(pid) if visible and isinstance(pid, int) else None
    if line is not None and ("--id " + status["id"]) in line:
        return OURS
    if answers(path) is False:
        return DEAD
    return OURS if visible and line is None else ALIVE


def is_daemon(status: Dict[str, Any], directory: str) -> bool:
    """Is the status's ``agent_pid`` still the daemon that wrote it (``stop`` may signal it)?"""
    return daemon_state(status, directory) == OURS


def list_kernels(directory: str) -> List[Dict[str, Any]]:
    """The kernels of the live daemons in ``directory``, each status with ``rss`` (the kernel's
    resident bytes, None if unknown) and ``lingers_until`` (detached: ``since`` + ``linger``);
    status files of daemons known to be dead are removed."""
    kernels = []
    for path, status in read_statuses(directory):
        if daemon_state(status, directory) == DEAD:
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


def _begin(kernel: Dict[str, Any], directory: str, batch: Optional[Batch]) -> Optional[Callable[[], bool]]:
    """Start to stop one kernel: SIGTERM to its daemon where we see it as ours (it stops its kernel
    and exits, and its job ends with it), else its job cancelled where the login host knows it (the
    job file still names the job: ``jobs.still_ours``). Returns what tells when it is over, or None
    with ``stopped`` set: gone meanwhile (True), or not ours to end from here (False)."""
    state = daemon_state(kernel, directory) if kernel.get("status", True) else DEAD
    if state == OURS:
        try:
            os.kill(kernel["agent_pid"], signal.SIGTERM)
        except ProcessLookupError:
            kernel["stopped"] = True
            return None
        except PermissionError:
            return None  # not ours after all: left alone, and reported as not stopped
        pid = kernel["agent_pid"]
        return lambda: not procs.alive(pid)
    if kernel.get("job") and batch is not None:
        spec, jobs_dir = batch
        if not jobs.still_ours(spec, jobs_dir, kernel):
            kernel["stopped"] = jobs.forget(spec, jobs_dir, kernel)  # ended meanwhile, or not ours
            return None
        if jobs.cancel(spec, kernel):
            kernel["cancelled"] = True
            return lambda: jobs.forget(spec, jobs_dir, kernel)
        return None
    kernel["stopped"] = state == DEAD
    kernel["unreachable"] = state == ALIVE  # alive, but its pid is not visible from this session
    return None


def stop(kernels: List[Dict[str, Any]], directory: str, wait: float,
         batch: Optional[Batch] = None) -> List[Dict[str, Any]]:
    """End each of ``kernels`` (``_begin``), then wait up to ``wait`` seconds for all of them;
    each comes back with ``stopped`` and, if it ended meanwhile, ``seconds``."""
    began = time.monotonic()
    waiting = []
    for kernel in kernels:
        kernel["stopped"] = False
        done = _begin(kernel, directory, batch)
        if done is not None:
            waiting.append((kernel, done))
    while waiting and time.monotonic() - began < wait:
        time.sleep(0.05)
        for kernel, done in list(waiting):
            if done():
                kernel["stopped"], kernel["seconds"] = True, time.monotonic() - began
                waiting.remove((kernel, done))
    return kernels


def _batch(request: Dict[str, Any]) -> Optional[Batch]:
    """The scheduler's commands and the job files' directory, when the request has them."""
    spec, jobs_dir = request.get("scheduler"), request.get("jobs_dir")
    return (spec, jobs_dir) if spec and jobs_dir else None


def with_jobs(reply: Dict[str, Any], batch: Optional[Batch]) -> None:
    """Add to ``reply["kernels"]`` the kernels in batch jobs that the login host knows (``jobs``);
    where the scheduler's command is not on PATH, say so in ``scheduler_missing`` instead."""
    if batch is None:
        return
    try:
        reply["kernels"] = jobs.merge(reply["kernels"], jobs.job_kernels(*batch))
    except jobs.Missing as missing:
        reply["scheduler_missing"] = str(missing)
        reply["recorded_jobs"] = len(jobs.recorded(batch[1]))


def answer(request: Dict[str, Any]) -> Dict[str, Any]:
    """What ``proxykernel ps``/``stop`` asked (``action``: "ps" or "stop", with ``query`` or
    ``all``, and ``wait``; ``scheduler`` and ``jobs_dir`` for kernels in batch jobs), answered with
    this host's name, its clock and the kernels concerned. ``stop`` of a query that names no
    kernel, or several, stops nothing and returns the matches; ``--all`` takes only kernels known
    to be detached (a job row's attachment is on its node)."""
    directory = runtime_dir()
    reply: Dict[str, Any] = {"hostname": socket.gethostname(), "now": time.time(),
                             "kernels": list_kernels(directory)}
    batch = _batch(request)
    with_jobs(reply, batch)
    if request.get("action") != "stop":
        return reply
    kernels: List[Dict[str, Any]] = reply["kernels"]
    if request.get("all"):
        chosen = [k for k in kernels if k.get("status", True) and not k.get("attached")]
    else:
        chosen = find(kernels, request.get("query") or "")
        if len(chosen) != 1:
            reply["kernels"] = chosen
            return reply
    reply["kernels"] = stop(chosen, directory, float(request.get("wait", STOP_WAIT)), batch)
    reply["stopping"] = True
    return reply
