"""``proxykernel ps`` and ``stop`` on a login host: the kernels in batch jobs (``--slurm``) that it
knows from the job files and the scheduler, though their daemons run on compute nodes.

Run by ``listing.answer`` (sent over ssh by ``proxykernel ps``, with ``paths``, ``handoff``,
``procs``, ``status``). The job files are the ones ``remote_batch`` writes on the login host and
``remote_job`` removes when the daemon exits: ``<jobs dir>/<kernel id>`` holds the job id. The
scheduler is asked through the commands of ``proxykernel/scheduler.py``'s interface, sent in the
request as ``scheduler`` (argv lists with ``marker`` where the job id goes, the states that mean
running and waiting, and the prefix of our jobs' names): nothing here names squeue or scancel.
Stdlib only, Python >= 3.8; no daemon imports it.
"""
from __future__ import annotations

import os
import subprocess
from typing import Any, Dict, List, Optional, Tuple

from remote_agent.paths import listed

__all__ = ["recorded", "query", "job_kernels", "merge", "still_ours", "cancel", "forget", "Missing",
           "COMMAND_WAIT"]

COMMAND_WAIT = 20.0  # seconds a scheduler command gets (a busy controller answers slowly)


class Missing(Exception):
    """The scheduler's command is not on PATH here; ``str(error)`` is its name."""


def recorded(directory: str) -> List[Tuple[str, str]]:
    """(kernel id, job id) of each job file in ``directory``, sorted; other files (job outputs
    ``<job>.out``, a file being written ``<id>.new``) are left out."""
    found = []
    for name in listed(directory):
        if "." in name:
            continue
        try:
            with open(os.path.join(directory, name)) as handle:
                job = handle.read().strip()
        except OSError:
            continue
        if job and job.isalnum():
            found.append((name, job))
    return found


def _run(argv: List[str]) -> Tuple[int, str]:
    """Run a scheduler command: its status and stdout. Missing when it is not on PATH."""
    try:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              universal_newlines=True, timeout=COMMAND_WAIT)
    except FileNotFoundError:
        raise Missing(argv[0]) from None
    except (OSError, subprocess.SubprocessError):
        return 1, ""
    return done.returncode, done.stdout


def _filled(argv: List[str], marker: str, job: str) -> List[str]:
    return [arg.replace(marker, job) for arg in argv]


def query(spec: Dict[str, Any], job: str) -> Optional[List[str]]:
    """[STATE, REASON, NODE, NAME] of ``job``, or None once the scheduler has forgotten it (or
    cannot say)."""
    code, out = _run(_filled(spec["state"], spec["marker"], job))
    lines = out.strip().splitlines()
    if code != 0 or not lines:
        return None
    return [field.strip() for field in (lines[0].split("|") + ["", "", ""])[:4]]


def _live(spec: Dict[str, Any], fields: Optional[List[str]]) -> bool:
    """Is this state one of a job that runs or waits, under one of our names?"""
    return (fields is not None and fields[0] in spec["running"] + spec["waiting"]
            and fields[3].startswith(spec["prefix"]))


def job_kernels(spec: Dict[str, Any], directory: str) -> List[Dict[str, Any]]:
    """A ``ps`` row for each kernel of a job file whose job still runs or waits: ``id``, ``job``,
    ``job_state``, ``job_reason``, ``node``. A job id the scheduler has forgotten, or now gives to a
    job not named as ours (a stale file), is left out. Missing if the scheduler is not on PATH."""
    kernels = []
    for kernel_id, job in recorded(directory):
        fields = query(spec, job)
        if fields is not None and _live(spec, fields):
            kernels.append({"id": kernel_id, "job": job, "job_state": fields[0], "job_reason": fields[1],
                            "node": fields[2]})
    return kernels


def merge(kernels: List[Dict[str, Any]], jobbed: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """The status files' kernels with the job rows merged in: a kernel whose daemon's status file is
    readable here (the compute node's disk seen from the login host: rare outside tests) gets the
    job's fields; the others are added as job rows (no session, pid, memory: ``status`` False)."""
    by_id = {kernel["id"]: kernel for kernel in kernels}
    merged = list(kernels)
    for row in jobbed:
        if row["id"] in by_id:
            by_id[row["id"]].update(row, status=True)
        else:
            merged.append(dict(row, status=False))
    for kernel in kernels:
        kernel.setdefault("status", True)
    return merged


def still_ours(spec: Dict[str, Any], directory: str, kernel: Dict[str, Any]) -> bool:
    """The identity check before ``cancel``: the job file of this kernel id still names this job,
    and the scheduler still runs (or queues) it under one of our names."""
    return ((kernel["id"], kernel.get("job")) in recorded(directory)
            and _live(spec, query(spec, str(kernel["job"]))))


def cancel(spec: Dict[str, Any], kernel: Dict[str, Any]) -> bool:
    """Ask the scheduler to end the job of ``kernel`` (after ``still_ours``); did it accept?"""
    return _run(_filled(spec["cancel"], spec["marker"], str(kernel["job"])))[0] == 0


def forget(spec: Dict[str, Any], directory: str, kernel: Dict[str, Any]) -> bool:
    """Has the job of ``kernel`` ended? Then its job file goes, if it still names that job (the
    daemon's own cleanup in the job does it too, when the daemon had time to)."""
    if _live(spec, query(spec, str(kernel["job"]))):
        return False
    if (kernel["id"], kernel["job"]) in recorded(directory):
        try:
            os.unlink(os.path.join(directory, kernel["id"]))
        except OSError:
            pass
    return True
