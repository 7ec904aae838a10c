"""ps and stop: what ``proxykernel ps`` and ``stop`` run on the remote Python (ps.py).

Sent as text after remote_checks.py, as ``python -c TEXT``, with the same rules (Python 2.7 syntax,
only os and sys imported before ``require_python``). Its input is one JSON object: the request
(``action``, ``query``, ``all``, ``wait``, ``scheduler``) and ``modules``, the source of the agent's
modules that do the work (paths, procs, status, jobs, listing), which it runs as the ``remote_agent``
package (with ``jobs_dir`` added: where the login host records the jobs of --slurm kernels): the remote
reads the status files with the very code that writes them, whether the agent is cached there or not,
and on any Python >= 3.8 (ipykernel not needed). Answers ``INFO`` and a base64 JSON object.
"""
import os
import sys

from proxykernel.remote_checks import job_files, require_python, say

__all__ = ["main", "load_modules"]


def load_modules(package, sources):
    # type: (str, list[list[str]]) -> None
    """Make ``package`` from ``sources`` ([name, text] pairs, in import order) without a file."""
    import types
    parent = types.ModuleType(package)
    parent.__path__ = []  # a package: its modules import each other
    sys.modules[package] = parent
    for name, text in sources:
        module = types.ModuleType(package + "." + name)
        module.__file__ = os.path.join(package, name + ".py")
        sys.modules[module.__name__] = module
        setattr(parent, name, module)
        exec(compile(text, module.__file__, "exec"), module.__dict__)


def main(argv):
    # type: (list[str]) -> None
    """Run by ``python -c``; the request comes on stdin."""
    require_python()
    import base64
    import json
    request = json.loads(sys.stdin.read())
    request["jobs_dir"] = os.path.dirname(job_files("", "")[0])  # where the login host records jobs
    load_modules("remote_agent", request["modules"])
    from remote_agent.listing import answer
    say("INFO " + base64.b64encode(json.dumps(answer(request)).encode()).decode())


if __name__ == "__main__":
    main(sys.argv)
