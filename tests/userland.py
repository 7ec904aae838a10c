"""Helpers for tests that use proxykernel as a user does: its commands as subprocesses, a private
Jupyter data directory, notebooks run by ``jupyter execute``."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any, Dict, List, Sequence

import nbformat
import pytest

# A value that would run something if any layer between us and the remote kernel forgot to quote.
PWNED = Path("/tmp/pwned")
NASTY = "a $(touch %s) ; b `touch %s` \"dq\" 'sq' \\ $HOME end" % (PWNED, PWNED)


def user_env(tmp_path: Path) -> Dict[str, str]:
    """Our environment with a private Jupyter path; CI=true and a fixed width for help texts."""
    jupyter = tmp_path / "jupyter"
    return dict(os.environ, CI="true", COLUMNS="100", JUPYTER_DATA_DIR=str(jupyter),
                JUPYTER_PATH=str(jupyter), JUPYTER_PLATFORM_DIRS="0")


def run(argv: Sequence[str], env: Dict[str, str], timeout: float = 120) -> "subprocess.CompletedProcess[str]":
    """A command with no stdin (nothing may prompt); subprocess.run kills it by PID on timeout."""
    return subprocess.run(list(argv), env=env, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=timeout)


def proxykernel(env: Dict[str, str], *args: str, timeout: float = 120) -> "subprocess.CompletedProcess[str]":
    """The ``proxykernel`` console script that ``pip install`` made."""
    return run(["proxykernel", *args], env, timeout)


def one_error(result: "subprocess.CompletedProcess[str]") -> str:
    """The single sentence a failed command printed on stderr (and no traceback)."""
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


def kernelspec(env: Dict[str, str], name: str) -> Dict[str, Any]:
    """``jupyter kernelspec list --json``'s entry for ``name``."""
    listed = run(["jupyter", "kernelspec", "list", "--json"], env)
    assert listed.returncode == 0, listed.stderr
    spec: Dict[str, Any] = json.loads(listed.stdout)["kernelspecs"][name]
    return spec


def execute_notebook(env: Dict[str, str], tmp_path: Path, kernel_name: str,
                     cells: List[str]) -> List[List[Dict[str, Any]]]:
    """Run ``cells`` with ``jupyter execute`` through kernelspec ``kernel_name``; each cell's outputs."""
    path = tmp_path / "notebook.ipynb"
    cells_ = [nbformat.v4.new_code_cell(c) for c in cells]  # type: ignore[no-untyped-call]
    nbformat.write(nbformat.v4.new_notebook(cells=cells_), str(path))  # type: ignore[no-untyped-call]
    result = run(["jupyter", "execute", "--inplace", "--kernel_name=%s" % kernel_name, str(path)], env)
    assert result.returncode == 0, result.stderr
    notebook = nbformat.read(str(path), as_version=4)  # type: ignore[no-untyped-call]
    return [cell.outputs for cell in notebook.cells]


def stdout_of(outputs: List[Dict[str, Any]]) -> str:
    return "".join(o["text"] for o in outputs if o["output_type"] == "stream" and o["name"] == "stdout")


def repo_python(name: str) -> str:
    """A venv that scripts/setup-test-env made (.venvs/NAME), as an environment prefix."""
    # "system" lives outside the clone: a second local user must be able to reach it.
    prefix = Path("/opt/proxykernel-test/system") if name == "system" else (
        Path(__file__).resolve().parent.parent / ".venvs" / name)
    assert (prefix / "bin" / "python").exists(), "%s is missing: run scripts/setup-test-env" % prefix
    return str(prefix)


def old_python(minor: str) -> str:
    """pyenv's newest Python ``minor`` (such as 2.7), too old for proxykernel: a remote Python that
    must get one sentence. Skips the test where pyenv has none (setup-test-env does not make them)."""
    root = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv")
    found = sorted(root.glob("versions/%s.*/bin/python" % minor),
                   key=lambda path: [int(n) for n in path.parent.parent.name.split(".") if n.isdigit()])
    if not found:
        pytest.skip("no Python %s under %s/versions" % (minor, root))
    return str(found[-1])


__all__ = ["PWNED", "NASTY", "user_env", "run", "proxykernel", "one_error", "kernelspec",
           "execute_notebook", "stdout_of", "repo_python", "old_python"]


def kernels_on(sshd: Any, tmp_path: Path) -> List[Dict[str, Any]]:
    """``proxykernel ps --json`` on the test sshd: the kernels the agent holds there."""
    result = proxykernel(user_env(tmp_path), "ps", sshd.alias, "--ssh-config", str(sshd.config_path), "--json")
    assert result.returncode == 0, result.stderr
    return list(json.loads(result.stdout)["kernels"])
