"""Fabric tasks for proxykernel: ``fab deploy-agent --host btest --python /opt/conda/envs/x``.

``deploy-agent`` does what ``proxykernel deploy`` does (proxykernel/probe.py's ``deploy``), over
Fabric's connection instead of the ``ssh`` command: it checks the remote Python and ipykernel and
puts the agent in the remote cache, so later kernel starts do not send it. fab reads the ssh
config that its own ``-S/--ssh-config`` flag names, else ``~/.ssh/config``.

Host keys are checked as ``ssh`` checks them: Fabric on its own accepts any key (its client's
policy is AutoAdd), so we load the known-hosts files the ssh config names (``UserKnownHostsFile``,
``GlobalKnownHostsFile``) and follow its ``StrictHostKeyChecking``: an unknown key is refused by
default (``yes``, or ``ask``, since there is no one to ask); ``accept-new`` and ``no`` take it and
add it to the first ``UserKnownHostsFile``, as ssh does (hashed if ``HashKnownHosts yes``). A
changed key is refused under every setting: ssh with ``no`` would go on with password logins
turned off, a restriction paramiko cannot promise.
"""
from __future__ import annotations

import os
import socket
import sys
from typing import Mapping, Optional

import paramiko
from fabric import Connection, task
from invoke.context import Context
from invoke.exceptions import Exit

from proxykernel.probe import ProbeFailed, RemoteResult, Runner, Target, deploy, deploy_report

KNOWN_HOSTS = "~/.ssh/known_hosts ~/.ssh/known_hosts2"
GLOBAL_KNOWN_HOSTS = "/etc/ssh/ssh_known_hosts /etc/ssh/ssh_known_hosts2"


# StrictHostKeyChecking values under which ssh takes an unknown host key (and records it).
ACCEPTS_NEW = ("accept-new", "no", "off")


class _RecordNewKey(paramiko.MissingHostKeyPolicy):
    """Takes an unknown host key and appends it to ``path``, as ssh does under ``accept-new`` or
    ``no``; paramiko asks it only for a key it does not know (a changed one fails before)."""

    def __init__(self, path: Optional[str], hashed: bool) -> None:
        self.path = path
        self.hashed = hashed

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        client.get_host_keys().add(hostname, key.get_name(), key)
        if self.path is None:
            return
        entry = paramiko.HostKeys.hash_host(hostname) if self.hashed else hostname
        try:
            os.makedirs(os.path.dirname(self.path) or ".", mode=0o700, exist_ok=True)
            with open(self.path, "a", encoding="ascii") as known:
                known.write("%s %s %s\n" % (entry, key.get_name(), key.get_base64()))
        except OSError as error:  # ssh, too, warns and goes on
            sys.stderr.write("deploy-agent: warning: could not add the host key of %s to %s: %s\n"
                             % (hostname, self.path, error.strerror or error))


def _known_hosts_files(ssh_config: Mapping[str, str], key: str, default: str) -> list[str]:
    """The files of ``UserKnownHostsFile`` or ``GlobalKnownHostsFile``, in order; "none" is none."""
    return [os.path.expanduser(path) for path in str(ssh_config.get(key, default)).split()
            if path.lower() != "none"]


def _host_key_policy(ssh_config: Mapping[str, str]) -> paramiko.MissingHostKeyPolicy:
    """What to do with an unknown host key: what the config's ``StrictHostKeyChecking`` says."""
    strict = str(ssh_config.get("stricthostkeychecking", "ask")).lower()
    if strict not in ACCEPTS_NEW:
        return paramiko.RejectPolicy()
    files = _known_hosts_files(ssh_config, "userknownhostsfile", KNOWN_HOSTS)
    hashed = str(ssh_config.get("hashknownhosts", "no")).lower() == "yes"
    return _RecordNewKey(files[0] if files else None, hashed)


def _connect(c: Context, host: str) -> Connection:
    """A Fabric connection to ``host`` that checks its host key as the ssh config says."""
    conn = Connection(host, config=c.config)
    conn.client.set_missing_host_key_policy(_host_key_policy(conn.ssh_config))
    for key, default in (("userknownhostsfile", KNOWN_HOSTS), ("globalknownhostsfile", GLOBAL_KNOWN_HOSTS)):
        for path in _known_hosts_files(conn.ssh_config, key, default):
            if os.path.isfile(path):
                conn.client.load_system_host_keys(path)
    return conn


def _runner(conn: Connection, timeout: float) -> Runner:
    """Runs a remote command on one paramiko channel; bytes in and out as they are (Fabric's
    ``run`` decodes stdin as text, which would corrupt the agent's zip)."""
    def run(command: str, stdin: bytes) -> RemoteResult:
        conn.open()
        channel = conn.client.get_transport().open_session(timeout=timeout)
        try:
            channel.settimeout(timeout)
            channel.exec_command(command)
            try:
                channel.sendall(stdin)
            except OSError:  # the remote did not want it (agent already cached) and closed
                pass
            channel.shutdown_write()
            stdout = channel.makefile("rb").read()
            stderr = channel.makefile_stderr("rb").read()
            return RemoteResult(channel.recv_exit_status(), stdout, stderr.decode("utf-8", "replace"))
        finally:
            channel.close()
    return run


def _connection_failure(host: str, error: Exception) -> str:
    if isinstance(error, socket.gaierror):
        return "cannot resolve the host %r: check the name, or its HostName in your ssh config" % host
    if isinstance(error, paramiko.BadHostKeyException):
        return "the host key of %r has changed: check it, then update your known_hosts" % host
    if isinstance(error, paramiko.AuthenticationException):
        return ("authentication to %r was refused: check that 'ssh %s true' works without a prompt"
                % (host, host))
    if isinstance(error, paramiko.SSHException) and "known_hosts" in str(error):
        return ("the host key of %r is unknown: connect once with 'ssh %s' in a terminal to check "
                "and accept it" % (host, host))
    return "cannot connect to %r: %s" % (host, error)


@task(auto_shortflags=False, help={
    "host": "ssh host or alias from the ssh config",
    "python": "remote Python: an interpreter path, a name on PATH, or an environment prefix",
    "sudo": "run the remote Python with sudo -n",
    "workdir": "remote directory to start in",
    "pre-command": "remote sh code run first, e.g. 'module load python'",
    "timeout": "seconds to wait for the remote (default: 30)"})
def deploy_agent(c: Context, host: str, python: str = "python3", sudo: bool = False,
                 workdir: Optional[str] = None, pre_command: Optional[str] = None,
                 timeout: float = 30) -> None:
    """Check the remote Python and ipykernel, and put the proxykernel agent in the remote cache."""
    target = Target(host, python, sudo, workdir, pre_command)
    conn = _connect(c, host)
    try:
        info = deploy(_runner(conn, float(timeout)), target)
    except ProbeFailed as error:
        raise Exit("deploy-agent: error: %s" % error, code=1) from None
    except (OSError, paramiko.SSHException) as error:
        raise Exit("deploy-agent: error: %s" % _connection_failure(host, error), code=1) from None
    finally:
        conn.close()
    print(deploy_report(info))
