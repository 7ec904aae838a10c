"""Every way a start can fail ends within --timeout, non-zero, with one sentence naming cause and fix."""
from __future__ import annotations

import shutil
import subprocess
import sys
import time
import venv
from pathlib import Path
from typing import Any, List
import pytest

import remote_agent
from tests.userland import old_python

TIMEOUT = 15


def _run_proxy(sshd: Any, tmp_path: Path, host: str, python: str, *extra: str) -> "subprocess.CompletedProcess[str]":
    connection_file = tmp_path / "kernel.json"
    from jupyter_client.connect import write_connection_file
    write_connection_file(str(connection_file), ip="127.0.0.1", key=b"secret-test-key")
    argv = [sys.executable, "-m", "proxykernel", "--host", host, "--python", python,
            "--ssh-config", str(sshd.config_path), "--timeout", str(TIMEOUT), *extra,
            "-f", str(connection_file)]
    started = time.monotonic()
    result = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT + 10,
                            stdin=subprocess.DEVNULL)
    assert time.monotonic() - started < TIMEOUT + 3
    return result


def _error_lines(result: "subprocess.CompletedProcess[str]") -> List[str]:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if "ERROR" in line]
    assert len(lines) == 1, result.stderr
    return lines


def test_unknown_host(sshd: Any, tmp_path: Path) -> None:
    [line] = _error_lines(_run_proxy(sshd, tmp_path, "pxk-nosuchhost", sys.executable))
    assert "cannot resolve the host 'pxk-nosuchhost'" in line and "ssh config" in line


def test_authentication_refused(sshd: Any, tmp_path: Path) -> None:
    [line] = _error_lines(_run_proxy(sshd, tmp_path, "pxk-badauth", sys.executable))
    assert "authentication to 'pxk-badauth' was refused" in line and "IdentityFile" in line


def test_remote_python_does_not_exist(sshd: Any, tmp_path: Path) -> None:
    [line] = _error_lines(_run_proxy(sshd, tmp_path, sshd.alias, "/no/such/python3"))
    assert "'/no/such/python3' does not exist" in line and "--python" in line


def test_remote_python_without_ipykernel(sshd: Any, tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    venv.create(bare, with_pip=False)
    [line] = _error_lines(_run_proxy(sshd, tmp_path, sshd.alias, str(bare)))  # an environment prefix
    assert "lacks ipykernel" in line and "-m pip install ipykernel" in line


@pytest.mark.parametrize("minor", ["2.7", "3.6"])
def test_remote_python_too_old(sshd: Any, tmp_path: Path, minor: str) -> None:
    python = old_python(minor)
    [line] = _error_lines(_run_proxy(sshd, tmp_path, sshd.alias, python))
    assert "the remote Python %s on %s is version %s" % (python, sshd.alias, minor) in line
    assert "proxykernel needs Python 3.8 or newer there" in line


def test_agent_of_another_protocol_version(sshd: Any, tmp_path: Path) -> None:
    source = tmp_path / "remote_agent"
    shutil.copytree(Path(remote_agent.__file__).parent, source,
                    ignore=shutil.ignore_patterns("__pycache__"))
    frames = source / "frames.py"  # where the protocol's version is set
    frames.write_text(frames.read_text().replace("PROTOCOL_VERSION = 1", "PROTOCOL_VERSION = 99"))
    [line] = _error_lines(_run_proxy(sshd, tmp_path, sshd.alias, sys.executable,
                                     "--agent-source", str(source)))
    assert "protocol version 99" in line and "version 1" in line


def test_bad_connection_file(sshd: Any, tmp_path: Path) -> None:
    bad = tmp_path / "kernel.json"
    bad.write_text("{not json")
    result = subprocess.run([sys.executable, "-m", "proxykernel", "--host", sshd.alias, "--python",
                             sys.executable, "-f", str(bad)], capture_output=True, text=True,
                            timeout=20, stdin=subprocess.DEVNULL)
    [line] = _error_lines(result)
    assert "cannot be read as JSON" in line
