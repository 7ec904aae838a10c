"""The ``proxykernel`` command, run as a user runs it, against the test sshd."""
from __future__ import annotations

import re
import shlex
import sys
import venv
from pathlib import Path
from typing import Any, Dict, List

import pytest

from tests.userland import (execute_notebook, kernelspec, old_python, one_error, proxykernel, repo_python, run,
                            stdout_of, user_env)

README = Path(__file__).resolve().parent.parent / "README.md"
SUBCOMMANDS = ["add", "list", "remove", "check", "discover", "deploy", "login", "logout", "ps", "stop",
               "demo"]


def _ssh(sshd: Any) -> List[str]:
    return ["--ssh-config", str(sshd.config_path)]


def test_add_list_remove_and_the_kernelspec_runs(sshd: Any, tmp_path: Path) -> None:
    env = user_env(tmp_path)
    added = proxykernel(env, "add", sshd.alias, "--python", sys.executable, *_ssh(sshd),
                        "--display-name", "SSH test", "--env", "PXK_A=1", "--workdir", str(tmp_path))
    assert added.returncode == 0, added.stderr
    assert added.stdout.strip() == "added kernelspec ssh__ssh_test"
    assert kernelspec(env, "ssh__ssh_test")["spec"]["interrupt_mode"] == "signal"

    listed = proxykernel(env, "list")
    assert listed.returncode == 0
    [row] = [line for line in listed.stdout.splitlines() if line.startswith("ssh__ssh_test ")]
    assert row.split()[1:3] == [sshd.alias, sys.executable]
    assert "--env PXK_A=1" in row and "--workdir %s" % tmp_path in row

    [outputs] = execute_notebook(env, tmp_path, "ssh__ssh_test",
                                 ["import os; print(os.environ['PXK_A'], os.getcwd())"])
    assert stdout_of(outputs) == "1 %s\n" % tmp_path

    removed = proxykernel(env, "remove", "ssh__ssh_test")
    assert removed.returncode == 0, removed.stderr
    assert "ssh__ssh_test" not in proxykernel(env, "list").stdout
    assert "no proxykernel kernelspec named 'ssh__ssh_test'" in one_error(proxykernel(env, "remove", "ssh__ssh_test"))


def test_add_system_locations(tmp_path: Path) -> None:
    env = user_env(tmp_path)
    added = proxykernel(env, "add", "btest", "--python", "python3", "--prefix", str(tmp_path / "p"),
                        "--name", "mine")
    assert added.returncode == 0, added.stderr
    assert (tmp_path / "p" / "share" / "jupyter" / "kernels" / "mine" / "kernel.json").exists()
    assert "not allowed with argument" in proxykernel(env, "add", "btest", "--python", "p", "--prefix", "x",
                                                      "--sys-prefix").stderr


def test_check_reports_each_step(sshd: Any, tmp_path: Path) -> None:
    result = proxykernel(user_env(tmp_path), "check", sshd.alias, "--python", sys.executable, *_ssh(sshd))
    assert result.returncode == 0, result.stderr
    assert [name for name in re.findall(r"^  (?:ok|note) +(ssh|python|ipykernel|agent|round trip)",
                                        result.stdout, re.M)] == ["ssh", "python", "ipykernel", "agent",
                                                                  "round trip"]
    assert re.search(r"ok +ssh +\d+\.\d\d s", result.stdout)
    assert "Python %d.%d" % sys.version_info[:2] in result.stdout
    assert re.search(r"round trip +\d+\.\d ms \(median of 5\)", result.stdout)
    assert result.stdout.rstrip().endswith("is ready for proxykernel")


# In a subprocess, as the console script runs it; then what it imported.
CHECK_IMPORTS = """
import sys
from proxykernel.command import main
code = main(sys.argv[1:])
print("imported:", " ".join(sorted(name for name in ("zmq", "asyncio") if name in sys.modules)))
sys.exit(code)
"""


def test_check_imports_neither_zmq_nor_asyncio(sshd: Any, tmp_path: Path) -> None:
    # check runs on a laptop before any kernel: it starts fast and needs none of the proxy's stack.
    result = run([sys.executable, "-c", CHECK_IMPORTS, "check", sshd.alias, "--python", sys.executable,
                  *_ssh(sshd)], user_env(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "is ready for proxykernel" in result.stdout
    assert result.stdout.rstrip().endswith("imported:"), result.stdout


@pytest.mark.parametrize("case", ["host", "python", "ipykernel", "old-python"])
def test_check_failures_name_cause_and_fix(sshd: Any, tmp_path: Path, case: str) -> None:
    host, python = sshd.alias, sys.executable
    if case == "host":
        host = sshd.nosuchhost_alias
    elif case == "python":
        python = "/no/such/python3"
    elif case == "old-python":
        python = old_python("3.6")
    else:
        venv.create(tmp_path / "bare", with_pip=False)
        python = str(tmp_path / "bare")
    line = one_error(proxykernel(user_env(tmp_path), "check", host, "--python", python, *_ssh(sshd), "-t", "20"))
    cause, fix = {"host": ("cannot resolve the host 'pxk-nosuchhost'", "add a 'Host pxk-nosuchhost' entry"),
                  "python": ("'/no/such/python3' does not exist", "pass --python the path"),
                  "ipykernel": ("lacks ipykernel", "-m pip install ipykernel"),
                  "old-python": ("is version 3.6", "needs Python 3.8 or newer")}[case]
    assert line.startswith("proxykernel check: error: ") and cause in line and fix in line


def _deploy(sshd: Any, env: Dict[str, str], cache: Path) -> str:
    result = proxykernel(env, "deploy", sshd.alias, "--python", sys.executable, *_ssh(sshd),
                         "--pre-command", "export XDG_CACHE_HOME=%s" % shlex.quote(str(cache)))
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_deploy_installs_then_finds_the_agent(sshd: Any, tmp_path: Path) -> None:
    env, cache = user_env(tmp_path), tmp_path / "a cache; $(x)"
    first = _deploy(sshd, env, cache)
    assert "ipykernel" in first and "agent installed in: %s/proxykernel/agent-" % cache in first
    assert len([p for p in (cache / "proxykernel").glob("agent-*") if p.is_dir()]) == 1
    assert "agent already in: %s" % cache in _deploy(sshd, env, cache)


def test_discover_lists_environments_and_adds_kernelspecs(sshd: Any, tmp_path: Path) -> None:
    env = user_env(tmp_path)
    home = tmp_path / "home"
    (home / ".conda").mkdir(parents=True)
    (home / ".conda" / "environments.txt").write_text(repo_python("py313") + "\n")
    venv.create(tmp_path / "bare", with_pip=False)
    result = proxykernel(env, "discover", sshd.alias, *_ssh(sshd), "--python", sys.executable,
                         "--python", repo_python("py38"), "--python", str(tmp_path / "bare"),
                         "--pre-command", "export HOME=%s" % shlex.quote(str(home)), "--all")
    assert result.returncode == 0, result.stderr
    rows = {line.split()[2]: line for line in result.stdout.splitlines() if re.match(r" *\d+  ", line)}
    assert "conda" in rows["py313"] and "Python 3.13" in rows["py313"] and "ipykernel" in rows["py313"]
    assert "Python 3.8" in rows["py38"]
    assert "no ipykernel" in rows["bare"]
    names = [line.split()[2] for line in result.stdout.splitlines() if line.startswith("added kernelspec")]
    assert "ssh__ssh_pxk-test__py313_" in names and "ssh__ssh_pxk-test__py38_" in names
    assert not any("bare" in name for name in names)
    listed = proxykernel(env, "list").stdout
    assert repo_python("py38") + "/bin/python" in listed


def test_bad_input_is_one_sentence(tmp_path: Path) -> None:
    env = user_env(tmp_path)
    assert "--env expects VAR=value pairs" in one_error(proxykernel(env, "add", "h", "--python", "p", "--env", "x"))
    assert "the following arguments are required: --python" in proxykernel(env, "check", "h").stderr
    assert "--pick expects numbers" in one_error(proxykernel(env, "discover", "h", "--pick", "x,y"))


def _help(env: Dict[str, str], *args: str) -> str:
    result = run(["proxykernel", *args, "--help"], env)
    assert result.returncode == 0
    return result.stdout


def test_help_matches_the_readme(tmp_path: Path) -> None:
    env, readme = user_env(tmp_path), README.read_text()
    all_args: List[List[str]] = [[]] + [[name] for name in SUBCOMMANDS]
    for args in all_args:
        text = _help(env, *args)
        assert text in readme, "README lacks the current output of: proxykernel %s --help" % " ".join(args)
