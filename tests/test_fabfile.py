"""``fab deploy-agent --host ALIAS`` (fabfile.py) with the test sshd's ssh config."""
from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any, List

from tests.kernels import proxy_argv, run_cell, running_kernel
from tests.userland import one_error, run, user_env

ROOT = Path(__file__).resolve().parent.parent


def _fab(config: str, tmp_path: Path, *args: str) -> "subprocess.CompletedProcess[str]":
    return run(["fab", "--search-root", str(ROOT), "-S", config, "deploy-agent", *args], user_env(tmp_path))


def _private_cache(tmp_path: Path) -> List[str]:
    return ["--pre-command", "export XDG_CACHE_HOME=%s" % shlex.quote(str(tmp_path / "cache"))]


def test_deploy_agent_then_a_kernel_finds_it_cached(sshd: Any, tmp_path: Path, capfd: Any) -> None:
    deployed = _fab(str(sshd.config_path), tmp_path, "--host", sshd.alias, "--python", sys.executable,
                    *_private_cache(tmp_path))
    assert deployed.returncode == 0, deployed.stderr
    assert "agent installed in: %s" % (tmp_path / "cache") in deployed.stdout
    capfd.readouterr()
    with running_kernel(proxy_argv(sshd, extra=_private_cache(tmp_path)), tmp_path / "spec") as (_, kc):
        assert run_cell(kc, "1 + 1")[0]["status"] == "ok"
    log = capfd.readouterr().err  # the proxy inherits our stderr, as it does Jupyter's
    assert "agent cached on %s" % sshd.alias in log and "agent sent" not in log


def test_deploy_agent_checks_host_keys(sshd: Any, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    config = tmp_path / "ssh_config"
    config.write_text(Path(sshd.config_path).read_text().replace(str(sshd.known_hosts_path), str(empty)))
    line = one_error(_fab(str(config), tmp_path, "--host", sshd.alias, "--python", sys.executable))
    assert "the host key of %r is unknown" % sshd.alias in line
