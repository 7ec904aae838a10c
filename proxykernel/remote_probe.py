"""The probe: what ``proxykernel check`` and ``deploy`` run on the remote Python (probe.py).

Sent as text after remote_checks.py, with the same rules (Python 2.7 syntax, only os and sys
imported before ``require_python``), as ``python -c TEXT SHA256``. It makes the checks a kernel
start makes, then answers ``INFO`` and a base64 JSON object of what a start will find there, and
then echoes each line it reads until the end of its input (``check`` times round trips with it).
"""
import os
import sys

from proxykernel.remote_checks import agent_cache, require_packages, require_python, say

__all__ = ["main", "report"]


def report(sha256):
    # type: (str) -> dict[str, object]
    """The remote Python, its ipykernel, its host, and whether the agent ``sha256`` is cached."""
    import socket
    try:
        from importlib.metadata import version
        ipykernel = version("ipykernel")
    except Exception:  # installed without its metadata: not worth a failure
        ipykernel = "unknown"
    cached = agent_cache(sha256)[1]
    return {"python": sys.version.split()[0], "executable": sys.executable, "ipykernel": ipykernel,
            "hostname": socket.gethostname(), "cached": os.path.isdir(cached), "cache": cached,
            "euid": os.geteuid(), "cwd": os.getcwd()}


def main(argv):
    # type: (list[str]) -> None
    """Run by ``python -c``: ``argv`` is sys.argv, with the agent hash at 1."""
    require_python()
    require_packages()
    import base64
    import json
    say("INFO " + base64.b64encode(json.dumps(report(argv[1])).encode()).decode())
    for line in iter(sys.stdin.buffer.readline, b""):
        os.write(1, line)


if __name__ == "__main__":
    main(sys.argv)
