"""The sshd test fixture works as DESIGN.md ("How we test") describes."""
from __future__ import annotations

import os
import stat
import subprocess
import time
from typing import Any, List

from proxykernel.testing.procs import pids_in_namespace, pids_in_pgroup, read_stat
from proxykernel.testing.sshd import SSHServer, port_open

SSH_TIMEOUT = 30


def run(cmd: List[str], **kw: Any) -> "subprocess.CompletedProcess[str]":
    kw.setdefault("stdin", subprocess.DEVNULL)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=SSH_TIMEOUT, **kw)


def test_echo(sshd: SSHServer) -> None:
    r = run(["ssh", "-F", sshd.config_path, sshd.alias, "--", "echo", "hi"])
    assert (r.returncode, r.stdout, r.stderr) == (0, "hi\n", "")
    assert r.stdout == run(sshd.ssh_command("echo", "hi")).stdout


def test_attributes(sshd: SSHServer) -> None:
    assert sshd.alias == "pxk-test"
    assert sshd.running()
    assert os.path.isfile(sshd.config_path) and os.path.isfile(sshd.log_path)
    assert sshd.tmpdir is not None
    assert sshd.config_path.startswith(sshd.tmpdir + os.sep)
    assert sshd.log_path.startswith(sshd.tmpdir + os.sep)
    assert port_open(sshd.port)
    assert os.getpgid(sshd.pid) == sshd.pid  # own process group (and session)
    assert os.getsid(sshd.pid) == sshd.pid
    # ssh refuses configs and keys that others can write or read.
    assert stat.S_IMODE(os.stat(sshd.config_path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(sshd.client_key_path).st_mode) == 0o600


def test_remote_user_is_current_user(sshd: SSHServer) -> None:
    r = run(sshd.ssh_command("id", "-un"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == sshd.user


def test_stdin_stdout_binary_roundtrip(sshd: SSHServer) -> None:
    data = bytes(range(256)) * 4096  # 1 MiB, every byte value
    r = subprocess.run(sshd.ssh_command("cat"), input=data, capture_output=True,
                       timeout=SSH_TIMEOUT)
    assert r.returncode == 0, r.stderr
    assert r.stdout == data


def test_stdio_forward_refused(sshd: SSHServer) -> None:
    # LogLevel ERROR (the alias's setting) hides the reason; ask for it.
    r = run(sshd.ssh_command(options=["-o", "LogLevel=INFO", "-W", "127.0.0.1:%d" % sshd.port]))
    assert r.returncode == 255
    assert "administratively prohibited" in r.stderr, r.stderr
    assert "refused local port forward" in sshd.log()


def test_remote_forward_refused(sshd: SSHServer) -> None:
    r = run(sshd.ssh_command(options=["-o", "ExitOnForwardFailure=yes", "-N",
                                      "-R", "0:127.0.0.1:%d" % sshd.port]))
    assert r.returncode != 0
    assert "forwarding failed" in r.stderr, r.stderr


def test_local_forward_refused(sshd: SSHServer) -> None:
    # -L only asks the server when a connection arrives: connect through it.
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        lport = s.getsockname()[1]
    p = subprocess.Popen(
        sshd.ssh_command(options=["-o", "LogLevel=INFO", "-N",
                                  "-L", "%d:127.0.0.1:%d" % (lport, sshd.port)]),
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 10
        while not port_open(lport):
            assert p.poll() is None, p.communicate()
            assert time.monotonic() < deadline, "ssh -L did not listen"
            time.sleep(0.02)
        with socket.create_connection(("127.0.0.1", lport), timeout=10) as c:
            c.settimeout(10)
            assert c.recv(100) == b""  # closed at once, no SSH banner from the target
    finally:
        # Not terminate(): OpenSSH 9.2's client loses a SIGTERM that arrives just before
        # it enters poll() and then hangs (seen in ~2% of tries).
        p.kill()
        _, err = p.communicate(timeout=10)
    assert "administratively prohibited" in err, err


def test_badauth_refused(sshd: SSHServer) -> None:
    before = sshd.login_count()
    r = run(sshd.ssh_command("echo", "hi", alias=sshd.badauth_alias))
    assert r.returncode == 255
    assert r.stdout == ""
    assert "Permission denied" in r.stderr, r.stderr
    assert sshd.login_count() == before


def test_nosuchhost(sshd: SSHServer) -> None:
    t0 = time.monotonic()
    r = run(sshd.ssh_command("echo", "hi", alias=sshd.nosuchhost_alias))
    assert r.returncode == 255
    assert "nosuchhost.invalid" in r.stderr, r.stderr
    assert time.monotonic() - t0 < 10


def test_host_key_is_checked(sshd: SSHServer) -> None:
    # StrictHostKeyChecking is on: with no known host key the connection is refused.
    r = run(sshd.ssh_command("echo", "hi", options=["-o", "UserKnownHostsFile=/dev/null"]))
    assert r.returncode == 255
    assert "Host key verification failed" in r.stderr, r.stderr


def test_client_environment_not_accepted(sshd: SSHServer) -> None:
    env = dict(os.environ, LANG="pxk_TEST.UTF-8", PXK_SECRET="x")
    r = run(sshd.ssh_command('echo "[$LANG][$PXK_SECRET]"',
                             options=["-o", "SendEnv=LANG PXK_SECRET"]), env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "[][]\n"


def test_login_count_increases(sshd: SSHServer) -> None:
    n = sshd.login_count()
    for i in range(1, 3):
        assert run(sshd.ssh_command("true")).returncode == 0
        # sshd logs the login before the session starts; no waiting needed.
        assert sshd.login_count() == n + i
    assert "Accepted publickey for %s" % sshd.user in sshd.log()


def test_stop_kills_everything() -> None:
    with SSHServer() as srv:
        pid, port, tmpdir, ns = srv.pid, srv.port, srv.tmpdir, srv.ns
        assert ns is not None and tmpdir is not None
        # A remote daemon (own session, stdio detached) that would outlive a plain sshd kill.
        r = run(srv.ssh_command("setsid sleep 600 </dev/null >/dev/null 2>&1 & echo started"))
        assert r.stdout == "started\n", r.stderr
        # And a connection still open while the server stops.
        p = subprocess.Popen(srv.ssh_command("sleep", "600"), stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while len(srv.session_pids()) < 2 or srv.login_count() < 2:
            assert time.monotonic() < deadline, srv.session_pids()
            time.sleep(0.02)
        remote = set(pids_in_namespace(ns))
        group = set(pids_in_pgroup(pid))
        assert pid in group and len(remote) >= 3  # listener + sleep 600 + session
        t0 = time.monotonic()
    # __exit__ stopped it
    assert time.monotonic() - t0 < 5
    assert not srv.running()
    for q in sorted(remote | group):
        assert (read_stat(q) or ("", "Z"))[1] == "Z", (q, read_stat(q))
    assert pids_in_pgroup(pid) == []
    assert pids_in_namespace(ns) == []
    assert not port_open(port)
    assert not os.path.exists(tmpdir)
    assert p.wait(timeout=10) == 255  # the client saw the connection drop
    srv.stop()  # idempotent


def test_start_is_fast_and_stop_idempotent() -> None:
    srv = SSHServer()
    t0 = time.monotonic()
    srv.start()
    try:
        assert time.monotonic() - t0 < 5
        assert run(srv.ssh_command("echo", "ok")).stdout == "ok\n"
    finally:
        srv.stop()
    srv.stop()
    assert srv.tmpdir is None
