"""A kernel in a batch job (``--slurm``), on the local side: the command each ssh session runs on
the login host, and what the login host says about the job, as log sentences.

Where the pieces run: the login host runs ``remote_batch.py`` (after ``--pre-command``): it finds
the kernel's job (the one this proxy knows, else the one recorded for the kernel, a restart) or
submits one (the first session of a kernel), waits for it to run, and becomes
``srun --jobid=ID --overlap -u`` running the usual bootstrap and ``attach`` on the job's node. The
job's script runs ``--pre-command`` and ``--workdir`` again on the node and execs the agent daemon
(``remote_job``); the daemon runs the kernel as on any host. All quoting is done
here, with shlex.quote; the login host gets argv lists inside one JSON word.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shlex
import time
from typing import Callable, List, Optional, Protocol, Sequence, TypeVar

from proxykernel import remote_batch, remote_bootstrap, remote_job
from proxykernel.bootstrap import AgentBundle, remote_program, remote_python_command
from proxykernel.scheduler import scheduler
from remote_agent.peek import message_part


class _Start(Protocol):
    """What ``JobWatch.hold`` moves: ``link.Link``'s start (not imported: it imports this module)."""
    ready: bool
    started_at: float


class _Cells(Protocol):
    """Where ``JobWatch.show_in_cell`` writes: ``frontend.Frontend``."""
    def publish_stream(self, text: str, before: Sequence[bytes]) -> None: ...

__all__ = ["batch_command", "job_name", "JobWatch", "ATTACH_WAIT", "JOB_PREFIX"]

JOB_PREFIX = "proxykernel-"  # begins the name of every job we submit (``proxykernel ps`` looks for it)
ATTACH_WAIT = 60.0  # how long a session's attach waits for the agent of a job that has just started
log = logging.getLogger("proxykernel")
T = TypeVar("T")


def job_name(connection_file: str, session: Optional[str] = None) -> str:
    """``proxykernel-<notebook>`` (Jupyter Server's ``JPY_SESSION_NAME``, the notebook's path), else
    ``proxykernel-<kernel id>`` from the connection file's name, in the characters Slurm shows as is."""
    if session is None:
        session = os.environ.get("JPY_SESSION_NAME", "")
    tag = os.path.splitext(os.path.basename(session))[0] if session else ""
    if not tag:
        tag = os.path.splitext(os.path.basename(connection_file))[0]
        tag = tag[len("kernel-"):] if tag.startswith("kernel-") else tag
    return JOB_PREFIX + (re.sub(r"[^A-Za-z0-9._+-]", "_", tag)[:40] or "kernel")


def batch_command(python: str, bundle: AgentBundle, agent_args: Sequence[str], kernel: str, *,
                  options: str, name: str, queue_timeout: Optional[float] = None,
                  pre_command: Optional[str] = None, workdir: Optional[str] = None,
                  job: Optional[str] = None) -> str:
    """The login host's command line for a session of this kernel (``config.ssh_command``), with
    the sbatch ``options`` (one string, split as a shell would) and the job's ``name``: with ``job``
    (a reconnect) only that job is used; without, the first session submits one if the kernel has
    none running."""
    sched = scheduler()
    boot = remote_program(remote_bootstrap)
    # The step inherits the login shell's environment (after --pre-command): no second pre-command.
    step = shlex.split(remote_python_command(python, boot, [bundle.sha256, *agent_args,
                                                                     "--wait-daemon", "%g" % ATTACH_WAIT]))
    script = "#!/bin/sh\nexec " + remote_python_command(
        python, remote_program(remote_job), [bundle.sha256, sched.job_variable, *agent_args],
        pre_command=pre_command, workdir=workdir) + "\n"
    spec = {"label": sched.label, "kernel": kernel, "job": job or "", "may_submit": job is None,
            "queue_timeout": queue_timeout, "submit": sched.submit(name),
            "options": shlex.split(options), "script": script, "attach": sched.attach(step),
            "state": sched.state(), "cancel": sched.cancel(), "running": list(sched.running),
            "waiting": list(sched.waiting)}
    return remote_python_command(python, remote_program(remote_batch), [json.dumps(spec)],
                                 pre_command=pre_command)


class JobWatch:
    """What the login host says about the job (its ``PXKJOB`` lines on ssh's stderr), for the log
    and for the proxy: the job id (reconnects attach to it), whether it waits in the queue (the
    start's ``--timeout`` counts from when it runs) and the last news (shown in a cell run meanwhile).
    Made by every ``Proxy`` (``enabled`` for a ``--slurm`` kernel); ``feed`` gets every stderr line
    of every ssh, ``hold`` is called on each tick, ``show_in_cell`` with each frontend message."""

    def __init__(self, enabled: bool, clock: Callable[[], float] = time.monotonic) -> None:
        self.enabled = enabled
        self.reconnect: Optional[Callable[..., List[str]]] = None  # config.ssh_command(..., job=)
        self.job: Optional[str] = None
        self.waiting = False
        self.clock = clock
        self.state: List[str] = []  # the last state line's fields: label, job, state, reason, seconds, node
        self.told_at = 0.0  # when it came (``clock``)

    @property
    def news(self) -> str:
        """The sentence about the job, as of now: the time waited counts on between reports."""
        if not self.state:
            return ""
        label, job, state, reason, seconds, node = self.state
        try:
            waited = float(seconds)  # since the submission, when the line came
        except ValueError:  # not from remote_batch.py: not worth a failure
            waited = 0.0
        if not self.waiting:  # to the hundredth of a second under 10 s: what the benchmark reads
            shown = "%.2f" % waited if waited < 10 else "%.0f" % waited
            return "%s job %s RUNNING on %s after %s s in the queue" % (label, job, node, shown)
        why = " (%s)" % reason if reason not in ("", "None") else ""
        return "%s job %s %s%s for %d s" % (label, job, state, why, int(waited + self.clock() - self.told_at))

    def feed(self, line: str) -> bool:
        """True if ``line`` was the login host's news (then logged), else the caller's."""
        if not self.enabled or not line.startswith(remote_batch.NEWS):
            return False
        kind, _, rest = line[len(remote_batch.NEWS):].partition(" ")
        fields: List[str] = rest.split("|")
        if kind == "out" and len(fields) >= 3:
            log.info("%s job %s output: %s", fields[0], fields[1], "|".join(fields[2:]))
        elif kind == "state" and len(fields) >= 6:
            self.state, self.told_at = fields[:6], self.clock()
            self.job = fields[1]
            self.waiting = fields[2] not in scheduler().running
            log.info("%s", self.news)
        return True

    def argv(self, first: List[str]) -> List[str]:
        """The ssh command of the next session: ``first`` until the job is known, then one that
        attaches to that job and never submits another (a reconnect)."""
        if self.job is None or self.reconnect is None:
            return first
        return self.reconnect(job=self.job)

    def news_from(self, on_line: Callable[[T, str], None]) -> Callable[[T, str], None]:
        """Wraps ssh's stderr callback: the login host's ``PXKJOB`` lines are logged here."""
        def on_stderr(source: T, line: str) -> None:
            if not self.feed(line):
                on_line(source, line)
        return on_stderr

    def hold(self, link: _Start, now: float) -> None:
        """On the proxy's tick: while the job waits, the start's ``--timeout`` has not begun."""
        if self.waiting and not link.ready:
            link.started_at = now

    def show_in_cell(self, frontend: Optional[_Cells], channel: str, frames: List[bytes]) -> None:
        """A frontend's message: a cell run while the job waits shows why nothing happens yet."""
        if self.waiting and channel == "shell" and frontend is not None:
            header = message_part(frames, 1)
            if b'"execute_request"' in header:
                frontend.publish_stream("[proxykernel] %s; the cell runs when the job starts\n" % self.news,
                                        [b"<IDS|MSG>", b"", b"", header])  # its parent: the request
