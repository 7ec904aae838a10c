"""--workdir, --env, --pre-command and --sudo, each seen from inside the remote kernel; hostile values
arrive verbatim and run nothing (DESIGN.md, decision 9)."""
from __future__ import annotations

import ast
import pwd
import shlex
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest

from tests.kernels import proxy_argv, run_cell, running_kernel
from tests.test_errors import _error_lines, _run_proxy
from tests.userland import NASTY, PWNED, repo_python

PROBE = "import os; print(repr({'cwd': os.getcwd(), 'euid': os.geteuid(), 'env': dict(os.environ)}))"


@pytest.fixture(autouse=True)
def _no_marker() -> Iterator[None]:
    """The marker file the hostile values would create; it must not appear."""
    if PWNED.exists():
        PWNED.unlink()
    yield
    assert not PWNED.exists(), "a quoted value was run by a remote shell"


def _remote_view(sshd: Any, tmp_path: Path, python: str, extra: List[str], host: str = "") -> Dict[str, Any]:
    argv = proxy_argv(sshd, python, extra)
    if host:
        argv[argv.index("--host") + 1] = host
    with running_kernel(argv, tmp_path / "spec") as (_, kc):
        reply, outputs = run_cell(kc, PROBE)
        assert reply["status"] == "ok", outputs
        view: Dict[str, Any] = ast.literal_eval(outputs[0][1]["text"])
        return view


def test_workdir_env_and_pre_command_arrive_verbatim(sshd: Any, tmp_path: Path) -> None:
    workdir = tmp_path / NASTY / "in"
    workdir.mkdir(parents=True)
    pre = "export PXK_PRE=%s; echo the pre-command ran >&2" % shlex.quote(NASTY)
    view = _remote_view(sshd, tmp_path, sys.executable, [
        "--workdir", str(workdir), "--env", "PXK_ENV=%s PXK_PLAIN=1" % shlex.quote(NASTY),
        "--pre-command", pre])
    assert view["cwd"] == str(workdir)
    assert view["env"]["PXK_ENV"] == NASTY
    assert view["env"]["PXK_PLAIN"] == "1"
    assert view["env"]["PXK_PRE"] == NASTY  # set by the pre-command, in the shell that runs the agent


def test_workdir_under_the_remote_home(sshd: Any, tmp_path: Path) -> None:
    home = Path(pwd.getpwuid(0).pw_dir)
    view = _remote_view(sshd, tmp_path, sys.executable, ["--workdir", "~/"])
    assert view["cwd"] == str(home)


def test_missing_workdir_and_failing_pre_command_are_one_sentence(sshd: Any, tmp_path: Path) -> None:
    [line] = _error_lines(_run_proxy(sshd, tmp_path, sshd.alias, sys.executable, "--workdir", "/no/such/dir"))
    assert "the --workdir is not a directory there" in line
    failing = "module load nothing 2>/dev/null || (exit 7)"
    [line] = _error_lines(_run_proxy(sshd, tmp_path, sshd.alias, sys.executable, "--pre-command", failing))
    assert "the --pre-command exited with status 7" in line


@pytest.fixture(scope="module")
def sudoer(add_user: Any) -> str:
    """A second local user who may run anything with sudo -n (no password)."""
    return str(add_user("pxkuser", sudo=True))


def test_sudo_runs_the_kernel_as_root(sshd: Any, sudoer: str, tmp_path: Path) -> None:
    python = repo_python("system")  # outside /root, so the second user can run it
    plain = _remote_view(sshd, tmp_path / "plain", python, [], host=sudoer)
    assert plain["euid"] == pwd.getpwnam("pxkuser").pw_uid
    raised = _remote_view(sshd, tmp_path / "sudo", python, ["--sudo", "--env", "PXK_ENV=%s" % shlex.quote(NASTY)],
                          host=sudoer)
    assert raised["euid"] == 0
    assert raised["env"]["SUDO_USER"] == "pxkuser"
    assert raised["env"]["PXK_ENV"] == NASTY


def test_sudo_that_wants_a_password_is_one_sentence(sshd: Any, add_user: Any, tmp_path: Path) -> None:
    alias = add_user("pxknosudo")
    [line] = _error_lines(_run_proxy(sshd, tmp_path, alias, repo_python("system"), "--sudo"))
    assert "sudo on %r asks for a password" % alias in line and "NOPASSWD" in line
