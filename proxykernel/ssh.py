"""The ssh command line, and what ssh's failures mean: stdlib only, cheap to import.

``cli.main`` builds and starts the first ssh with this before importing asyncio, zmq and tornado, so
the ssh handshake overlaps those imports. ``transport.SSHTransport`` then adopts the running ssh.
"""
from __future__ import annotations

import re
import shlex
import subprocess
from dataclasses import dataclass, field, replace
from typing import List, Optional, Sequence

__all__ = ["SSHOptions", "config_args", "ssh_argv", "spawn_ssh", "explain_ssh_failure", "needs_login",
           "login_sentence", "START_AGAIN"]


@dataclass(frozen=True)
class SSHOptions:
    """How to reach a host with ssh: the alias, an ssh config file, extra ``-o`` options, the ssh program."""
    host: str
    config_file: Optional[str] = None
    options: Sequence[str] = field(default_factory=tuple)  # each "Name=value", as ssh -o takes it
    connect_timeout: Optional[float] = None
    ssh: str = "ssh"


def config_args(opts: SSHOptions) -> List[str]:
    """The arguments that choose what ssh reads for the host: ``-F`` and each ``-o``."""
    argv = ["-F", opts.config_file] if opts.config_file else []
    for option in opts.options:
        argv += ["-o", option]
    return argv


def ssh_argv(opts: SSHOptions, remote_command: str) -> List[str]:
    """The ssh command line. Nothing secret goes here: it is visible in ``ps`` on this host."""
    argv = [opts.ssh, "-T"] + config_args(opts)  # -T, no tty: a tty would mangle the binary stream
    if opts.connect_timeout:
        argv += ["-o", "ConnectTimeout=%d" % max(1, round(opts.connect_timeout))]
    # Never a prompt (password, one-time code, host key), which nobody would see: the user logs in
    # once with 'proxykernel login', and this ssh goes through that connection.
    argv += ["-o", "BatchMode=yes"]
    # "--" ends ssh's options, so a host value can never be read as one.
    return argv + ["--", opts.host, remote_command]


# ssh's own words, in the order we test them, and the sentence a user can act on.
_SSH_FAILURES = [
    (r"Could not resolve hostname|Name or service not known|nodename nor servname",
     "ssh cannot resolve the host {host!r}: check the name, or add a 'Host {host}' entry with a "
     "HostName to your ssh config"),
    (r"Host key verification failed|REMOTE HOST IDENTIFICATION HAS CHANGED",
     "ssh refused {host!r} because its host key is unknown or changed: connect once with "
     "'ssh {host}' in a terminal to check and accept the key"),
    (r"Permission denied|Too many authentication failures",
     "ssh authentication to {host!r} was refused: check that 'ssh {host} true' works in a terminal "
     "without a password prompt (load your key into ssh-agent, or set IdentityFile in your ssh config)"),
    (r"Connection refused",
     "ssh could not connect to {host!r}: the connection was refused (is sshd running, and is the "
     "Port in your ssh config right?)"),
    (r"timed out|No route to host|Network is unreachable",
     "ssh could not reach {host!r}: the network connection timed out or has no route"),
    (r"a password is required|a terminal is required",
     "sudo on {host!r} asks for a password: allow the command with NOPASSWD in sudoers, or drop --sudo"),
]


# What ssh says when the server wants more than a key (BatchMode does not try these methods):
# "Permission denied (publickey,password)." or, after a key was accepted, "(keyboard-interactive)."
_INTERACTIVE = re.compile(r"Permission denied \(([^)]*\b(?:password|keyboard-interactive)\b[^)]*)\)")
START_AGAIN = ", then start the kernel again"


def needs_login(stderr_lines: Sequence[str]) -> bool:
    """Did ssh (in BatchMode) fail because the host asks for a password or a one-time code?"""
    return any(_INTERACTIVE.search(line) for line in stderr_lines)


def login_sentence(opts: SSHOptions, then: str = START_AGAIN) -> str:
    """What to do when ``needs_login``: the ``proxykernel login`` command for the same ssh settings
    (they name the shared connection), and ``then`` what happens next."""
    command = shlex.join(["proxykernel", "login"] + config_args(opts) + [opts.host])
    return "%s asks for a password or one-time code: run '%s' in a terminal%s" % (opts.host, command, then)


def explain_ssh_failure(host: str, stderr_lines: Sequence[str], returncode: Optional[int],
                        opts: Optional[SSHOptions] = None) -> str:
    """One sentence for an ssh that ended before the agent spoke (``opts``: how it was run)."""
    if needs_login(stderr_lines):
        return login_sentence(replace(opts, host=host) if opts else SSHOptions(host=host))
    text = "\n".join(stderr_lines)
    for pattern, sentence in _SSH_FAILURES:
        if re.search(pattern, text, re.IGNORECASE):
            return sentence.format(host=host)
    last = stderr_lines[-1].strip() if stderr_lines else "no message"
    return "ssh to %r ended with exit code %s before the kernel started (%s)" % (host, returncode, last)


def spawn_ssh(argv: List[str]) -> "subprocess.Popen[bytes]":
    """Start ssh now, with pipes; ``SSHTransport.start`` adopts it into the event loop later.

    Its own session: Jupyter signals our whole process group on interrupt, and a SIGINT must
    become an interrupt frame, not kill the connection.
    """
    return subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
