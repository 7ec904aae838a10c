"""What a batch job runs on its compute node (``--slurm``): the agent daemon itself, with no stream.

Sent as text after remote_checks.py (``batch.batch_command`` writes it into the job's script, after
``--workdir`` and ``--pre-command``), with the same rules (Python 2.7 syntax, only os and sys
imported before ``require_python``, no single quote), as ``python -c TEXT SHA256 VARIABLE AGENT
ARGS...``; the script execs it, so the signals of the scheduler reach it. It waits for the agent
that the first session caches meanwhile (the home directory is shared with the login host), runs
the daemon, and removes the files of the job when the daemon exits (shutdown, --linger, scancel).
Each session then attaches to the daemon through a step of the job (``remote_batch``).
"""
import os
import sys

from proxykernel.remote_checks import agent_cache, job_files, require_packages, require_python

__all__ = ["main", "AGENT_WAIT"]

AGENT_WAIT = 120.0  # seconds the job waits for the agent to appear in the cache


def main(argv):
    # type: (list[str]) -> None
    """Run by ``python -c`` in the job: the agent hash, the variable with the job id, the agent arguments."""
    require_python()
    require_packages()
    import time
    cached = agent_cache(argv[1])[1]
    job = os.environ.get(argv[2], "")
    deadline = time.time() + AGENT_WAIT
    while not os.path.isdir(cached):
        if time.time() > deadline:
            sys.exit("proxykernel: the agent did not appear in %s within %d s: the compute node must "
                     "share the home directory of the login host" % (cached, AGENT_WAIT))
        time.sleep(0.05)
    sys.path.insert(0, cached)
    from remote_agent.daemon import daemon_main
    from remote_agent.handoff import options
    job_file, output = job_files(options(argv[3:]).id, job)
    try:
        daemon_main(argv[3:] + (["--job", job] if job else []))
    finally:
        try:
            with open(job_file) as handle:
                ours = handle.read().strip() == job
        except (IOError, OSError):
            ours = False
        for path in ([job_file] if ours else []) + [output]:
            try:
                os.unlink(path)
            except (IOError, OSError):
                pass


if __name__ == "__main__":
    main(sys.argv)
