"""``proxykernel login`` and ``logout``: the shared ssh connection of a host that asks for a password
or a one-time code, opened by the user in a terminal; and what ``check`` says about it.

Kernels never prompt (their ssh runs in BatchMode, see ssh.py): on such a host they reach it only
through an open OpenSSH ControlMaster. ``login`` opens that master with the user's own ssh on the
user's terminal, so ssh's own prompts (password, one-time code, a new host key) appear there; it
then goes to the background and stays for ``--persist`` after its last session, or until the
network drops it. The master is ours (``config.control_path``, the one kernels with the same ssh
settings use), or the user's own where their ssh config sets ``ControlPath``.

Stdlib only; every ssh run here is bounded by a timeout, except the login itself, which waits for
the user. Nothing secret passes through this module: the password goes from the terminal to ssh.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass, replace
from typing import Iterator, List, Optional, Tuple

from proxykernel.config import ProxyConfig, control_path, ssh_settings
from proxykernel.probe import ProbeFailed, Step
from proxykernel.ssh import SSHOptions, config_args, explain_ssh_failure, login_sentence, needs_login
from remote_agent.paths import runtime_dir

__all__ = ["LoginFailed", "LoginState", "DEFAULT_PERSIST", "parse_duration", "control_socket", "login",
           "logout", "login_state", "through_login", "login_steps"]

DEFAULT_PERSIST = "12h"
QUICK = 15.0  # seconds for the quick local ssh runs (-O check, -O exit, ssh -G)
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


class LoginFailed(ProbeFailed):
    """``login`` or ``logout`` could not do its job; ``str(error)`` is the sentence for the user."""


@dataclass(frozen=True)
class LoginState:
    """An open shared connection: the master's pid, and until when ``login`` asked it to stay
    (None: opened otherwise, e.g. by a kernel on a host that needs no login)."""
    pid: int
    until: Optional[float]

    def describe(self, now: Optional[float] = None) -> str:
        """"logged in until 21:40", as ``check`` and ``login`` print it."""
        if self.until is None:
            return "a shared connection is open (pid %d)" % self.pid
        if self.until < (time.time() if now is None else now):
            return "logged in (pid %d); kept open while kernels use it" % self.pid
        return "logged in until %s (pid %d)" % (_clock(self.until, now), self.pid)


def _clock(when: float, now: Optional[float] = None) -> str:
    """21:40 today; 'Tue 09:40' another day (local time)."""
    today = time.localtime(time.time() if now is None else now)
    moment = time.localtime(when)
    same_day = moment.tm_yday == today.tm_yday and moment.tm_year == today.tm_year
    return time.strftime("%H:%M" if same_day else "%a %H:%M", moment)


def parse_duration(text: str) -> float:
    """``--persist``: seconds, or a number with s, m, h or d (as ssh's ControlPersist takes it)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text.lower())
    if not match or float(match.group(1)) <= 0:
        raise ValueError("--persist expects a duration such as 12h, 90m or 3600, not %r" % text)
    return float(match.group(1)) * _UNITS[match.group(2)]


def _ours(opts: SSHOptions) -> Optional[str]:
    """Our ControlMaster socket for these ssh settings (the one their kernels use), or None when
    the user's ssh config sets ControlPath."""
    return control_path(ProxyConfig(host=opts.host, python="", connection_file="", ssh=opts))


def control_socket(opts: SSHOptions) -> str:
    """The socket of the shared connection for these ssh settings: ours, or the user's own."""
    ours = _ours(opts)
    if ours:
        return ours
    path = (ssh_settings(opts) or {}).get("controlpath", "none")
    if path == "none":
        raise LoginFailed("ssh cannot read its settings for %r ('ssh -G %s' fails): check your ssh config"
                          % (opts.host, opts.host))
    return path


def _ssh(opts: SSHOptions, *ours: str) -> List[str]:
    """ssh with ``ours`` (-o options) first, which win over the user's (ssh takes the first value),
    then the user's settings and our socket."""
    socket = _ours(opts)
    argv = [opts.ssh, *ours, *config_args(opts)]
    return argv + (["-o", "ControlPath=" + socket] if socket else [])


def _memo(opts: SSHOptions) -> str:
    """Where ``login`` notes until when it asked the connection to stay (no secret in it)."""
    digest = hashlib.sha256(control_socket(opts).encode()).hexdigest()[:16]
    return os.path.join(runtime_dir(), "login-" + digest)


def _master(opts: SSHOptions) -> Optional[int]:
    """The pid of the open master (``ssh -O check``), or None."""
    try:
        done = subprocess.run(_ssh(opts) + ["-O", "check", "--", opts.host], capture_output=True, text=True,
                              timeout=QUICK, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = re.search(r"Master running \(pid=(\d+)\)", done.stderr)
    return int(found.group(1)) if done.returncode == 0 and found else None


def login_state(opts: SSHOptions) -> Optional[LoginState]:
    """The open shared connection for these ssh settings, or None."""
    pid = _master(opts)
    if pid is None:
        return None
    try:
        with open(_memo(opts), encoding="utf-8") as memo:
            noted = json.load(memo)
        until = float(noted["until"]) if noted.get("pid") == pid else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        until = None
    return LoginState(pid, until)


def login(opts: SSHOptions, persist: float) -> LoginState:
    """Open the shared connection with ssh on this terminal (its prompts appear there); it goes to
    the background once logged in, and stays ``persist`` seconds after its last session. Called by
    ``proxykernel login``; an open one is kept as it is."""
    state = login_state(opts)
    if state is not None:
        return state
    # ControlMaster=auto: a socket left by a master that was killed is removed, not in the way.
    argv = _ssh(opts, "-o", "BatchMode=no", "-o", "ControlMaster=auto",
                "-o", "ControlPersist=%d" % max(1, round(persist)))
    # SIGHUP ignored, as under nohup, by ssh and what it starts: a ProxyJump's ssh stays in this
    # terminal's process group after the master goes to the background, and must outlive it.
    hangup = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        code = subprocess.call(argv + ["-N", "--", opts.host])
    finally:
        signal.signal(signal.SIGHUP, hangup)
    pid = _master(opts)
    if code != 0 or pid is None:
        raise LoginFailed("the login to %r did not open a shared connection (ssh exited with code %d)"
                          % (opts.host, code))
    state = LoginState(pid, time.time() + persist)
    memo = _memo(opts)
    with open(os.open(memo, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w", encoding="utf-8") as out:
        json.dump({"pid": pid, "until": state.until}, out)
    return state


def logout(opts: SSHOptions) -> bool:
    """Close the shared connection (``ssh -O exit``); False if none was open."""
    if _master(opts) is None:
        return False
    try:
        subprocess.run(_ssh(opts) + ["-O", "exit", "--", opts.host], capture_output=True, timeout=QUICK,
                       stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise LoginFailed("cannot close the shared connection to %r: %s" % (opts.host, error)) from None
    try:
        os.unlink(_memo(opts))
    except OSError:
        pass
    return _master(opts) is None


def _fresh_login(opts: SSHOptions, timeout: float) -> Tuple[Optional[int], List[str]]:
    """A new ssh login of its own, in BatchMode, past any shared connection: its exit code (None:
    no answer within ``timeout``) and what ssh said."""
    argv = [opts.ssh, "-o", "BatchMode=yes", "-o", "ControlPath=none", *config_args(opts), "--", opts.host, "true"]
    try:  # its own session, no terminal: a ProxyJump's ssh (not in BatchMode) cannot prompt either
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                              start_new_session=True)
    except subprocess.TimeoutExpired:
        return None, []
    except OSError as error:
        raise ProbeFailed("cannot run %r: %s" % (opts.ssh, error)) from None
    return done.returncode, done.stderr.splitlines()


def through_login(opts: SSHOptions) -> SSHOptions:
    """The same ssh settings going through our shared connection when one is open (``check``,
    ``deploy`` and ``discover`` then need no login of their own); they open none themselves."""
    socket = _ours(opts)
    if not socket:
        return opts  # the user's own ControlPath is in their settings already
    return replace(opts, options=tuple(opts.options) + ("ControlPath=" + socket, "ControlMaster=no"))


def login_steps(opts: SSHOptions, timeout: float) -> Iterator[Step]:
    """``check``'s first line: whether the host asks for an interactive login, and whether one is
    open. Without one, a host that asks, or cannot be reached, ends the check with what to do."""
    started = time.monotonic()
    code, lines = _fresh_login(opts, timeout)
    state = login_state(opts)
    took = time.monotonic() - started
    asks = needs_login(lines)
    if state is None and code != 0:
        if code is None:
            raise ProbeFailed("no answer from %r within %g s: check that 'ssh %s true' works quickly, or "
                              "raise --timeout" % (opts.host, timeout, opts.host))
        raise ProbeFailed(login_sentence(opts, " (no login is open), then check again") if asks
                          else explain_ssh_failure(opts.host, lines, code, opts))
    if state is None:
        yield Step("login", "not needed: ssh logs in without a prompt", took)
        return
    why = ("%s asks for a password or one-time code" % opts.host if asks else
           "not needed: ssh logs in without a prompt" if code == 0 else "a new login fails: %s"
           % explain_ssh_failure(opts.host, lines, code, opts))
    yield Step("login", "%s; %s" % (state.describe(), why), took)
