"""A real OpenSSH server on 127.0.0.1 for tests (see DESIGN.md, "How we test").

    with SSHServer() as srv:
        subprocess.run(srv.ssh_command("echo", "hi"))   # ssh -F CONFIG pxk-test -- echo hi

The server runs as ``unshare --pid --fork --kill-child /usr/sbin/sshd -D -e -f CONFIG`` in
its own session, so it and every session child it spawns (they call setsid()) live in
one PID namespace; stop() kills the unshare process group and waits until nothing of
that namespace is left.

Client side: ``ssh -F srv.config_path ALIAS ...`` with the aliases

* ``pxk-test``       - works (key authorized, host key pre-filled in known_hosts,
                       StrictHostKeyChecking left on)
* ``pxk-badauth``    - same server, a key that is not authorized ("Permission denied")
* ``pxk-nosuchhost`` - HostName nosuchhost.invalid (name does not resolve)

allow_user(NAME) adds ``pxk-user-NAME``: the same server, logging in as another local user,
who must exist (the tests make one, and give it sudo: tests/conftest.py).

``SSHServer(netns=NS, listen_address=ADDR)`` runs the sshd inside an existing network namespace
(``ip netns exec NS ...``), listening on ADDR, and the client config's HostName is ADDR: the
"remote" host is then behind a link a test can cut (see tests/test_netns.py).
"""
from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from typing import Any, List, Optional, Sequence, Set, Tuple

from proxykernel.testing.procs import (descendants, pid_namespace, pids_in_namespace, pids_in_pgroup, pipes,
                                       process_table, read_stat)

__all__ = ["SSHServer", "free_port", "port_open", "stream_peer_pid", "ALIAS", "BADAUTH_ALIAS", "NOSUCHHOST_ALIAS"]

SSHD = "/usr/sbin/sshd"
ALIAS = "pxk-test"
BADAUTH_ALIAS = "pxk-badauth"
NOSUCHHOST_ALIAS = "pxk-nosuchhost"

START_TIMEOUT = 10.0  # seconds until the port must accept a TCP connection
POLL_INTERVAL = 0.02
STOP_TIMEOUT = 5.0  # seconds after SIGTERM before SIGKILL


# --------------------------------------------------------------------------- helpers


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.2) -> bool:
    """True if something accepts a TCP connection on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def stream_peer_pid(sshd: SSHServer, daemon: int) -> int:
    """sshd's process at the other end of the ssh pipes ``daemon`` reads and writes: the one that
    carries the stream to the network (one per connection, shared by its sessions). The tests and
    the benchmark stop it (SIGSTOP) for a hang, or kill it for a drop."""
    held = pipes(daemon)
    for pid in descendants(sshd.pid):
        if pid != daemon and (read_stat(pid) or ("",))[0] == "sshd" and held & pipes(pid):
            return pid
    raise LookupError("no sshd process holds the other end of the agent daemon's stream")


def _keygen(path: str, comment: str) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", path],
        check=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
    )


def _pubkey(path: str) -> str:
    """'ssh-ed25519 AAAA...' of a key (without the comment)."""
    with open(path + ".pub") as f:
        kind, blob = f.read().split()[:2]
    return "%s %s" % (kind, blob)


def _openssh_version() -> Tuple[int, int]:
    """(major, minor) of the installed OpenSSH, e.g. (9, 2)."""
    out = subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr
    m = re.search(r"OpenSSH_(\d+)\.(\d+)", out)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def _write(path: str, text: str, mode: int = 0o600) -> None:
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)


def _sshd_config(port: int, listen: str, host_key: str, authorized_keys: str, forwarding: bool,
                 max_sessions: int, extra_config: str = "") -> str:
    """The server's config: keys under /tmp, no PAM, no forwarding unless asked, no client environment."""
    # Do not lock out 127.0.0.1 after the tests' deliberate auth failures.
    extra = "PerSourcePenalties no\n" if _openssh_version() >= (9, 8) else ""
    # No SetEnv and no AcceptEnv: sessions get sshd's default environment only.
    return (
        "Port {port}\n"
        "ListenAddress {listen}\n"
        "HostKey {hostkey}\n"
        "AuthorizedKeysFile {authkeys}\n"
        "PidFile none\n"
        "StrictModes no\n"
        "UsePAM no\n"
        "PubkeyAuthentication yes\n"
        "PasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\n"
        "PermitRootLogin prohibit-password\n"
        "AllowTcpForwarding {forwarding}\n"
        "AllowStreamLocalForwarding no\n"
        "AllowAgentForwarding no\n"
        "X11Forwarding no\n"
        "PermitTunnel no\n"
        "PermitUserEnvironment no\n"
        "UseDNS no\n"
        "PrintMotd no\n"
        "PrintLastLog no\n"
        "MaxStartups 200\n"
        "MaxSessions {max_sessions}\n"
        "LogLevel VERBOSE\n"
        "{extra}".format(port=port, listen=listen, hostkey=host_key, authkeys=authorized_keys,
                         forwarding="local" if forwarding else "no", max_sessions=max_sessions, extra=extra)
        + extra_config)


def _host_block(alias: str, hostname: str, port: int, key: str, user: str, known_hosts: str,
                connect_timeout: bool = True) -> str:
    """One ``Host`` block of the client config: batch mode, only ``key``, only our known_hosts."""
    return (
        "Host {alias}\n"
        "    HostName {hostname}\n"
        "    Port {port}\n"
        "    IdentityFile {key}\n"
        "    User {user}\n"
        "    IdentitiesOnly yes\n"
        "    BatchMode yes\n"
        "    UserKnownHostsFile {known_hosts}\n"
        "    GlobalKnownHostsFile /dev/null\n"
        "    UpdateHostKeys no\n"
        "{timeout}"
        "    LogLevel ERROR\n"
    ).format(alias=alias, hostname=hostname, port=port, key=key, user=user, known_hosts=known_hosts,
             timeout="    ConnectTimeout 10\n" if connect_timeout else "")


# --------------------------------------------------------------------------- server


class SSHServer:
    """A throw-away sshd on 127.0.0.1 plus a client config to reach it; the tests' session fixture
    (tests/conftest.py), some tests of their own, the benchmark and ``proxykernel demo`` make one.

    Attributes: alias, config_path, port, log_path, pid, tmpdir (and badauth_alias,
    nosuchhost_alias, user, host_key_path, client_key_path, known_hosts_path,
    sshd_config_path, ns); the paths are "" and port and pid 0 until start().
    Methods: start(), stop(), login_count(), log(), ssh_command(*args), running(),
    session_pids(), allow_user(name).
    """

    alias = ALIAS
    badauth_alias = BADAUTH_ALIAS
    nosuchhost_alias = NOSUCHHOST_ALIAS

    def __init__(self, allow_tcp_forwarding: bool = False, netns: Optional[str] = None,
                 listen_address: str = "127.0.0.1", max_sessions: int = 200, extra_config: str = "") -> None:
        # Only the benchmark's ssh -L comparison turns this on; tests must not need forwarding.
        self.allow_tcp_forwarding = allow_tcp_forwarding
        self.netns = netns  # a network namespace (by name) to run sshd in; None: this host's
        self.listen_address = listen_address  # sshd's ListenAddress and the clients' HostName
        self.max_sessions = max_sessions  # sessions per connection (OpenSSH's default is 10)
        self.extra_config = extra_config  # appended to sshd_config: Match blocks (testing/twofactor.py)
        self.tmpdir: Optional[str] = None  # None again after stop()
        self.port = 0
        self.pid = 0
        self.ns: Optional[str] = None  # PID namespace of the sshd (set once it runs)
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self.user = pwd.getpwuid(os.getuid()).pw_name
        self.config_path = self.log_path = self.sshd_config_path = ""
        self.host_key_path = self.client_key_path = self.badauth_key_path = ""
        self.authorized_keys_path = self.known_hosts_path = ""

    # -- lifecycle

    def start(self) -> SSHServer:
        if self.proc is not None:
            raise RuntimeError("SSHServer already started")
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # privilege separation dir
        self.tmpdir = tempfile.mkdtemp(prefix="pxk-sshd-")
        try:
            self._make_keys(self.tmpdir)
            # A free port can be taken between free_port() and sshd's bind(); retry then.
            for attempt in range(5):
                self.port = free_port()
                self._write_configs(self.tmpdir)
                if self._launch():
                    return self
                if (self.proc is not None  # timed out while running: no retry
                        or "Address already in use" not in self.log() or attempt == 4):
                    raise RuntimeError(
                        "sshd did not start listening on %s:%d; log %s:\n%s"
                        % (self.listen_address, self.port, self.log_path, self.log())
                    )
        except BaseException:
            self.stop()
            raise
        return self

    def _make_keys(self, d: str) -> None:
        self.host_key_path = os.path.join(d, "ssh_host_ed25519_key")
        self.client_key_path = os.path.join(d, "id_ed25519")
        self.badauth_key_path = os.path.join(d, "id_ed25519_unauthorized")
        _keygen(self.host_key_path, "pxk-test-host")
        _keygen(self.client_key_path, "pxk-test-client")
        _keygen(self.badauth_key_path, "pxk-test-unauthorized")
        self.authorized_keys_path = os.path.join(d, "authorized_keys")
        _write(self.authorized_keys_path, _pubkey(self.client_key_path) + "\n")

    def _write_configs(self, d: str) -> None:
        self.sshd_config_path = os.path.join(d, "sshd_config")
        self.config_path = os.path.join(d, "ssh_config")
        self.known_hosts_path = os.path.join(d, "known_hosts")
        self.log_path = os.path.join(d, "sshd.log")
        _write(self.sshd_config_path, _sshd_config(self.port, self.listen_address, self.host_key_path,
                                                   self.authorized_keys_path, self.allow_tcp_forwarding,
                                                   self.max_sessions, self.extra_config))
        _write(self.known_hosts_path,
               "[%s]:%d %s\n" % (self.listen_address, self.port, _pubkey(self.host_key_path)))
        blocks = [(self.alias, self.listen_address, self.client_key_path),
                  (self.badauth_alias, self.listen_address, self.badauth_key_path),
                  (self.nosuchhost_alias, "nosuchhost.invalid", self.client_key_path)]
        _write(self.config_path, "\n".join(_host_block(alias, hostname, self.port, key, self.user,
                                                       self.known_hosts_path)
                                           for alias, hostname, key in blocks))

    def _launch(self) -> bool:
        """Start sshd; True once the port accepts connections, False if sshd exited."""
        with open(self.log_path, "ab") as log:
            # ip netns exec execs its command: self.pid stays the unshare process.
            netns = ["ip", "netns", "exec", self.netns] if self.netns else []
            self.proc = subprocess.Popen(
                netns + ["unshare", "--pid", "--fork", "--kill-child",
                         SSHD, "-D", "-e", "-f", self.sshd_config_path],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        self.pid = self.proc.pid
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.proc = None
                return False
            if port_open(self.port, self.listen_address):
                self.ns = self._find_namespace()
                return True
            time.sleep(POLL_INTERVAL)
        return False

    def _find_namespace(self) -> Optional[str]:
        """PID namespace of the sshd (the child of unshare)."""
        own = pid_namespace(self.pid)
        for child in descendants(self.pid):
            ns = pid_namespace(child)
            if ns is not None and ns != own:
                return ns
        return None

    def session_pids(self) -> List[int]:
        """Live processes of the "remote" side other than the listening sshd.

        Everything sshd spawned for connections (privsep children, shells, commands,
        daemons started by them) lives in the server's PID namespace; the listener is
        the child of the unshare process.
        """
        if not self.running() or not self.ns:
            return []
        listener = {p for p, st in process_table().items() if st[2] == self.pid}
        return [p for p in pids_in_namespace(self.ns) if p not in listener]

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _terminate_sessions(self, ns: Optional[str]) -> None:
        """SIGTERM to what the "remote" runs (agents, kernels), as a host shutdown would, so they
        remove their own files; the listener's --kill-child would SIGKILL them."""
        listener = [p for p in pids_in_pgroup(self.pid) if p != self.pid]
        sessions = [p for p in (pids_in_namespace(ns) if ns else ()) if p not in listener]
        for pid in sessions:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + STOP_TIMEOUT
        while any((read_stat(p) or ("", "Z"))[1] != "Z" for p in sessions):  # gone or a zombie: done
            if time.monotonic() >= deadline:
                break
            time.sleep(POLL_INTERVAL)

    def _remaining(self, pgid: int, ns: Optional[str]) -> Set[int]:
        """What is left of the server's process group and PID namespace."""
        return set(pids_in_pgroup(pgid)) | set(pids_in_namespace(ns) if ns else ())

    def _wait_gone(self, pgid: int, ns: Optional[str]) -> bool:
        """Wait up to STOP_TIMEOUT until nothing of the server remains; True if so."""
        deadline = time.monotonic() + STOP_TIMEOUT
        while self._remaining(pgid, ns):
            if time.monotonic() >= deadline:
                return False
            time.sleep(POLL_INTERVAL)
        return True

    def stop(self) -> None:
        """Kill the server and everything in its PID namespace, then remove tmpdir.

        Idempotent. Kills the process group it started (os.killpg(pid, SIGTERM), up to
        5 s, then SIGKILL) and waits until no process of that group or namespace remains.
        """
        if self.proc is not None:
            pgid = self.pid  # start_new_session=True: pgid == pid
            ns = self.ns or self._find_namespace()
            self._terminate_sessions(ns)
            try:
                os.killpg(pgid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                pass
            if not self._wait_gone(pgid, ns):
                # Whatever is still there (a stopped or hung process) gets SIGKILL.
                leftover = self._remaining(pgid, ns)
                try:
                    os.killpg(pgid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                for pid in leftover:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                self.proc.wait(timeout=STOP_TIMEOUT)
                if not self._wait_gone(pgid, ns):
                    raise RuntimeError("sshd processes survive SIGKILL: %s" % leftover)
            self.proc = None
        if self.tmpdir is not None:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.tmpdir = None

    def allow_user(self, name: str) -> str:
        """Let the existing local user ``name`` log in as alias ``pxk-user-NAME``; returns the alias.

        A second user plays a remote user without root (tests of --sudo, which make the user).
        sshd reads AuthorizedKeysFile as that user, so tmpdir becomes traversable (0711) and the
        authorized keys readable; private keys stay 0600.
        """
        assert self.tmpdir is not None, "start() the server first"
        os.chmod(self.tmpdir, 0o711)
        os.chmod(self.authorized_keys_path, 0o644)
        alias = "pxk-user-%s" % name
        with open(self.config_path, "a") as f:
            f.write("\n" + _host_block(alias, self.listen_address, self.port, self.client_key_path, name,
                                       self.known_hosts_path, connect_timeout=False))
        return alias

    def __enter__(self) -> SSHServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- queries

    def log(self) -> str:
        """The sshd log so far ('' if none)."""
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except (OSError, TypeError):
            return ""

    def login_count(self) -> int:
        """Number of successful public-key logins so far ('Accepted publickey' lines)."""
        return sum(1 for line in self.log().splitlines() if "Accepted publickey" in line)

    def ssh_command(self, *args: str, alias: Optional[str] = None, options: Sequence[str] = ()) -> List[str]:
        """['ssh', '-F', config_path, *options, ALIAS, '--', *args] (no '--' if no args)."""
        cmd = ["ssh", "-F", self.config_path, *options, alias or self.alias]
        if args:
            cmd += ["--", *args]
        return cmd

    def __repr__(self) -> str:
        return "<SSHServer %s port=%s pid=%s tmpdir=%s>" % (
            "running" if self.running() else "stopped", self.port, self.pid, self.tmpdir)
