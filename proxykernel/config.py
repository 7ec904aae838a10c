"""What a proxied kernel is asked to be, and the ssh command that starts it.

Light on purpose (stdlib only): ``cli.main`` builds the ssh command from this and starts ssh before
importing zmq, tornado and jupyter_client, so the ssh handshake overlaps those imports.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Dict, List, Optional

from proxykernel.batch import batch_command, job_name
from proxykernel.bootstrap import agent_bundle, remote_command
from proxykernel.ssh import SSHOptions, config_args, ssh_argv
from remote_agent.paths import runtime_dir  # the same 0700 per-user directory, on this side

__all__ = ["ProxyConfig", "ConnectionFileError", "load_connection_file", "kernel_id", "agent_id", "ssh_command",
           "control_path", "agent_memo_path", "stop_master_command"]

# OpenSSH's own default cipher order (6.9 to 9.x): ssh -G shows it when the user set no Ciphers.
OPENSSH_DEFAULT_CIPHERS = ("chacha20-poly1305@openssh.com,aes128-ctr,aes192-ctr,aes256-ctr,"
                           "aes128-gcm@openssh.com,aes256-gcm@openssh.com")
# The same ciphers, AES-GCM first. Spelled out, not "^aes128-gcm...": ssh before 8.2 has no "^".
FAST_CIPHERS = ("aes128-gcm@openssh.com,aes256-gcm@openssh.com,chacha20-poly1305@openssh.com,"
                "aes128-ctr,aes192-ctr,aes256-ctr")

_REQUIRED = ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port", "ip", "key",
             "transport")


class ConnectionFileError(Exception):
    """The connection file Jupyter gave us cannot be used; the message says why."""


def load_connection_file(path: str) -> Dict[str, object]:
    """Read and check Jupyter's connection file, with one clear sentence for each way it is bad."""
    try:
        with open(path, encoding="utf-8") as handle:
            info = json.load(handle)
    except FileNotFoundError:
        raise ConnectionFileError("the connection file %s does not exist" % path) from None
    except (OSError, ValueError) as error:
        raise ConnectionFileError("the connection file %s cannot be read as JSON: %s"
                                  % (path, error)) from None
    if not isinstance(info, dict):
        raise ConnectionFileError("the connection file %s does not hold a JSON object" % path)
    missing = [name for name in _REQUIRED if name not in info]
    if missing:
        raise ConnectionFileError("the connection file %s lacks %s" % (path, ", ".join(missing)))
    return info


@dataclass(frozen=True)
class ProxyConfig:
    """Everything one proxied kernel was started with; made by ``cli.main`` from the command line."""
    host: str
    python: str
    connection_file: str
    timeout: float = 30.0
    env: Dict[str, str] = field(default_factory=dict)
    sudo: bool = False
    ssh: SSHOptions = field(default_factory=lambda: SSHOptions(host=""))
    transport: str = "ipc"  # how the remote kernel's own sockets are bound: ipc, or tcp on 127.0.0.1
    agent_source: Optional[str] = None  # a remote_agent directory to ship instead of ours (tests)
    workdir: Optional[str] = None  # the remote directory the kernel starts in
    pre_command: Optional[str] = None  # remote shell code run before the agent (module load, ...)
    heartbeat_interval: float = 1.0  # seconds between pings on the stream
    heartbeat_timeout: float = 5.0  # a link silent this long is dead (so noticed within ~6 s)
    reconnect_timeout: float = 600.0  # give up reconnecting after this long
    linger: float = 3600.0  # the remote agent keeps a kernel this long with no proxy attached
    buffer_size: int = 256 * 1024 * 1024  # replay buffer cap, each side, in bytes
    share_connection: bool = True  # our own ControlMaster, unless the user's config has one
    connection_persist: float = 60.0  # seconds our master outlives its last session
    session: Optional[str] = None  # the notebook (JPY_SESSION_NAME) or --session: a start for it reattaches
    reattach: bool = True  # --no-reattach: every start gets a kernel of its own
    persistent: bool = False  # a frontend's shutdown detaches; the next start of the session reattaches
    persistent_linger: float = 86400.0  # how long a persistent kernel waits with no proxy attached
    slurm: Optional[str] = None  # sbatch options: the kernel runs in a Slurm job (proxykernel/batch.py)
    queue_timeout: Optional[float] = None  # cancel a job still waiting in the queue after this long

    @property
    def agent_linger(self) -> float:
        """How long the remote agent keeps the kernel with no proxy attached."""
        return self.persistent_linger if self.persists else self.linger

    @property
    def persists(self) -> bool:
        """Does a shutdown from the frontend detach? Only a kernel that a later start can find
        again (a session name, reattach on) is left running."""
        return self.persistent and self.reattaches

    @property
    def reattaches(self) -> bool:
        """Is this kernel named after its session, so that a later start for it reattaches?"""
        return self.reattach and bool(self.session)


def kernel_id(key: str, connection_file: str) -> str:
    """Names the remote agent of this kernel: stable across Jupyter's restarts (same file and
    key), different for every other kernel, and revealing nothing about the key."""
    digest = hashlib.sha256(b"proxykernel\0%s\0%s" % (key.encode(), os.path.abspath(connection_file).encode()))
    return digest.hexdigest()[:24]


def agent_id(config: ProxyConfig, key: str) -> str:
    """Names the remote agent ``ssh_command`` reaches: after the session (the notebook) and every
    setting that shapes its kernel, so that a start for the same notebook through the same
    kernelspec finds the kernel that lingers for it; else one agent per connection file."""
    if not config.reattaches:
        return kernel_id(key, config.connection_file)
    settings = _target_digest(config, config.python, config.sudo, config.workdir or "", config.pre_command or "",
                              sorted(config.env.items()), config.transport, config.slurm, config.session)
    return hashlib.sha256(b"proxykernel-session\0" + settings.encode()).hexdigest()[:24]


@lru_cache(maxsize=8)
def ssh_settings(opts: SSHOptions) -> Optional[Dict[str, str]]:
    """What ssh will use for this host after reading the user's config (``ssh -G``); None if unknown."""
    try:
        out = subprocess.run([opts.ssh, "-G"] + config_args(opts) + ["--", opts.host], capture_output=True,
                             text=True, timeout=5, stdin=subprocess.DEVNULL).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return dict(line.split(" ", 1) for line in out.splitlines() if " " in line)


def _users_own_sharing(opts: SSHOptions) -> bool:
    """Does the user's ssh config already share connections to this host (ControlPath set)?"""
    settings = ssh_settings(opts)
    return settings is None or settings.get("controlpath", "none") != "none"  # unknown: hands off


@lru_cache(maxsize=None)
def _cpu_has_aes(platform: str = sys.platform) -> bool:
    """Does this machine's CPU (where ssh does its ciphers) have AES instructions? Linux says so in
    /proc/cpuinfo; macOS, which has no /proc, through sysctl. Unknown: False (ssh's own order)."""
    if platform == "darwin":
        return _aes_in_sysctl(_sysctl("hw.optional.arm64", "machdep.cpu.features"))
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return any(line.startswith(("flags", "Features")) and " aes" in line for line in cpuinfo)
    except OSError:
        return False


def _sysctl(*names: str) -> str:
    """``sysctl -n NAME...``: each known name's value on a line (unknown ones are left out)."""
    try:
        return subprocess.run(["sysctl", "-n", *names], capture_output=True, text=True, timeout=5,
                              stdin=subprocess.DEVNULL).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def _aes_in_sysctl(output: str) -> bool:
    """Apple silicon (``hw.optional.arm64`` is 1, under Rosetta too) always has the AES instructions;
    an Intel Mac lists AES among ``machdep.cpu.features``."""
    lines = output.splitlines()
    return lines[:1] == ["1"] or "AES" in output.split()


def _prefer_aes_gcm(opts: SSHOptions) -> bool:
    """Put AES-GCM before ChaCha20 when the user left ssh's ciphers alone and the CPU has AES
    instructions: as strong, and about 1.5x the throughput for large outputs (measured here)."""
    settings = ssh_settings(opts)
    return settings is not None and settings.get("ciphers") == OPENSSH_DEFAULT_CIPHERS and _cpu_has_aes()


def _target_digest(config: ProxyConfig, *extra: object) -> str:
    """Names what makes a remote target: the same ssh settings reach the same account."""
    opts = config.ssh
    parts = [opts.ssh, opts.host, opts.config_file or "", list(opts.options), *extra]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


def control_path(config: ProxyConfig) -> Optional[str]:
    """Our ControlMaster socket for this host, or None when not ours to make.

    One master per host and ssh settings, shared by all kernels there: a second kernel, a restart
    or a reconnect opens a session on it, with no new login (and no second 2FA prompt). It
    outlives its last session by ``connection_persist`` seconds, then exits by itself.
    """
    if not config.share_connection or _users_own_sharing(config.ssh):
        return None
    return os.path.join(runtime_dir(), _control_name(config))


def _control_name(config: ProxyConfig) -> str:
    """Short, so the socket's path fits on macOS too (``remote_agent.paths.SOCKET_NAME_ROOM``)."""
    return "cm-" + _target_digest(config)


def agent_memo_path(config: ProxyConfig) -> str:
    """A marker that this agent version was found in the remote cache of this target (same ssh
    settings, Python, sudo and pre-command, which may move the cache): while it exists, starts
    skip sending the agent along."""
    digest = _target_digest(config, config.python, config.sudo, config.pre_command or "",
                            agent_bundle(config.agent_source).sha256)
    return os.path.join(runtime_dir(), "agent-" + digest)


def ssh_command(config: ProxyConfig, key: str, control: Optional[str] = None,
                job: Optional[str] = None) -> List[str]:
    """The ssh argv that boots (or re-attaches to) this kernel's remote agent; with ``--slurm``,
    through the kernel's batch job (``job``: the one a reconnect must find, not replace)."""
    kernel = agent_id(config, key)
    agent_args = ["--id", kernel,
                  "--linger", "%g" % config.agent_linger, "--buffer", str(config.buffer_size),
                  "--ping", "%g" % config.heartbeat_interval, "--dead", "%g" % config.heartbeat_timeout]
    if config.slurm is not None:
        command = batch_command(config.python, agent_bundle(config.agent_source), agent_args, kernel,
                                options=config.slurm, name=job_name(config.connection_file),
                                queue_timeout=config.queue_timeout, pre_command=config.pre_command,
                                workdir=config.workdir, job=job)
    else:
        command = remote_command(config.python, agent_bundle(config.agent_source), config.sudo, agent_args,
                                 pre_command=config.pre_command, workdir=config.workdir)
    ours: List[str] = []  # after the user's own -o options, which win (ssh takes the first value)
    if control:
        ours += ["ControlMaster=auto", "ControlPath=" + control,
                 "ControlPersist=%d" % max(1, round(config.connection_persist))]
    if _prefer_aes_gcm(config.ssh):
        ours.append("Ciphers=" + FAST_CIPHERS)
    return ssh_argv(replace(config.ssh, options=tuple(config.ssh.options) + tuple(ours)), command)


def stop_master_command(config: ProxyConfig, control: str) -> List[str]:
    """``ssh -O exit`` for our master, when a link through it is found dead: new sessions through a
    master whose connection is dead would hang, and its other sessions are as dead as ours."""
    return [config.ssh.ssh, "-o", "ControlPath=" + control, "-O", "exit", "--", config.host]
