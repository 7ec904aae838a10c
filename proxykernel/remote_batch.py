"""The login host's part of a kernel in a batch job (``--slurm``): find or submit the job, wait
for it to run, then become the step that attaches this session to the agent in the job.

Sent as text after remote_checks.py (``batch.batch_command``), with the same rules (Python 2.7
syntax, only os and sys imported before ``require_python``, no single quote), as
``python -c TEXT SPEC`` on the login host, after ``--pre-command`` (``module load slurm``). SPEC is
one JSON word made by ``proxykernel/batch.py``: every command is an argv (no shell here: user values
stay data), with ``@PXK_JOB@``, ``@PXK_NODE@`` and ``@PXK_CACHE@`` filled in here. It reads nothing
of the stream: it leaves it to the step it becomes (``exec srun ...``), whose bootstrap answers the
proxy as on any host. Its news go to stderr as ``PXKJOB`` lines, which the proxy turns into log
sentences (``batch.JobWatch``); a job that cannot be used ends the session with one ``PXKBOOT ERR
job-...`` line (``scheduler.job_error`` makes the sentence).
"""
import os
import sys

from proxykernel.remote_checks import job_files, require_python, say

MYPY = False
if MYPY:  # for the type comments only (this text must run on any Python up to require_python)
    from typing import Any, Dict, NoReturn  # noqa: F401
    Spec = Dict[str, Any]

__all__ = ["main", "NEWS", "JOB", "NODE", "CACHE"]

NEWS = "PXKJOB "
JOB, NODE, CACHE = "@PXK_JOB@", "@PXK_NODE@", "@PXK_CACHE@"
POLL_FIRST, POLL_MOST = 0.05, 2.0  # seconds between state queries: doubling from the first to the most
REPORT_EVERY = 60.0  # a job still waiting is reported again after this long
OUTPUT_TAIL = 2000  # characters of an ended job output shown


def tell(kind, words):
    # type: (str, list[str]) -> None
    """One ``PXKJOB`` line for the proxy (``state ...`` or ``out ...``) on stderr."""
    sys.stderr.write(NEWS + kind + " " + "|".join(words) + "\n")
    sys.stderr.flush()


def run(spec, argv, values, text=None):
    # type: (Spec, list[str], dict[str, str], str | None) -> tuple[int, str, str]
    """Run a scheduler command (placeholders filled in): its status, stdout and stderr. A command
    that is not there ends the session with ``ERR job-command NAME``."""
    import subprocess
    filled = list(argv)
    for key, value in values.items():
        filled = [arg.replace(key, value) for arg in filled]
    try:
        child = subprocess.Popen(filled, stdin=subprocess.PIPE if text is not None else subprocess.DEVNULL,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    except OSError:
        say("ERR job-command %s %s" % (spec["label"], filled[0]))
        sys.exit(6)
    out, err = child.communicate(text)
    return child.returncode, out, err


def query(spec, job):
    # type: (Spec, str) -> list[str] | None
    """[STATE, REASON, NODE] of ``job``, or None once the scheduler has forgotten it."""
    code, out, _ = run(spec, spec["state"], {JOB: job})
    lines = out.strip().splitlines()
    if code != 0 or not lines:
        return None
    fields = (lines[0].split("|") + ["", ""])[:3]
    return [field.strip() for field in fields]


def read_job(spec):
    # type: (Spec) -> str
    """The job of this kernel that an earlier proxy recorded ("" if none): a restart finds it here."""
    try:
        with open(job_files(spec["kernel"], "")[0]) as handle:
            return handle.read().strip()
    except (IOError, OSError):
        return ""


def submit(spec):
    # type: (Spec) -> str
    """Submit the job (its script on stdin), record its id (0600) for later proxies, return it."""
    job_file = job_files(spec["kernel"], "")[0]
    directory = os.path.dirname(job_file)
    if not os.path.isdir(directory):
        os.makedirs(directory, 0o700)
    code, out, err = run(spec, spec["submit"] + spec["options"], {CACHE: os.path.dirname(directory)},
                         spec["script"])
    job = out.strip().split(";")[0]
    if code != 0 or not job.isdigit():
        say("ERR job-submit %s %s" % (spec["label"], " ".join((err or out).split())))
        sys.exit(6)
    descriptor = os.open(job_file + ".new", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.write(descriptor, job.encode())
    os.close(descriptor)
    os.rename(job_file + ".new", job_file)
    return job


def ended(spec, job, fields):
    # type: (Spec, str, list[str] | None) -> NoReturn
    """The job is over: show the end of its output, forget it, and end the session with ERR."""
    job_file, output = job_files(spec["kernel"], job)
    try:
        with open(output) as handle:
            for line in handle.read()[-OUTPUT_TAIL:].splitlines():
                tell("out", [spec["label"], job, line])
    except (IOError, OSError):
        pass
    if read_job(spec) == job:
        os.unlink(job_file)
    say("ERR job-ended %s %s %s" % (spec["label"], job, fields[0] if fields else "UNKNOWN"))
    sys.exit(6)


def hung_up(poller, seconds):
    # type: (Any, float) -> bool
    """Wait ``seconds``; True if the session ended meanwhile (the stream, our stdin, hung up)."""
    return bool(poller.poll(seconds * 1000))  # registered for no event: only a hang-up or an error


def wait_running(spec, job, since):
    # type: (Spec, str, float) -> str
    """Wait until ``job`` runs; its node. Reports each change of state; cancels the job if the
    session ends or ``queue_timeout`` passes while it waits; ends the session if the job ended."""
    import select
    import time
    poller = select.poll()
    poller.register(0, 0)
    interval, last, told_at = POLL_FIRST, None, 0.0
    while True:
        fields = query(spec, job)
        if fields is None or fields[0] not in spec["running"] + spec["waiting"]:
            ended(spec, job, fields)
        now = time.time()
        if fields != last or now - told_at >= REPORT_EVERY:
            tell("state", [spec["label"], job, fields[0], fields[1], "%.3f" % (now - since), fields[2]])
            last, told_at = fields, now
        if fields[0] in spec["running"]:
            return fields[2]
        limit = spec["queue_timeout"]
        if limit is not None and now - since > limit:
            run(spec, spec["cancel"], {JOB: job})
            say("ERR job-queue-timeout %s %s %d %s %s" % (spec["label"], job, limit, fields[0], fields[1]))
            sys.exit(6)
        if hung_up(poller, interval):
            run(spec, spec["cancel"], {JOB: job})  # nobody waits for it any more: a shutdown while pending
            sys.exit(0)
        interval = min(interval * 2, POLL_MOST)


def on_path(name):
    # type: (str) -> bool
    """Is the command ``name`` on PATH here?"""
    return any(os.access(os.path.join(folder, name), os.X_OK)
               for folder in os.environ.get("PATH", "").split(os.pathsep) if folder)


def dry_run(spec):
    # type: (Spec) -> NoReturn
    """``proxykernel check --slurm`` (batch_check.py): answers ``INFO`` and a base64 JSON object:
    the scheduler commands not on PATH, else the test submission's exit status and what it said."""
    import base64
    import json
    found = {"missing": [name for name in spec["commands"] if not on_path(name)]}  # type: dict[str, object]
    if not found["missing"]:
        code, out, err = run(spec, spec["test"] + spec["options"], {}, spec["script"])
        found.update(code=code, said=(err + out).strip())
    say("INFO " + base64.b64encode(json.dumps(found).encode()).decode())
    sys.exit(0)


def main(argv):
    # type: (list[str]) -> None
    """Run by ``python -c`` on the login host: ``argv[1]`` is the JSON spec."""
    require_python()
    import json
    import time
    spec = json.loads(argv[1])
    if spec.get("test"):
        dry_run(spec)
    job = spec["job"] or read_job(spec)
    if job:
        fields = query(spec, job)
        if fields is None or fields[0] not in spec["running"] + spec["waiting"]:
            if not spec["may_submit"]:
                ended(spec, job, fields)
            job = ""
    since = time.time()
    if not job:
        job = submit(spec)
    node = wait_running(spec, job, since)
    attach = [arg.replace(JOB, job).replace(NODE, node) for arg in spec["attach"]]
    try:
        os.execvp(attach[0], attach)
    except OSError:
        say("ERR job-command %s %s" % (spec["label"], attach[0]))
        sys.exit(6)


if __name__ == "__main__":
    main(sys.argv)
