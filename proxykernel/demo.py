"""``proxykernel demo``: a notebook through a proxied kernel, with no remote host and no configuration.

Starts a private sshd on 127.0.0.1 with throwaway keys (proxykernel/testing/sshd.py, the tests' server),
registers a kernelspec for it in a private Jupyter data directory, runs a small notebook with
nbclient exactly as Jupyter would, prints the outputs and where they ran, and removes everything
it made: the sshd and every process of its sessions, keys, kernelspec, the agent's cache.
Called by ``proxykernel demo`` and ``scripts/demo``; needs root (sshd) and openssh-server.
"""
from __future__ import annotations

import importlib
import os
import shlex
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

__all__ = ["main", "CELLS", "missing_extra"]

# What the ``demo`` extra brings (setup.cfg): the kernel the demo runs, on this machine's own Python
# (its "remote" Python is this one), and what runs the notebook.
EXTRA = ("ipykernel", "nbclient", "nbformat")

CELLS = [
    "import os, socket, sys\n"
    "print('hostname      :', socket.gethostname())\n"
    "print('kernel pid    :', os.getpid())\n"
    "print('python        :', sys.executable, sys.version.split()[0])\n"
    "print('SSH_CONNECTION:', os.environ.get('SSH_CONNECTION'))\n"
    "print('PXK_DEMO      :', os.environ.get('PXK_DEMO'))",
    "sum(i * i for i in range(10**6))",
    "from IPython.display import Markdown\nMarkdown('*rich output* travels too')",
]


@contextmanager
def _private_jupyter(root: Path) -> Iterator[None]:
    """Point Jupyter's kernelspec lookups at ``root`` for the demo's duration only."""
    saved = {name: os.environ.get(name) for name in ("JUPYTER_PATH", "JUPYTER_DATA_DIR")}
    os.environ["JUPYTER_DATA_DIR"] = str(root)
    os.environ["JUPYTER_PATH"] = str(root)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _output_text(output: Dict[str, Any]) -> str:
    if output["output_type"] == "stream":
        return str(output["text"]).rstrip("\n")
    if output["output_type"] == "error":
        return "%s: %s" % (output["ename"], output["evalue"])
    data = output.get("data", {})
    return str(data.get("text/markdown") or data.get("text/plain", ""))


def missing_extra() -> Optional[str]:
    """The sentence for a missing part of the ``demo`` extra, or None; ``main`` asks before it starts
    anything. Imported for real, not just looked up: a broken install fails here, not halfway through
    the notebook with nbclient's traceback (the kernel is this very Python, reached over ssh)."""
    for name in EXTRA:
        try:
            importlib.import_module(name)
        except ImportError as error:
            return "%s: install the demo's extra with pip install 'proxykernel[demo]'" % error
    return None


def run_demo() -> List[str]:
    """Everything the demo does; returns the paths it made (all gone when it returns)."""
    import nbformat
    from nbclient import NotebookClient

    from proxykernel.manage import add_kernel
    from proxykernel.testing.sshd import SSHServer

    made: List[str] = []
    began = time.monotonic()
    with ExitStack() as stack:
        server = stack.enter_context(SSHServer())
        assert server.tmpdir is not None  # set by start(), until stop()
        made.append(server.tmpdir)
        print("private sshd on 127.0.0.1:%d (pid %d), throwaway keys in %s"
              % (server.port, server.pid, server.tmpdir))
        home = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pxk-demo-")))
        made.append(str(home))
        stack.enter_context(_private_jupyter(home / "jupyter"))
        name = add_kernel(
            host=server.alias, display_name="SSH demo (loopback sshd)", local_python_path=sys.executable,
            remote_python_path=sys.executable, timeout=30, ssh_config=server.config_path,
            env={"PXK_DEMO": "set in the kernelspec, sent inside the stream"},
            # The agent's cache goes into the demo's directory, so the demo leaves nothing behind.
            pre_command="export XDG_CACHE_HOME=%s" % shlex.quote(str(home / "cache")))
        print("kernelspec %s in %s" % (name, home / "jupyter"))
        marks: Dict[str, float] = {}
        notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in CELLS])
        client = NotebookClient(notebook, kernel_name=name, timeout=60, startup_timeout=60,
                                on_notebook_start=lambda **_: marks.setdefault("ready", time.monotonic()))
        started = time.monotonic()
        client.execute()
        finished = time.monotonic()
        for number, cell in enumerate(notebook.cells, 1):
            print("\nIn [%d]: %s" % (number, cell.source.replace("\n", "\n        ")))
            for output in cell.outputs:
                print("Out[%d]: %s" % (number, _output_text(output).replace("\n", "\n        ")))
        print("\nkernel ready in %.2f s; the notebook ran in %.2f s; this demo is pid %d"
              % (marks.get("ready", finished) - started, finished - marks.get("ready", started), os.getpid()))
    gone = all(not os.path.exists(path) for path in made)
    print("removed the sshd, its keys, the kernelspec and the agent cache%s; total %.1f s"
          % ("" if gone else " (some paths remain!)", time.monotonic() - began))
    return made


def main() -> int:
    """Entry point of ``proxykernel demo`` and ``python -m proxykernel.demo``."""
    missing = missing_extra()
    if missing:
        sys.stderr.write("proxykernel demo: error: %s\n" % missing)
        return 1
    if os.geteuid() != 0:
        sys.stderr.write("proxykernel demo: error: the demo starts its own sshd, which needs root; "
                         "run it as root (scripts/demo does)\n")
        return 1
    try:
        run_demo()
    except FileNotFoundError as error:
        sys.stderr.write("proxykernel demo: error: %s is missing: install openssh-server (scripts/demo "
                         "does)\n" % (error.filename or error))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
