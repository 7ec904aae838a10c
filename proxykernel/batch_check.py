"""``proxykernel check HOST --slurm 'OPTIONS'``: can the login host run this kernel's batch job?

Runs remote_batch.py's test mode on the login host, with ``--python`` and after ``--pre-command`` as
a start does: the scheduler's commands must be on PATH there, a test submission with the options
(``Scheduler.test_submit``: ``sbatch --test-only``) must be accepted, and it says when such a job
would start. Called by ``command.cmd_check`` after ``probe.check``'s steps, over probe's ``Runner``.
"""
from __future__ import annotations

import json
import shlex
import time
from typing import Iterator

from proxykernel import remote_batch
from proxykernel.bootstrap import BootReader, remote_program
from proxykernel.probe import ProbeFailed, Runner, Step, Target, read_probe
from proxykernel.scheduler import job_error, scheduler

__all__ = ["batch_check", "refusal"]

TEST_SCRIPT = "#!/bin/sh\ntrue\n"  # what the test submission reads: a job script; it never runs


def refusal(said: str, code: object) -> str:
    """The scheduler's reason for refusing the options, from what its test submission said: the
    first line that is not usage advice, without the command's ``sbatch: error:`` prefix."""
    for line in said.splitlines():
        line = line.strip()
        if line and not line.startswith("Try "):
            for prefix in ("sbatch:", "error:"):
                line = line[len(prefix):].strip() if line.startswith(prefix) else line
            return line
    return "no message (exit code %s)" % code


def batch_check(run: Runner, target: Target, options: str, name: str = "slurm") -> Iterator[Step]:
    """The steps of the check, as they complete; ProbeFailed (one sentence) ends them."""
    sched = scheduler(name)
    spec = {"label": sched.label, "test": sched.test_submit(), "commands": list(sched.commands),
            "options": shlex.split(options), "script": TEST_SCRIPT}
    started = time.monotonic()
    result = run(target.command(remote_program(remote_batch), [json.dumps(spec)]), b"")
    replies = BootReader().feed(result.stdout)
    found = read_probe(target, replies[0] if replies else None, result.code, result.stderr)
    took = time.monotonic() - started
    if found["missing"]:
        sentence = job_error("job-command", ["job-command", sched.label, found["missing"][0]], target.host)
        raise ProbeFailed(sentence)
    yield Step(name, "%s are on PATH" % ", ".join(sched.commands), took)
    shown = options.strip() or "no options (the site's defaults)"
    if found["code"] != 0:
        raise ProbeFailed("%s refused %s on %s: %s" % (sched.label, shown, target.host,
                                                        refusal(found["said"], found["code"])))
    yield Step("options", "%s accepts %s" % (sched.test_submit()[0], shown))
    estimate = sched.estimated_start(found["said"])
    yield Step("start", "a job would start at %s" % estimate if estimate else
               "no estimated start: %s" % (found["said"] or "nothing said"), ok=estimate is not None)
