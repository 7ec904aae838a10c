"""The remote side runs on hosts we do not control: it may bring in nothing but the stdlib and pyzmq."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROBE = """
import json, sys
before = set(sys.modules)
import {module}
added = {{name.split(".")[0] for name in set(sys.modules) - before}}
# pyzmq's compiled backend registers Cython's runtime modules: part of pyzmq, not a dependency.
added = {{name for name in added if not name.startswith(("_cython_", "cython_runtime"))}}
print(json.dumps(sorted(added - set(sys.stdlib_module_names))))
"""


@pytest.mark.parametrize("module, allowed", [
    ("remote_agent.attach", {"remote_agent"}),  # runs on every reconnect: stdlib only
    ("remote_agent.handoff", {"remote_agent"}),  # attach's, too
    ("remote_agent.paths", {"remote_agent"}),
    ("remote_agent.listing", {"remote_agent"}),  # with status, procs, paths: sent by `proxykernel ps`
    ("remote_agent.jobs", {"remote_agent"}),  # sent by `proxykernel ps` too
    # A new daemon launches the kernel before it imports zmq: its entry and what that needs first.
    ("remote_agent.daemon", {"remote_agent"}),
    ("remote_agent.link", {"remote_agent"}),
    ("remote_agent.kernel", {"remote_agent"}),
    ("remote_agent.wire", {"remote_agent"}),
    ("remote_agent.stream", {"remote_agent", "zmq"}),
    ("remote_agent.routing", {"remote_agent", "zmq"}),
    ("remote_agent.agent", {"remote_agent", "zmq"}),
])
def test_remote_modules_import_only_stdlib_and_pyzmq(module: str, allowed: set) -> None:
    out = subprocess.run([sys.executable, "-c", PROBE.format(module=module)], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    assert set(json.loads(out)) <= allowed, out


def test_remote_modules_compile_on_the_oldest_python() -> None:
    python = ROOT / ".venvs" / "py38" / "bin" / "python"
    assert python.exists(), "%s is missing: run scripts/setup-test-env" % python
    sources = [str(path) for path in (ROOT / "remote_agent").glob("*.py")]
    subprocess.run([str(python), "-m", "py_compile", *sources], check=True)
