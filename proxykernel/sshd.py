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

add_user(NAME, sudo=...) adds ``pxk-user-NAME``: the same server, logging in as a second local
user (made with useradd if missing), optionally with NOPASSWD sudo until stop().

``SSHServer(netns=NS, listen_address=ADDR)`` runs the sshd inside an existing network namespace
(``ip netns exec NS ...``), listening on ADDR, and the client config's HostName is ADDR: the
"remote" host is then behind a link a test can cut (see tests/test_netns.py).
"""

import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time

SSHD = "/usr/sbin/sshd"
ALIAS = "pxk-test"
BADAUTH_ALIAS = "pxk-badauth"
NOSUCHHOST_ALIAS = "pxk-nosuchhost"

START_TIMEOUT = 10.0  # seconds until the port must accept a TCP connection
POLL_INTERVAL = 0.02
STOP_TIMEOUT = 5.0  # seconds after SIGTERM before SIGKILL


# --------------------------------------------------------------------------- helpers


def free_port(host="127.0.0.1"):
    """A TCP port on ``host`` that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_open(port, host="127.0.0.1", timeout=0.2):
    """True if something accepts a TCP connection on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def read_stat(pid):
    """(comm, state, ppid, pgid, sid) of a process from /proc/PID/stat, or None if gone."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            data = f.read().decode("utf-8", "replace")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # comm is in parentheses and may itself contain ") "; split at the last ")".
    lpar, rpar = data.index("("), data.rindex(")")
    fields = data[rpar + 2 :].split()
    return data[lpar + 1 : rpar], fields[0], int(fields[1]), int(fields[2]), int(fields[3])


def all_pids():
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def process_table():
    """{pid: (comm, state, ppid, pgid, sid)} for all processes."""
    table = {}
    for pid in all_pids():
        st = read_stat(pid)
        if st is not None:
            table[pid] = st
    return table


def pids_in_pgroup(pgid):
    """Live (non-zombie) processes whose process group is ``pgid``."""
    return sorted(p for p, st in process_table().items() if st[3] == pgid and st[1] != "Z")


def descendants(pid, table=None):
    """All descendants of ``pid`` (by ppid), as a sorted list."""
    table = process_table() if table is None else table
    children = {}
    for p, st in table.items():
        children.setdefault(st[2], []).append(p)
    out, todo = [], list(children.get(pid, ()))
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, ()))
    return sorted(out)


def pipes(pid):
    """The pipes ``pid`` has open, as /proc/PID/fd shows them (``pipe:[INODE]``)."""
    found = set()
    try:
        names = os.listdir("/proc/%d/fd" % pid)
    except OSError:
        return found
    for name in names:
        try:
            target = os.readlink("/proc/%d/fd/%s" % (pid, name))
        except OSError:
            continue
        if target.startswith("pipe:"):
            found.add(target)
    return found


def stream_peer_pid(sshd, daemon):
    """sshd's process at the other end of the ssh pipes ``daemon`` reads and writes: the one that
    carries the stream to the network (one per connection, shared by its sessions)."""
    held = pipes(daemon)
    for pid in descendants(sshd.pid):
        if pid != daemon and (read_stat(pid) or ("",))[0] == "sshd" and held & pipes(pid):
            return pid
    raise LookupError("no sshd process holds the other end of the agent daemon's stream")


def pid_namespace(pid):
    """The PID namespace of a process ('pid:[4026...]'), or None if gone."""
    try:
        return os.readlink("/proc/%d/ns/pid" % pid)
    except OSError:
        return None


def pids_in_namespace(ns):
    """Live (non-zombie) processes in PID namespace ``ns`` (as from pid_namespace())."""
    out = []
    for pid in all_pids():
        if pid_namespace(pid) == ns:
            st = read_stat(pid)
            if st is not None and st[1] != "Z":
                out.append(pid)
    return sorted(out)


def _keygen(path, comment):
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", path],
        check=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
    )


def _pubkey(path):
    """'ssh-ed25519 AAAA...' of a key (without the comment)."""
    with open(path + ".pub") as f:
        kind, blob = f.read().split()[:2]
    return "%s %s" % (kind, blob)


def _openssh_version():
    """(major, minor) of the installed OpenSSH, e.g. (9, 2)."""
    out = subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr
    m = re.search(r"OpenSSH_(\d+)\.(\d+)", out)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def _write(path, text, mode=0o600):
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)


# --------------------------------------------------------------------------- server


class SSHServer:
    """A throw-away sshd on 127.0.0.1 plus a client config to reach it.

    Attributes: alias, config_path, port, log_path, pid, tmpdir (and badauth_alias,
    nosuchhost_alias, user, host_key_path, client_key_path, known_hosts_path,
    sshd_config_path, ns).
    Methods: start(), stop(), login_count(), log(), ssh_command(*args), running(),
    session_pids().
    """

    alias = ALIAS
    badauth_alias = BADAUTH_ALIAS
    nosuchhost_alias = NOSUCHHOST_ALIAS

    def __init__(self, allow_tcp_forwarding: bool = False, netns=None, listen_address="127.0.0.1",
                 max_sessions: int = 200):
        # Only the benchmark's ssh -L comparison turns this on; tests must not need forwarding.
        self.allow_tcp_forwarding = allow_tcp_forwarding
        self.netns = netns  # a network namespace (by name) to run sshd in; None: this host's
        self.listen_address = listen_address  # sshd's ListenAddress and the clients' HostName
        self.max_sessions = max_sessions  # sessions per connection (OpenSSH's default is 10)
        self.tmpdir = None
        self.port = None
        self.pid = None
        self.ns = None  # PID namespace of the sshd (set once it runs)
        self.proc = None
        self.user = pwd.getpwuid(os.getuid()).pw_name
        self.config_path = self.log_path = self.sshd_config_path = None
        self.host_key_path = self.client_key_path = self.badauth_key_path = None
        self.known_hosts_path = None
        self.sudoers_paths: "list[str]" = []  # files in /etc/sudoers.d that add_user() wrote; stop() removes them

    # -- lifecycle

    def start(self):
        if self.proc is not None:
            raise RuntimeError("SSHServer already started")
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # privilege separation dir
        self.tmpdir = tempfile.mkdtemp(prefix="pxk-sshd-")
        try:
            self._make_keys()
            # A free port can be taken between free_port() and sshd's bind(); retry then.
            for attempt in range(5):
                self.port = free_port()
                self._write_configs()
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

    def _make_keys(self):
        d = self.tmpdir
        self.host_key_path = os.path.join(d, "ssh_host_ed25519_key")
        self.client_key_path = os.path.join(d, "id_ed25519")
        self.badauth_key_path = os.path.join(d, "id_ed25519_unauthorized")
        _keygen(self.host_key_path, "pxk-test-host")
        _keygen(self.client_key_path, "pxk-test-client")
        _keygen(self.badauth_key_path, "pxk-test-unauthorized")
        self.authorized_keys_path = os.path.join(d, "authorized_keys")
        _write(self.authorized_keys_path, _pubkey(self.client_key_path) + "\n")

    def _write_configs(self):
        d = self.tmpdir
        self.sshd_config_path = os.path.join(d, "sshd_config")
        self.config_path = os.path.join(d, "ssh_config")
        self.known_hosts_path = os.path.join(d, "known_hosts")
        self.log_path = os.path.join(d, "sshd.log")
        extra = ""
        if _openssh_version() >= (9, 8):
            # Do not lock out 127.0.0.1 after the tests' deliberate auth failures.
            extra = "PerSourcePenalties no\n"
        # No SetEnv and no AcceptEnv: sessions get sshd's default environment only.
        _write(
            self.sshd_config_path,
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
            "{extra}".format(
                port=self.port,
                listen=self.listen_address,
                hostkey=self.host_key_path,
                authkeys=self.authorized_keys_path,
                forwarding="local" if self.allow_tcp_forwarding else "no",
                max_sessions=self.max_sessions,
                extra=extra,
            ),
        )
        _write(
            self.known_hosts_path,
            "[%s]:%d %s\n" % (self.listen_address, self.port, _pubkey(self.host_key_path)),
        )
        common = (
            "    User {user}\n"
            "    IdentitiesOnly yes\n"
            "    BatchMode yes\n"
            "    UserKnownHostsFile {known_hosts}\n"
            "    GlobalKnownHostsFile /dev/null\n"
            "    UpdateHostKeys no\n"
            "    ConnectTimeout 10\n"
            "    LogLevel ERROR\n"
        ).format(user=self.user, known_hosts=self.known_hosts_path)
        _write(
            self.config_path,
            (
                "Host {alias}\n"
                "    HostName {listen}\n"
                "    Port {port}\n"
                "    IdentityFile {key}\n" + common + "\n"
                "Host {badauth}\n"
                "    HostName {listen}\n"
                "    Port {port}\n"
                "    IdentityFile {badkey}\n" + common + "\n"
                "Host {nosuchhost}\n"
                "    HostName nosuchhost.invalid\n"
                "    Port {port}\n"
                "    IdentityFile {key}\n" + common
            ).format(
                alias=self.alias,
                listen=self.listen_address,
                badauth=self.badauth_alias,
                nosuchhost=self.nosuchhost_alias,
                port=self.port,
                key=self.client_key_path,
                badkey=self.badauth_key_path,
            ),
        )

    def _launch(self):
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

    def _find_namespace(self):
        """PID namespace of the sshd (the child of unshare)."""
        own = pid_namespace(self.pid)
        for child in descendants(self.pid):
            ns = pid_namespace(child)
            if ns is not None and ns != own:
                return ns
        return None

    def session_pids(self):
        """Live processes of the "remote" side other than the listening sshd.

        Everything sshd spawned for connections (privsep children, shells, commands,
        daemons started by them) lives in the server's PID namespace; the listener is
        the child of the unshare process.
        """
        if not self.running() or not self.ns:
            return []
        listener = {p for p, st in process_table().items() if st[2] == self.pid}
        return [p for p in pids_in_namespace(self.ns) if p not in listener]

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def _terminate_sessions(self, ns):
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

    def stop(self):
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
            deadline = time.monotonic() + STOP_TIMEOUT
            while pids_in_pgroup(pgid) or (ns and pids_in_namespace(ns)):
                if time.monotonic() >= deadline:
                    break
                time.sleep(POLL_INTERVAL)
            # Whatever is still there (a stopped or hung process) gets SIGKILL.
            leftover = set(pids_in_pgroup(pgid)) | set(pids_in_namespace(ns) if ns else ())
            if leftover:
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
                deadline = time.monotonic() + STOP_TIMEOUT
                while pids_in_pgroup(pgid) or (ns and pids_in_namespace(ns)):
                    if time.monotonic() >= deadline:
                        raise RuntimeError("sshd processes survive SIGKILL: %s" % leftover)
                    time.sleep(POLL_INTERVAL)
            self.proc = None
        for path in self.sudoers_paths:
            if os.path.exists(path):
                os.remove(path)
        self.sudoers_paths = []
        if self.tmpdir is not None:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.tmpdir = None

    def add_user(self, name, sudo=False):
        """Let local user ``name`` log in as alias ``pxk-user-NAME``; returns the alias.

        A second user plays a remote user without root (tests of --sudo). The account is made
        with ``useradd -m`` if missing and kept; ``usermod -p '*'`` unlocks it for key logins
        (with UsePAM no, a locked '!' password refuses them). ``sudo=True`` writes a NOPASSWD
        sudoers file, removed by stop(). sshd reads AuthorizedKeysFile as that user, so tmpdir
        becomes traversable (0711) and the authorized keys readable; private keys stay 0600.
        """
        try:
            pwd.getpwnam(name)
        except KeyError:
            subprocess.run(["useradd", "-m", "-s", "/bin/sh", name], check=True, stdin=subprocess.DEVNULL)
        subprocess.run(["usermod", "-p", "*", name], check=True, stdin=subprocess.DEVNULL)
        os.chmod(self.tmpdir, 0o711)
        os.chmod(self.authorized_keys_path, 0o644)
        if sudo:
            path = "/etc/sudoers.d/pxk-test-%s" % name
            _write(path, "%s ALL=(ALL) NOPASSWD: ALL\n" % name, mode=0o440)
            self.sudoers_paths.append(path)
        alias = "pxk-user-%s" % name
        with open(self.config_path, "a") as f:
            # ssh takes the first value it reads, so this block's User wins over the shared one.
            f.write("\nHost %s\n    User %s\n    HostName %s\n    Port %d\n    IdentityFile %s\n"
                    "    IdentitiesOnly yes\n    BatchMode yes\n    UserKnownHostsFile %s\n"
                    "    GlobalKnownHostsFile /dev/null\n    UpdateHostKeys no\n    LogLevel ERROR\n"
                    % (alias, name, self.listen_address, self.port, self.client_key_path,
                       self.known_hosts_path))
        return alias

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- queries

    def log(self):
        """The sshd log so far ('' if none)."""
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except (OSError, TypeError):
            return ""

    def login_count(self):
        """Number of successful public-key logins so far ('Accepted publickey' lines)."""
        return sum(1 for line in self.log().splitlines() if "Accepted publickey" in line)

    def ssh_command(self, *args, alias=None, options=()):
        """['ssh', '-F', config_path, *options, ALIAS, '--', *args] (no '--' if no args)."""
        cmd = ["ssh", "-F", self.config_path, *options, alias or self.alias]
        if args:
            cmd += ["--", *args]
        return cmd

    def __repr__(self):
        return "<SSHServer %s port=%s pid=%s tmpdir=%s>" % (
            "running" if self.running() else "stopped", self.port, self.pid, self.tmpdir)
