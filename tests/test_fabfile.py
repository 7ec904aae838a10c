"""``fab deploy-agent --host ALIAS`` (fabfile.py) with the test sshd's ssh config."""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any, List, Optional, Tuple

import pytest

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


def _config(sshd: Any, tmp_path: Path, known_hosts: str = "", strict: Optional[str] = None,
            hashed: bool = False) -> Tuple[str, Path]:
    """The tests' ssh config with a known-hosts file of our own (holding ``known_hosts``) and, if
    given, ``StrictHostKeyChecking strict`` for the alias: the config path, and the file."""
    known = tmp_path / "known_hosts"
    known.write_text(known_hosts)
    text = Path(sshd.config_path).read_text().replace(str(sshd.known_hosts_path), str(known))
    if strict is not None:  # a Host block of its own, first: ssh and paramiko take the first value
        hash_line = "    HashKnownHosts yes\n" if hashed else ""
        text = "Host %s\n    StrictHostKeyChecking %s\n%s\n%s" % (sshd.alias, strict, hash_line, text)
    config = tmp_path / "ssh_config"
    config.write_text(text)
    return str(config), known


def _ssh_accepts(sshd: Any, config: str) -> bool:
    """Does ``ssh`` itself, checking strictly, accept the host with the known-hosts file ``config`` names?"""
    result = run(["ssh", "-F", config, "-o", "StrictHostKeyChecking=yes", "--", sshd.alias, "true"],
                 dict(os.environ), timeout=30)
    return result.returncode == 0


@pytest.mark.parametrize("strict", [None, "yes", "ask"])
def test_deploy_agent_checks_host_keys(sshd: Any, tmp_path: Path, strict: Optional[str]) -> None:
    config, known = _config(sshd, tmp_path, strict=strict)
    line = one_error(_fab(config, tmp_path, "--host", sshd.alias, "--python", sys.executable))
    assert "the host key of %r is unknown" % sshd.alias in line
    assert known.read_text() == ""


@pytest.mark.parametrize("strict, hashed", [("accept-new", False), ("no", True)])
def test_deploy_agent_takes_a_new_host_key_when_the_config_says_so(sshd: Any, tmp_path: Path,
                                                                    strict: str, hashed: bool) -> None:
    config, known = _config(sshd, tmp_path, strict=strict, hashed=hashed)
    assert not _ssh_accepts(sshd, config)
    deployed = _fab(config, tmp_path, "--host", sshd.alias, "--python", sys.executable, *_private_cache(tmp_path))
    assert deployed.returncode == 0, deployed.stderr
    assert "agent installed in: %s" % (tmp_path / "cache") in deployed.stdout
    # Recorded as ssh records it: ssh, now strict, knows the host by that line.
    lines = known.read_text().splitlines()
    assert len(lines) == 1 and lines[0].startswith("|1|") == hashed
    assert _ssh_accepts(sshd, config)


def test_deploy_agent_refuses_a_changed_host_key_even_with_accept_new(sshd: Any, tmp_path: Path) -> None:
    wrong = Path(sshd.client_key_path + ".pub").read_text().split()[:2]  # a real key, not the host's
    entry = "[%s]:%d %s %s\n" % (sshd.listen_address, sshd.port, wrong[0], wrong[1])
    config, known = _config(sshd, tmp_path, known_hosts=entry, strict="accept-new")
    line = one_error(_fab(config, tmp_path, "--host", sshd.alias, "--python", sys.executable))
    assert "the host key of %r has changed" % sshd.alias in line
    assert known.read_text() == entry
