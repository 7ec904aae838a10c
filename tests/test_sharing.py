"""One ssh connection per host, shared by its kernels; and a start that waits for no answer."""
from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any, List

from proxykernel import remote_bootstrap
from proxykernel.bootstrap import CACHE_ONLY, NO_AGENT, agent_bundle, remote_program
from proxykernel.cli import build_parser
from proxykernel.config import ProxyConfig, agent_memo_path, control_path
from proxykernel.ssh import SSHOptions
from proxykernel.testing.sshd import SSHServer
from tests.kernels import alive, proxy_argv, run_cell, running_kernel

MASTER_GONE = 15.0  # seconds: --connection-persist 1, plus ssh's own check interval and slack


def _config(sshd: Any, python: str = sys.executable, pre_command: str = "") -> ProxyConfig:
    """The ProxyConfig that ``proxy_argv(sshd, ...)`` makes, for the paths it derives."""
    args = build_parser().parse_args(proxy_argv(sshd, python)[3:])
    ssh = SSHOptions(host=args.host, config_file=args.ssh_config, connect_timeout=args.timeout)
    return ProxyConfig(host=args.host, python=args.python, connection_file="", ssh=ssh,
                       pre_command=pre_command or None)


def _wait_gone(path: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not os.path.exists(path)


def test_kernels_share_one_connection_which_outlives_them_briefly(tmp_path: Path) -> None:
    # A server of its own: no master of an earlier test may be there to reuse, or be counted.
    with SSHServer() as sshd:
        master = control_path(_config(sshd))
        assert master is not None and not os.path.exists(master)
        argv = proxy_argv(sshd, extra=["--connection-persist", "1"])
        with ExitStack() as stack:
            km1, kc1 = stack.enter_context(running_kernel(argv, tmp_path / "one"))
            assert os.path.exists(master)
            logins = sshd.login_count()
            km2, kc2 = stack.enter_context(running_kernel(argv, tmp_path / "two"))
            assert sshd.login_count() == logins  # the second kernel opened a session, no login
            run_cell(kc1, "x = 1")
            assert run_cell(kc2, "print('x' in globals())")[1][0][1]["text"] == "False\n"
        # Both kernels are gone; the master follows by itself after --connection-persist.
        assert _wait_gone(master, MASTER_GONE), "the ssh ControlMaster outlived --connection-persist"


def test_more_kernels_than_the_server_allows_sessions_still_start(tmp_path: Path) -> None:
    # MaxSessions 1 (OpenSSH's default is 10): a session the master cannot open makes ssh log in anew.
    with SSHServer(max_sessions=1) as sshd:
        argv = proxy_argv(sshd, extra=["--connection-persist", "1"])
        with ExitStack() as stack:
            clients: List[Any] = []
            for i in range(3):
                clients.append(stack.enter_context(running_kernel(argv, tmp_path / str(i)))[1])
            for i, kc in enumerate(clients):
                assert run_cell(kc, "print(%d * 7)" % i)[1][0][1]["text"] == "%d\n" % (i * 7)
        master = control_path(_config(sshd))
        assert master is not None and _wait_gone(master, MASTER_GONE)


def _bootstrap(stdin: bytes, cache: Path, *args: str, tmpdir: str = "") -> subprocess.CompletedProcess:
    """The bootstrap on this machine, as a remote shell would run it (its 'remote' is local here)."""
    env = dict(os.environ, XDG_CACHE_HOME=str(cache), TMPDIR=tmpdir or str(cache))
    return subprocess.run([sys.executable, "-c", remote_program(remote_bootstrap), agent_bundle().sha256, *args],
                          input=stdin, capture_output=True, env=env, timeout=30)


def test_bootstrap_takes_the_agent_from_the_stream_without_asking(tmp_path: Path) -> None:
    bundle = agent_bundle()
    stored = tmp_path / "proxykernel" / ("agent-" + bundle.sha256)
    # Nothing cached and no agent along: it says NEED and exits, reading nothing more.
    result = _bootstrap(NO_AGENT, tmp_path, CACHE_ONLY)
    assert result.stdout == b"\nPXKBOOT NEED\n" and result.returncode == 5
    assert not stored.exists()
    # The agent along: stored and verified, without a word from the remote first.
    result = _bootstrap(bundle.framed(), tmp_path, CACHE_ONLY)
    assert result.stdout == b"\nPXKBOOT GOT\n" and result.returncode == 0
    with zipfile.ZipFile(io.BytesIO(bundle.data)) as sent:
        for name in sent.namelist():
            assert (stored / name).read_bytes() == sent.read(name)
    # Cached: both starts of the stream are taken, and the agent along is not needed.
    for preface in (NO_AGENT, bundle.framed()):
        result = _bootstrap(preface, tmp_path, CACHE_ONLY)
        assert result.stdout == b"\nPXKBOOT HAVE\n" and result.returncode == 0
    # A cache that cannot be made: the agent runs from a temporary directory, and the proxy is told.
    blocked = tmp_path / "a-file"
    blocked.write_bytes(b"")
    result = _bootstrap(bundle.framed(), blocked / "cache", CACHE_ONLY, tmpdir=str(tmp_path))
    assert result.stdout == b"\nPXKBOOT GOT uncached\n" and result.returncode == 0
    # A damaged agent is refused.
    damaged = bytearray(bundle.framed())
    damaged[-1] ^= 1
    shutil.rmtree(str(stored))
    result = _bootstrap(bytes(damaged), tmp_path, CACHE_ONLY)
    assert result.stdout == b"\nPXKBOOT ERR corrupt-agent\n" and not stored.exists()


def test_a_stale_memo_of_the_remote_cache_costs_a_retry_not_the_kernel(sshd: Any, tmp_path: Path) -> None:
    cache = tmp_path / "remote-cache"
    pre = "export XDG_CACHE_HOME=%s" % cache
    memo = agent_memo_path(_config(sshd, pre_command=pre))
    Path(memo).touch()  # "the remote has the agent": but this cache is empty
    argv = proxy_argv(sshd, extra=["--pre-command", pre, "--no-connection-sharing"])
    with running_kernel(argv, tmp_path) as (km, kc):
        assert run_cell(kc, "print(6 * 7)")[1][0][1]["text"] == "42\n"
        assert any(p.is_dir() for p in cache.glob("proxykernel/agent-*"))
        # Unpacked, so that Python keeps the agent's bytecode there for the next start.
        assert any(cache.glob("proxykernel/agent-*/remote_agent/__pycache__/agent.*.pyc"))
        proxy = km.provisioner.pid  # type: ignore[union-attr]
        assert alive(proxy)
    assert os.path.exists(memo)  # confirmed again by the retry
    os.unlink(memo)


def test_aes_gcm_goes_first_only_where_the_user_left_the_ciphers_alone(sshd: Any) -> None:
    from proxykernel.config import FAST_CIPHERS, OPENSSH_DEFAULT_CIPHERS, _cpu_has_aes, ssh_command
    config = _config(sshd)
    argv = ssh_command(config, "key")
    assert ("Ciphers=" + FAST_CIPHERS in argv) == _cpu_has_aes()
    assert sorted(FAST_CIPHERS.split(",")) == sorted(OPENSSH_DEFAULT_CIPHERS.split(","))  # reordered only
    # A user's choice (here on the command line; a config file's shows in ssh -G alike) is kept.
    mine = ProxyConfig(host=config.host, python=config.python, connection_file="",
                       ssh=SSHOptions(host=config.host, config_file=config.ssh.config_file,
                                      options=("Ciphers=aes256-ctr",)))
    argv = ssh_command(mine, "key")
    assert [a for a in argv if a.startswith("Ciphers=")] == ["Ciphers=aes256-ctr"]


def test_the_agent_zip_is_made_once_and_follows_its_sources(tmp_path: Path) -> None:
    from proxykernel.bootstrap import _zip_package
    source = tmp_path / "remote_agent"
    shutil.copytree(os.path.join(os.path.dirname(os.path.dirname(__file__)), "remote_agent"), str(source),
                    ignore=shutil.ignore_patterns("__pycache__"))
    names = sorted(p.name for p in source.glob("*.py"))
    first = agent_bundle.__wrapped__(str(source))  # (agent_bundle itself also caches per process)
    assert first.data == _zip_package(str(source), names)  # the kept zip is the one we would make
    assert agent_bundle.__wrapped__(str(source)) == first
    with open(str(source / "attach.py"), "a") as changed:
        changed.write("# changed\n")
    second = agent_bundle.__wrapped__(str(source))
    assert second.sha256 != first.sha256 and second.data == _zip_package(str(source), names)
    # Making one forgets those made over a day ago.
    from remote_agent.paths import runtime_dir
    old = Path(runtime_dir()) / "bundle-0000000000000000.zip"
    old.write_bytes(b"old")
    os.utime(str(old), (time.time() - 2 * 86400,) * 2)
    with open(str(source / "attach.py"), "a") as changed:
        changed.write("# changed again\n")
    agent_bundle.__wrapped__(str(source))
    assert not old.exists()


def test_a_hung_shared_connection_is_replaced_and_every_kernel_on_it_recovers(tmp_path: Path) -> None:
    from proxykernel.testing.procs import read_stat
    from proxykernel.testing.sshd import stream_peer_pid
    from tests.test_reconnect import FAST, PRINT_EVERY_20MS, collect_lines, remote_pid
    with SSHServer() as sshd:
        argv = proxy_argv(sshd, extra=FAST + ["--connection-persist", "1"])
        with ExitStack() as stack:
            kernels = [stack.enter_context(running_kernel(argv, tmp_path / str(i)))[1] for i in range(2)]
            daemons = [read_stat(remote_pid(kc, sshd))[2] for kc in kernels]  # type: ignore[index]
            shared = {stream_peer_pid(sshd, daemon) for daemon in daemons}
            assert len(shared) == 1  # both kernels' streams cross one ssh connection
            logins = sshd.login_count()
            msg_ids = [kc.execute(PRINT_EVERY_20MS.format(n=200)) for kc in kernels]
            time.sleep(1.0)
            session = shared.pop()
            os.kill(session, signal.SIGSTOP)  # the connection stays open, but nothing moves on it
            try:
                got = [collect_lines(kc, msg_id, timeout=60) for kc, msg_id in zip(kernels, msg_ids)]
            finally:
                os.kill(session, signal.SIGCONT)
            assert got == [list(range(200))] * 2
            assert sshd.login_count() > logins  # a new connection replaced the hung master
            assert [run_cell(kc, "print(1 + 1)")[1][0][1]["text"] for kc in kernels] == ["2\n"] * 2


def test_an_unwritable_remote_cache_leaves_no_marker(sshd: Any, tmp_path: Path) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_bytes(b"")
    short_tmp = tempfile.mkdtemp(prefix="pxk-t")  # the agent's sockets go here too: keep it short
    try:
        pre = "export XDG_CACHE_HOME=%s/cache TMPDIR=%s" % (blocked, short_tmp)
        memo = agent_memo_path(_config(sshd, pre_command=pre))
        argv = proxy_argv(sshd, extra=["--pre-command", pre, "--no-connection-sharing"])
        with running_kernel(argv, tmp_path / "spec") as (km, kc):
            assert run_cell(kc, "print(6 * 7)")[1][0][1]["text"] == "42\n"
        assert not os.path.exists(memo)  # else every later start would first fail, then retry
    finally:
        shutil.rmtree(short_tmp, ignore_errors=True)
