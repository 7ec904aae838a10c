"""The first checks of every program proxykernel runs on the remote Python, and the reply line.

Not imported on the remote: ``bootstrap.remote_program`` sends this text ahead of each program
(remote_bootstrap.py, remote_probe.py, remote_discover.py) in one ``python -c``. That Python may be
any version, and it compiles the whole text before running a line, so the text keeps to syntax
that Python 2.7 parses (type comments, no f-strings) and imports nothing at the top but os and sys:
an old Python then reaches ``require_python`` and says so in one line instead of a traceback.
"""
import os
import sys

__all__ = ["MARK", "say", "require_python", "require_packages", "agent_cache", "job_files"]

# Starts the one line a remote program answers with (bootstrap.BootReader looks for it).
MARK = "\nPXKBOOT "
# The agent's oldest Python (remote_agent/ uses its syntax); the bootstrap and the probe check it.
OLDEST = (3, 8)
# What the agent imports besides the stdlib: ipykernel brings the other two.
PACKAGES = ("ipykernel", "zmq", "jupyter_client")


def say(words):
    # type: (str) -> None
    """Write the reply line (``HAVE``, ``ERR missing ...``) on fd 1, unbuffered; every program
    calls it once, or last before it exits."""
    os.write(1, (MARK + words + "\n").encode())


def require_python():
    # type: () -> None
    """First thing the bootstrap and the probe do: exit with ``ERR old-python`` below 3.8."""
    if sys.version_info < OLDEST:
        say("ERR old-python %d.%d %s" % (sys.version_info[0], sys.version_info[1], sys.executable))
        sys.exit(3)


def require_packages():
    # type: () -> None
    """Exit with ``ERR missing`` and the names the agent cannot import; called after require_python."""
    import importlib.util
    missing = [name for name in PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        say("ERR missing %s %s" % (",".join(missing), sys.executable))
        sys.exit(3)


def agent_cache(sha256):
    # type: (str) -> tuple[str, str]
    """The proxykernel cache directory of this user and, in it, the directory of the agent ``sha256``."""
    directory = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "proxykernel")
    return directory, os.path.join(directory, "agent-" + sha256)


def job_files(kernel_id, job):
    # type: (str, str) -> tuple[str, str]
    """For a kernel run in a batch job (``--slurm``): the file that names its job (written on the
    login host by remote_batch, read by the sessions of later proxies: a restart) and the output of
    the job; both in the cache (a home directory that login hosts and compute nodes share), removed
    by the bootstrap in the job when its agent exits."""
    directory = os.path.join(agent_cache("")[0], "jobs")
    return os.path.join(directory, kernel_id), os.path.join(directory, "%s.out" % job)
