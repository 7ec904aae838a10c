"""How proxykernel reaches a batch scheduler: one small interface, and its Slurm implementation.

The scheduler is driven on the login host by ``remote_batch.py``, through four commands that
``Scheduler`` gives as argv lists (run with no shell, so user values stay data):

- ``submit(name)``: reads the job script on stdin, prints the job id (its first word before a ``;``);
  the user's options follow it, and the job's output goes to ``@PXK_CACHE@/jobs/<job id>.out``;
- ``attach(command)``: runs ``command`` as a new step of the running job ``@PXK_JOB@`` on its node
  ``@PXK_NODE@``, with the session's stdin and stdout, byte-exact and unbuffered;
- ``state()``: prints ``STATE|REASON|NODE|NAME`` for the job; nothing (or fails) once it is forgotten
  (``proxykernel ps`` on the login host asks it too, for each job file: remote_agent/jobs.py);
- ``cancel()``: ends the job (a shutdown while pending, and ``proxykernel stop`` from the login host);
- ``test_submit()``: checks the options (that follow it) without submitting, and says when such a
  job would start, which ``estimated_start`` picks out (``proxykernel check --slurm``).

plus which states mean running and which waiting (any other: ended), and the variable in which
the job's processes find its id. PBS or LSF would be one more subclass; nothing else changes.
Made by ``batch.batch_command`` (the proxy's start) and ``probe`` (``proxykernel check``).
"""
from __future__ import annotations

import re

from typing import List, Optional, Sequence, Tuple

from proxykernel.remote_batch import CACHE, JOB, NODE

__all__ = ["Scheduler", "Slurm", "scheduler", "job_error"]


class Scheduler:
    """The interface; see the module's docstring."""
    label = ""  # how the logs name it: "Slurm job 1234 ..."
    job_variable = ""  # the environment variable with the job id, in the job
    running: Tuple[str, ...] = ()
    waiting: Tuple[str, ...] = ()
    commands: Tuple[str, ...] = ()  # what ``proxykernel check`` looks for on the login host

    def submit(self, name: str) -> List[str]:
        raise NotImplementedError

    def test_submit(self) -> List[str]:
        """Like ``submit``, but only checks the options and prints the estimated start."""
        raise NotImplementedError

    def estimated_start(self, said: str) -> Optional[str]:
        """What ``test_submit`` said (stderr and stdout) about when the job would start; None if nothing."""
        raise NotImplementedError

    def attach(self, command: Sequence[str]) -> List[str]:
        raise NotImplementedError

    def state(self) -> List[str]:
        raise NotImplementedError

    def cancel(self) -> List[str]:
        raise NotImplementedError


class Slurm(Scheduler):
    """Slurm (``sbatch``, ``srun``, ``squeue``, ``scancel``), 20.11 or newer (``srun --overlap``)."""
    label = "Slurm"
    job_variable = "SLURM_JOB_ID"
    running = ("RUNNING",)
    waiting = ("PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SUSPENDED")
    commands = ("sbatch", "srun", "squeue", "scancel")

    def submit(self, name: str) -> List[str]:
        return ["sbatch", "--parsable", "--job-name=" + name, "--output=%s/jobs/%%j.out" % CACHE]

    def test_submit(self) -> List[str]:
        return ["sbatch", "--test-only"]

    def estimated_start(self, said: str) -> Optional[str]:
        # "sbatch: Job 2 to start at 2024-05-02T10:16:02 using 1 processors on nodes n7 in partition debug"
        found = re.search(r"to start at (\S+)(?: using (.*))?", said)
        if found is None:
            return None
        return found.group(1) + (" (%s)" % found.group(2).strip() if found.group(2) else "")

    def attach(self, command: Sequence[str]) -> List[str]:
        # --overlap: beside the job's other steps (else a second step waits); -u: bytes unbuffered
        # (stdout a raw pty, stdin a pipe); one task on the node where the batch script (the agent) runs.
        return ["srun", "--jobid=" + JOB, "--overlap", "-u", "--nodes=1", "--ntasks=1", "--nodelist=" + NODE,
                *command]

    def state(self) -> List[str]:
        return ["squeue", "--noheader", "--states=all", "--jobs=" + JOB, "--format=%T|%r|%B|%j"]

    def cancel(self) -> List[str]:
        return ["scancel", JOB]


def scheduler(name: str = "slurm") -> Scheduler:
    """The scheduler named ``name``; only Slurm for now."""
    if name != "slurm":
        raise ValueError("unknown batch scheduler %r (known: slurm)" % name)
    return Slurm()


def job_error(what: str, words: Sequence[str], host: str) -> Optional[str]:
    """The sentence for the login host's ``ERR job-...`` line (``bootstrap.boot_error`` asks);
    None if ``what`` is not one of them."""
    label, rest = (words[1], list(words[2:])) if len(words) > 1 else ("batch", [])
    if what == "job-ended" and len(rest) >= 2:
        state = "" if rest[1] == "UNKNOWN" else ": " + rest[1]
        return "%s job %s ended%s" % (label, rest[0], state)
    if what == "job-queue-timeout" and len(rest) >= 3:
        reason = " (%s)" % " ".join(rest[3:]) if rest[3:] not in ([], ["None"]) else ""
        return ("%s job %s still %s%s after %s s (--queue-timeout); it was cancelled"
                % (label, rest[0], rest[2], reason, rest[1]))
    if what == "job-submit":
        return "%s refused the job on %s: %s" % (label, host, " ".join(rest))
    if what == "job-command" and rest:
        return ("%s's %s is not on PATH on %s: load it with --pre-command (e.g. 'module load slurm')"
                % (label, rest[0], host))
    return None
