"""A host that asks for a key AND a password (issue 12), against a real sshd, real kernels and
jupyter_client: the password is typed into ``proxykernel login`` on a real pseudo-terminal (pexpect),
as a user types it; nothing else ever prompts.

The sshd of this module demands ``AuthenticationMethods publickey,password`` from a throw-away user
with a random password (proxykernel/testing/twofactor.py). Every test begins and ends with no login
open; the kernels run on the system Python, which that user can read.
"""
from __future__ import annotations

import glob
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Dict, Iterator, List, Optional, Tuple

import pexpect
import pytest
from jupyter_client import BlockingKernelClient, KernelManager

from proxykernel.login import login_state
from proxykernel.ssh import SSHOptions
from proxykernel.testing.sshd import SSHServer
from proxykernel.testing.twofactor import PasswordUser
from remote_agent.paths import runtime_dir
from tests.kernels import READY_TIMEOUT, proxy_argv, run_cell, running_kernel
from tests.test_reconnect import ssh_child
from tests.userland import one_error, proxykernel, repo_python, user_env

ASKS = "asks for a password or one-time code"
SENTENCE = ("{alias} asks for a password or one-time code: run 'proxykernel login -F {config} {alias}' in a "
            "terminal{then}")
START_AGAIN = ", then start the kernel again"
WAITS = "; the kernel waits until then (at most --reconnect-timeout) and goes on where it was"
RELOGIN_AFTER = 20.0  # seconds the user takes to log in again: well past --heartbeat-timeout (5 s)


@dataclass
class TwoFactorHost:
    server: SSHServer
    user: PasswordUser
    alias: str

    @property
    def opts(self) -> SSHOptions:
        return SSHOptions(host=self.alias, config_file=self.server.config_path)

    def sentence(self, then: str) -> str:
        return SENTENCE.format(alias=self.alias, config=self.server.config_path, then=then)

    def logins(self) -> int:
        """Logins that passed both factors, from sshd's log."""
        return self.server.log().count("Accepted password for %s " % self.user.name)


@pytest.fixture(scope="module")
def host() -> Iterator[TwoFactorHost]:
    with PasswordUser() as user, SSHServer(extra_config=user.sshd_config()) as server:
        yield TwoFactorHost(server, user, server.allow_user(user.name))


@pytest.fixture
def clean(host: TwoFactorHost) -> Iterator[List[str]]:
    """No login open before or after the test; yields a list of what the test printed or logged
    (file paths and texts), which is searched for the password at the end."""
    assert login_state(host.opts) is None
    seen: List[str] = []
    try:
        yield seen
    finally:
        state = login_state(host.opts)
        if state is not None:
            subprocess.run(["ssh", "-F", host.server.config_path, "-o", "ControlPath=none", "-O", "exit",
                            host.alias], capture_output=True, stdin=subprocess.DEVNULL)
            os.kill(state.pid, signal.SIGKILL)
        texts = [host.server.log()] + [_read(item) if os.path.isfile(item) else item for item in seen]
        assert not [text for text in texts if host.user.password in text], "the password was written down"


def _read(path: str) -> str:
    with open(path, errors="replace") as f:
        return f.read()


def log_in(host: TwoFactorHost, argv: Optional[List[str]] = None) -> str:
    """``proxykernel login`` on a pseudo-terminal, the password typed at ssh's prompt; its output."""
    argv = argv or ["proxykernel", "login", "-F", host.server.config_path, host.alias]
    child = pexpect.spawn(argv[0], argv[1:], env=dict(os.environ, CI="true"), encoding="utf-8", timeout=30)
    try:
        child.expect(r"password: ?")
        prompt = child.before + child.after
        child.sendline(host.user.password)
        child.expect(pexpect.EOF)
        rest = child.before
    finally:
        child.close(force=True)
    assert child.exitstatus == 0, rest
    assert "%s@" % host.user.name in prompt  # ssh's own prompt, on the terminal
    return prompt + rest


def sentence_command(sentence: str) -> List[str]:
    """The command a sentence tells the user to run."""
    found = re.search(r"run '(proxykernel login .*)' in a terminal", sentence)
    assert found, sentence
    return shlex.split(found.group(1))


def _proxy(host: TwoFactorHost, tmp_path: Path) -> "subprocess.CompletedProcess[str]":
    from jupyter_client.connect import write_connection_file
    connection_file = str(tmp_path / "kernel.json")
    write_connection_file(connection_file, ip="127.0.0.1", key=b"secret-test-key")
    argv = [sys.executable, "-m", "proxykernel", "--host", host.alias, "--python", repo_python("system"),
            "--ssh-config", host.server.config_path, "-f", connection_file]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)


@contextmanager
def logged_kernel(host: TwoFactorHost, spec_dir: Path, log: IO[str],
                  extra: Tuple[str, ...] = ()) -> Iterator[Tuple[KernelManager, BlockingKernelClient]]:
    """A kernel through a kernelspec, as Jupyter starts it, its proxy's stderr in ``log``."""
    argv = proxy_argv(host.server, repo_python("system"), extra)
    argv[argv.index("--host") + 1] = host.alias
    with running_kernel(argv, spec_dir, stderr=log) as (km, kc):
        yield km, kc


def check(host: TwoFactorHost, tmp_path: Path) -> "subprocess.CompletedProcess[str]":
    return proxykernel(user_env(tmp_path), "check", host.alias, "--python", repo_python("system"),
                       "-F", host.server.config_path, timeout=60)


def test_without_a_login_a_start_fails_at_once_saying_how_to_log_in(host: TwoFactorHost, tmp_path: Path,
                                                                     clean: List[str]) -> None:
    started = time.monotonic()
    result = _proxy(host, tmp_path)
    took = time.monotonic() - started
    clean.append(result.stderr)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    [error] = [line for line in result.stderr.splitlines() if "ERROR" in line]
    assert error == "[proxykernel ERROR] " + host.sentence(START_AGAIN)
    assert took < 5.0
    # ... and check says the same, as its one error.
    assert one_error(check(host, tmp_path)) == "proxykernel check: error: " + host.sentence(
        " (no login is open), then check again")


def test_one_login_serves_three_kernels_their_restarts_and_reconnects(host: TwoFactorHost, tmp_path: Path,
                                                                       clean: List[str]) -> None:
    before = host.logins()
    out = log_in(host, sentence_command(host.sentence(START_AGAIN)))  # the command the sentence gives
    clean.append(out)
    assert re.search(r"logged in until (\w+ )?\d\d:\d\d \(pid \d+\)\. Kernels there start", out), out
    checked = check(host, tmp_path)
    clean.append(checked.stdout + checked.stderr)
    assert checked.returncode == 0, checked.stderr
    line = r"ok   login .* logged in until (\w+ )?\d\d:\d\d \(pid \d+\); %s %s" % (re.escape(host.alias), ASKS)
    assert re.search(line, checked.stdout), checked.stdout
    log_path = tmp_path / "proxies.log"
    with open(log_path, "w") as log, ExitStack() as stack:
        clean.append(str(log_path))
        kernels = [stack.enter_context(logged_kernel(host, tmp_path / str(i), log)) for i in range(3)]
        for i, (_, kc) in enumerate(kernels):
            assert run_cell(kc, "import getpass; print(getpass.getuser(), %d)" % i)[1][0][1]["text"] == (
                "%s %d\n" % (host.user.name, i))
        km, kc = kernels[0]
        run_cell(kc, "kept = 'here'")
        km.restart_kernel(now=False)
        kc.wait_for_ready(timeout=READY_TIMEOUT)
        assert run_cell(kc, "print('kept' in globals())")[1][0][1]["text"] == "False\n"  # a fresh kernel
        km, kc = kernels[1]
        run_cell(kc, "kept = 'here'")
        os.kill(ssh_child(km), signal.SIGKILL)  # a drop: the reconnect opens a session on the login
        assert run_cell(kc, "print(kept)", timeout=30)[1][0][1]["text"] == "here\n"
        assert host.logins() == before + 1  # one password for all of it
    assert ASKS not in log_path.read_text()


@pytest.mark.timeout(240)  # 20 s of it waiting for the login, by design
def test_a_drop_that_needs_a_new_login_waits_for_it_and_loses_nothing(host: TwoFactorHost, tmp_path: Path,
                                                                      clean: List[str]) -> None:
    clean.append(log_in(host))
    log_path = tmp_path / "proxy.log"
    lines = 200  # one every 0.2 s: 40 s, through the drop, the wait for the login and the resume
    with open(log_path, "w") as log, logged_kernel(host, tmp_path, log) as (km, kc):
        clean.append(str(log_path))
        proxy = km.provisioner.pid  # type: ignore[union-attr]
        pid = run_cell(kc, "import os; print(os.getpid())")[1][0][1]["text"]
        msg_id = kc.execute("import time\nfor i in range(%d):\n    print(i, flush=True)\n    time.sleep(0.2)\n"
                            % lines)
        out: List[str] = []
        notices: List[str] = []

        def read_until(done: Any, timeout: float) -> None:
            deadline = time.monotonic() + timeout
            while not done():
                msg: Dict[str, Any] = kc.get_iopub_msg(timeout=max(0.01, deadline - time.monotonic()))
                if msg["parent_header"].get("msg_id") != msg_id:
                    continue
                if msg["msg_type"] == "stream":
                    (notices if msg["content"]["name"] == "stderr" else out).append(msg["content"]["text"])
                elif msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                    return

        read_until(lambda: len("".join(out).split()) > 5, 20)
        master = login_state(host.opts)
        assert master is not None
        os.kill(master.pid, signal.SIGKILL)  # the connection is gone; a new one needs the password
        killed = time.monotonic()
        read_until(lambda: notices, 15)
        assert notices == ["[proxykernel] %s\n" % host.sentence(WAITS)]  # in the running cell
        assert time.monotonic() - killed < 3
        time.sleep(RELOGIN_AFTER)  # the user reads the notice, finds a terminal and the code
        assert km.is_alive() and kc.hb_channel.is_beating()  # the proxy answers Jupyter meanwhile
        agent_logs = glob.glob(os.path.join("/tmp", "proxykernel-%d" % host.user.uid, "*.log"))
        clean.extend(agent_logs)
        clean.append(log_in(host, sentence_command(notices[0])))
        read_until(lambda: False, 60)
        printed = [int(n) for n in "".join(out).split()]
        assert printed == list(range(lines))  # each line once, in order, none lost
        assert len(notices) == 1
        assert run_cell(kc, "print(os.getpid())")[1][0][1]["text"] == pid  # the same kernel
        assert km.provisioner.pid == proxy  # type: ignore[union-attr]
        clean.extend(glob.glob(os.path.join(runtime_dir(), "login-*")))
    log_text = log_path.read_text()
    assert [line for line in log_text.splitlines() if ASKS in line] == [
        "[proxykernel WARNING] " + host.sentence(WAITS)]  # logged once, through all the refused retries
    resumed = re.search(r"reconnected to .* after ([\d.]+) s", log_text)
    assert resumed and float(resumed.group(1)) > RELOGIN_AFTER, log_text


def test_logout_closes_the_login_and_check_reports_both_states(host: TwoFactorHost, tmp_path: Path,
                                                                clean: List[str]) -> None:
    clean.append(log_in(host))
    assert login_state(host.opts) is not None
    again = proxykernel(user_env(tmp_path), "login", "-F", host.server.config_path, host.alias)
    assert again.returncode == 0 and "logged in until" in again.stdout  # kept: no second prompt
    log_path = tmp_path / "proxy.log"
    with open(log_path, "w") as log, logged_kernel(host, tmp_path, log) as (km, kc):
        clean.append(str(log_path))
        run_cell(kc, "x = 41")
        out = proxykernel(user_env(tmp_path), "logout", "-F", host.server.config_path, host.alias)
        assert (out.returncode, out.stdout) == (0, "%s: logged out\n" % host.alias)
        assert login_state(host.opts) is None
        deadline = time.monotonic() + 15
        while ASKS not in log_path.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)  # the kernel's link is lost, and its reconnect refused
        # No cell ran then: the notice shows in the next cell run, which waits for the login.
        msg_id = kc.execute("print(x + 1)")
        streams: List[Tuple[str, str]] = []
        deadline = time.monotonic() + 60
        logged_in = False
        while time.monotonic() < deadline:
            msg = kc.get_iopub_msg(timeout=max(0.01, deadline - time.monotonic()))
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "stream":
                streams.append((msg["content"]["name"], msg["content"]["text"]))
                if not logged_in:
                    clean.append(log_in(host))
                    logged_in = True
            elif msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                break
        assert streams == [("stderr", "[proxykernel] %s\n" % host.sentence(WAITS)), ("stdout", "42\n")]
    out = proxykernel(user_env(tmp_path), "logout", "-F", host.server.config_path, host.alias)
    assert (out.returncode, out.stdout) == (0, "%s: logged out\n" % host.alias)
    out = proxykernel(user_env(tmp_path), "logout", "-F", host.server.config_path, host.alias)
    assert out.stdout == "%s: no shared connection was open\n" % host.alias
    assert one_error(check(host, tmp_path)).endswith("(no login is open), then check again")


def test_a_login_through_a_two_factor_bastion_covers_the_jump(host: TwoFactorHost, tmp_path: Path,
                                                              clean: List[str]) -> None:
    # The bastion is the two-factor user; behind it, the key-only account of the same sshd. The
    # bastion's block has no BatchMode (the test config's other blocks do): its prompt must reach
    # the terminal through the jump.
    server = host.server
    config = tmp_path / "ssh_config"
    bastion = ("Host pxk-bastion\n    HostName 127.0.0.1\n    Port %d\n    User %s\n    IdentityFile %s\n"
               "    IdentitiesOnly yes\n    UserKnownHostsFile %s\n"
               % (server.port, host.user.name, server.client_key_path, server.known_hosts_path))
    behind = _read(server.config_path).split("\n\n")[0].replace("Host %s" % server.alias, "Host pxk-behind")
    config.write_text(bastion + "\n" + behind + "\n    ProxyJump pxk-bastion\n")
    jump = TwoFactorHost(server, host.user, "pxk-behind")
    argv = ["proxykernel", "login", "-F", str(config), "pxk-behind"]
    opts = SSHOptions(host="pxk-behind", config_file=str(config))
    try:
        clean.append(log_in(jump, argv))
        time.sleep(0.5)  # the terminal is gone: the jump's ssh must have outlived it
        state = login_state(opts)
        assert state is not None
        checked = proxykernel(user_env(tmp_path), "check", "pxk-behind", "--python", sys.executable,
                              "-F", str(config), timeout=60)
        clean.append(checked.stdout + checked.stderr)
        assert checked.returncode == 0, checked.stderr
        assert "pxk-behind %s" % ASKS in checked.stdout  # the jump asks; the login covers it
    finally:
        subprocess.run(["proxykernel", "logout", "-F", str(config), "pxk-behind"], capture_output=True,
                       stdin=subprocess.DEVNULL, timeout=30)
    assert login_state(opts) is None
