"""Looking at a remote host before a kernel runs there: ``proxykernel check``, ``deploy``, ``discover``.

Each runs a small stdlib program on the remote Python (remote_probe.py, remote_discover.py, sent as
text by ``remote_program``) through ``remote_python_command`` (the same shell line as a kernel start,
so ``--workdir``, ``--pre-command`` and ``--sudo`` apply alike) and reads its answer as a ``PXKBOOT``
line, like the bootstrap's. The work is done over a ``Runner`` so that fabfile.py's
``deploy-agent`` can reuse it over Fabric's connection; the command line uses the user's own
``ssh`` (``ssh_runner``).
"""
from __future__ import annotations

import base64
import json
import statistics
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import IO, Any, Callable, Dict, Iterator, List, Optional, Sequence

from proxykernel import remote_discover, remote_probe
from proxykernel.bootstrap import (CACHE_ONLY, AgentBundle, BootReader, BootReply, agent_bundle, boot_error,
                                   remote_command, remote_program, remote_python_command)
from proxykernel.ssh import SSHOptions, explain_ssh_failure, ssh_argv

__all__ = ["Target", "RemoteResult", "Runner", "ProbeFailed", "Step", "ssh_runner", "probe_command",
           "read_probe", "check", "deploy", "deploy_report", "discover"]


@dataclass(frozen=True)
class Target:
    """Where and how a kernel runs: the remote-environment options a kernelspec stores."""
    host: str
    python: str
    sudo: bool = False
    workdir: Optional[str] = None
    pre_command: Optional[str] = None

    def command(self, code: str, args: Sequence[str] = ()) -> str:
        return remote_python_command(self.python, code, args, self.sudo, self.pre_command,
                                     self.workdir)


@dataclass(frozen=True)
class RemoteResult:
    """What a remote program run by ``check``/``deploy``/``discover`` left: exit code, stdout, stderr."""
    code: Optional[int]
    stdout: bytes
    stderr: str


Runner = Callable[[str, bytes], RemoteResult]  # (remote command, its stdin) -> its result


class ProbeFailed(Exception):
    """A check failed; ``str(error)`` is one sentence with the cause and the fix."""


def ssh_runner(ssh: SSHOptions, timeout: float) -> Runner:
    """Run remote commands with the user's ``ssh`` (the command line's runner)."""
    def run(command: str, stdin: bytes) -> RemoteResult:
        try:
            done = subprocess.run(ssh_argv(ssh, command), input=stdin, capture_output=True,
                                  timeout=timeout)
        except subprocess.TimeoutExpired:  # run() has killed ssh by then
            raise ProbeFailed("no answer from %r within %g s: check that 'ssh %s true' works "
                              "quickly, or raise --timeout" % (ssh.host, timeout, ssh.host)) from None
        except OSError as error:
            raise ProbeFailed("cannot run %r: %s" % (ssh.ssh, error)) from None
        return RemoteResult(done.returncode, done.stdout, done.stderr.decode("utf-8", "replace"))
    return run


def probe_command(target: Target, bundle: AgentBundle) -> str:
    """The command that runs the probe (remote_probe.py) for ``check`` and ``deploy``."""
    return target.command(remote_program(remote_probe), [bundle.sha256])


def _failure(target: Target, reply: Optional[BootReply], code: Optional[int], stderr: str) -> ProbeFailed:
    """The proxy's own sentence for what went wrong before a script could answer."""
    if reply is None:  # ssh, or sudo, ended before any script spoke
        return ProbeFailed(explain_ssh_failure(target.host, stderr.splitlines(), code))
    return ProbeFailed(boot_error(reply, target.host, target.python))


def read_probe(target: Target, reply: Optional[BootReply], code: Optional[int], stderr: str) -> Any:
    """The decoded ``INFO`` payload of a script's answer, or ProbeFailed."""
    if reply is not None and reply.status == "INFO" and reply.words:
        return json.loads(base64.b64decode(reply.words[0]))
    raise _failure(target, reply, code, stderr)


def _reply(stdout: bytes) -> Optional[BootReply]:
    result = BootReader().feed(stdout)
    return result[0] if result else None


def inspect(run: Runner, target: Target, bundle: AgentBundle) -> Dict[str, Any]:
    """The remote Python's version, ipykernel's, and whether the agent is cached."""
    result = run(probe_command(target, bundle), b"")
    info: Dict[str, Any] = read_probe(target, _reply(result.stdout), result.code, result.stderr)
    return info


def deploy(run: Runner, target: Target, bundle: Optional[AgentBundle] = None) -> Dict[str, Any]:
    """Check the remote Python, then put the agent in the remote cache if it is not there.

    Returns the probe's report plus ``installed`` (True if the agent was sent now). Called by
    ``proxykernel deploy`` and fabfile.py's ``deploy-agent``.
    """
    bundle = bundle or agent_bundle()
    info = inspect(run, target, bundle)
    info["installed"] = False
    if not info["cached"]:
        # The bootstrap with CACHE_ONLY reads and verifies the zip, stores it, says GOT and exits.
        command = remote_command(target.python, bundle, target.sudo, [CACHE_ONLY],
                                 target.pre_command, target.workdir)
        result = run(command, bundle.framed())
        reply = _reply(result.stdout)
        if reply is None or reply.status not in ("GOT", "HAVE"):
            raise _failure(target, reply, result.code, result.stderr)
        if result.code != 0:
            raise ProbeFailed("the agent could not be stored in the cache on %s (exit code %s): %s"
                              % (target.host, result.code, result.stderr.strip() or "no message"))
        info["installed"] = reply.status == "GOT"
        info["cached"] = True
    return info


def deploy_report(info: Dict[str, Any]) -> str:
    """What ``deploy`` found and did, in two lines for the user."""
    return "Python %s with ipykernel %s at %s on %s\nagent %s: %s" % (
        info["python"], info["ipykernel"], info["executable"], info["hostname"],
        "installed in" if info["installed"] else "already in", info["cache"])


def discover(run: Runner, target: Target, candidates: Sequence[str] = ()) -> List[Dict[str, Any]]:
    """The remote's Python environments (conda, kernelspecs, PATH, ``candidates``), each with its
    version and ipykernel's (None when missing). The script runs on ``target.python``."""
    result = run(target.command(remote_program(remote_discover), list(candidates)), b"")
    found: List[Dict[str, Any]] = read_probe(target, _reply(result.stdout), result.code, result.stderr)
    return found


@dataclass(frozen=True)
class Step:
    """One line of ``proxykernel check``'s report."""
    name: str
    detail: str
    seconds: Optional[float] = None
    ok: bool = True  # False: worth knowing, not a failure


class _ProbeSession:
    """The probe over one ``ssh``, kept open to time round trips; killed by PID after ``timeout``."""

    def __init__(self, argv: List[str], host: str, timeout: float) -> None:
        self.host, self.timeout, self.timed_out = host, timeout, False
        self.errors: IO[bytes] = tempfile.TemporaryFile()
        self.process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=self.errors)
        self.watchdog = threading.Timer(timeout, self._expire)
        self.watchdog.start()

    def _expire(self) -> None:
        self.timed_out = True
        self.process.kill()

    def _check_time(self) -> None:
        if self.timed_out:
            raise ProbeFailed("no answer from %r within %g s: check that 'ssh %s true' works quickly, "
                              "or raise --timeout" % (self.host, self.timeout, self.host))

    def reply(self) -> Optional[BootReply]:
        assert self.process.stdout is not None
        reader = BootReader()
        for line in iter(self.process.stdout.readline, b""):
            result = reader.feed(line)
            if result is not None:
                return result[0]
        self._check_time()
        return None

    def ping(self) -> float:
        assert self.process.stdin is not None and self.process.stdout is not None
        sent = time.monotonic()
        self.process.stdin.write(b"ping\n")
        self.process.stdin.flush()
        if self.process.stdout.readline() != b"ping\n":
            self._check_time()
            raise ProbeFailed("the connection to %r broke while timing round trips" % self.host)
        return time.monotonic() - sent

    def stderr(self) -> str:
        self.process.wait()
        self.errors.seek(0)
        return self.errors.read().decode("utf-8", "replace")

    def close(self) -> None:
        self.watchdog.cancel()
        if self.process.stdin is not None:
            self.process.stdin.close()  # EOF ends the probe's echo loop, so ssh exits
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()
        self.errors.close()


def check(ssh: SSHOptions, target: Target, timeout: float, pings: int = 5) -> Iterator[Step]:
    """``proxykernel check``: each step as it completes; ProbeFailed (cause and fix) ends it."""
    started = time.monotonic()
    result = ssh_runner(ssh, timeout)("true", b"")
    if result.code != 0:
        raise ProbeFailed(explain_ssh_failure(target.host, result.stderr.splitlines(), result.code))
    yield Step("ssh", "logged in to %s" % target.host, time.monotonic() - started)
    bundle = agent_bundle()
    started = time.monotonic()
    session = _ProbeSession(ssh_argv(ssh, probe_command(target, bundle)), target.host, timeout)
    try:
        reply = session.reply()
        if reply is None or reply.status != "INFO":
            raise _failure(target, reply, session.process.wait(), session.stderr())
        info = read_probe(target, reply, None, "")
        yield Step("python", "Python %s at %s on %s%s" % (
            info["python"], info["executable"], info["hostname"],
            " (as root, through sudo)" if target.sudo and info["euid"] == 0 else ""),
            time.monotonic() - started)
        yield Step("ipykernel", "ipykernel %s" % info["ipykernel"])
        if info["cached"]:
            yield Step("agent", "agent %s is in the remote cache %s" % (bundle.sha256[:12], info["cache"]))
        else:
            yield Step("agent", "agent %s is not cached there: the first start sends it (%d kB), or run "
                       "'proxykernel deploy %s'" % (bundle.sha256[:12], len(bundle.data) // 1024,
                                                     target.host), ok=False)
        times = [session.ping() for _ in range(pings)]
        yield Step("round trip", "%.1f ms (median of %d)" % (statistics.median(times) * 1000, pings))
    finally:
        session.close()
