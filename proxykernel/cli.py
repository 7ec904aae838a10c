"""``python -m proxykernel``: the process Jupyter starts through kernel.json.

Same flags and meaning as the older ``ssh_ipykernel`` (``--host``, ``--python``, ``-f``, ``--timeout``,
``--env``, ``-s/--sudo``), plus the ssh pass-through options.
"""
from __future__ import annotations

import argparse
import os
import shlex
import socket
import sys
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence

from proxykernel.config import (ConnectionFileError, ProxyConfig, control_path, load_connection_file,
                                ssh_command)
from proxykernel.ssh import SSHOptions, spawn_ssh
from remote_agent.frames import CHANNELS  # stdlib only: cli stays light

if TYPE_CHECKING:
    import logging

__all__ = ["main", "parse_env", "build_parser", "join_dash_values", "check_batch_options"]

# Options whose value is itself command-line options (sbatch's), so it starts with a dash.
DASH_VALUED = ("--slurm",)


def join_dash_values(argv: Sequence[str], names: Sequence[str] = DASH_VALUED) -> List[str]:
    """``--slurm '--time=10 -p debug'`` as ``--slurm='--time=10 -p debug'``: argparse would take a
    separate value that starts with a dash for an option of its own. Called on every command line
    that has ``--slurm`` (here and in ``proxykernel add/check``) before parsing."""
    joined: List[str] = []
    at = 0
    while at < len(argv):
        if argv[at] in names and at + 1 < len(argv):
            joined.append("%s=%s" % (argv[at], argv[at + 1]))
            at += 2
        else:
            joined.append(argv[at])
            at += 1
    return joined


def check_batch_options(slurm: Optional[str], sudo: bool) -> None:
    """ValueError with the sentence if ``--slurm``'s value cannot be used (``main``, ``add``, ``check``)."""
    if slurm is None:
        return
    try:
        shlex.split(slurm)
    except ValueError as error:
        raise ValueError("--slurm expects sbatch options as a shell would split them: %s in %r"
                         % (error, slurm)) from None
    if sudo:
        raise ValueError("--sudo cannot be combined with --slurm: the job runs as you")


def parse_env(values: Sequence[str]) -> Dict[str, str]:
    """``["VAR1=demo VAR2=abc", "X=1"]`` -> a dict; each value may hold several shell-quoted pairs."""
    env: Dict[str, str] = {}
    for value in values:
        for pair in shlex.split(value):
            name, sep, setting = pair.partition("=")
            if not sep or not name.isidentifier():
                raise ValueError("--env expects VAR=value pairs, not %r" % pair)
            env[name] = setting
    return env


def hold_ports(info: Dict[str, object]) -> List[socket.socket]:
    """Bind the TCP ports Jupyter chose for this kernel at once, so that no other process (another
    kernel starting, an outgoing connection's local port) takes one during the proxy's imports; they
    are released just before the proxy binds them with ZMQ. Called by ``main``; a port that cannot be
    bound is left to the proxy, which reports it in one sentence."""
    if info.get("transport", "tcp") != "tcp":
        return []
    ip = str(info.get("ip", "127.0.0.1"))
    held = []
    for channel in CHANNELS:
        sock = socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as ZMQ binds it after us
            sock.bind((ip, int(str(info["%s_port" % channel]))))
        except (OSError, ValueError):
            sock.close()
            continue
        held.append(sock)
    return held


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m proxykernel",
        description="Run a Jupyter kernel on a remote host, over one SSH connection (no port forwarding).")
    parser.add_argument("--host", "-H", required=True, help="ssh host or alias from your ssh config")
    parser.add_argument("--python", "-p", required=True,
                        help="remote Python: an interpreter path, a name on PATH, or an environment prefix")
    parser.add_argument("-f", "--file", "--connection-file", dest="connection_file", required=True,
                        help="the kernel connection file Jupyter writes ({connection_file})")
    parser.add_argument("--timeout", "-t", type=float, default=30.0,
                        help="seconds to wait for the remote kernel to start (default: 30)")
    parser.add_argument("--env", "-e", nargs="*", default=[], metavar="VAR=value",
                        help="environment variables for the remote kernel, e.g. --env 'A=1 B=2'")
    parser.add_argument("-s", "--sudo", action="store_true", help="run the remote kernel with sudo -n")
    parser.add_argument("--workdir", "-w", metavar="DIR",
                        help="remote directory the kernel starts in (a leading ~/ is the remote home)")
    parser.add_argument("--pre-command", metavar="SHELL",
                        help="remote sh code run before the kernel, e.g. 'module load cuda; conda activate x'")
    parser.add_argument("--ssh-option", "-o", action="append", default=[], metavar="NAME=VALUE",
                        help="an option for ssh, as ssh -o takes it (repeatable)")
    parser.add_argument("--ssh-config", "-F", metavar="FILE", help="an ssh config file to use instead of ~/.ssh/config")
    parser.add_argument("--ssh-command", default="ssh", help=argparse.SUPPRESS)
    parser.add_argument("--transport", choices=("ipc", "tcp"), default="ipc",
                        help="how the remote kernel binds its sockets: ipc (unix sockets in a private "
                             "directory, default) or tcp on 127.0.0.1")
    survive = parser.add_argument_group("surviving network trouble")
    survive.add_argument("--heartbeat-interval", type=float, default=1.0, metavar="S",
                         help="seconds between pings on the ssh stream (default: 1)")
    survive.add_argument("--heartbeat-timeout", type=float, default=5.0, metavar="S",
                         help="a link silent this long is dead and is reconnected (default: 5)")
    survive.add_argument("--reconnect-timeout", type=float, default=600.0, metavar="S",
                         help="give up reconnecting after this long; the kernel is then reported dead "
                              "(default: 600)")
    survive.add_argument("--linger", type=float, default=3600.0, metavar="S",
                         help="the remote agent keeps the kernel this long with no proxy attached "
                              "(default: 3600)")
    survive.add_argument("--buffer-size", type=float, default=256.0, metavar="MB",
                         help="output kept for replay after an outage, per side; beyond it the oldest "
                              "output is dropped and the notebook is told (default: 256)")
    survive.add_argument("--connection-persist", type=float, default=60.0, metavar="S",
                         help="the ssh connection shared by this host's kernels stays open this long "
                              "after the last one ends, so the next start skips the login (default: 60)")
    survive.add_argument("--no-connection-sharing", action="store_true",
                         help="do not share one ssh ControlMaster per host among kernels, restarts and "
                              "reconnects (one is used by default unless your ssh config sets ControlPath)")
    outlive = parser.add_argument_group("outliving the frontend")
    outlive.add_argument("--session", metavar="NAME",
                         help="the session this kernel belongs to, for frontends that pass no "
                              "JPY_SESSION_NAME (nbclient, jupyter console): a start for a session whose "
                              "kernel still lingers on the remote reattaches to it")
    outlive.add_argument("--no-reattach", action="store_true",
                         help="always start a new kernel, even when the notebook's previous one lingers")
    outlive.add_argument("--persistent", action="store_true",
                         help="a shutdown from the frontend (closing the notebook, stopping Jupyter) "
                              "detaches and leaves the kernel running; the next start reattaches")
    outlive.add_argument("--persistent-linger", type=float, default=86400.0, metavar="S",
                         help="how long a persistent kernel waits with no frontend (default: a day)")
    batch = parser.add_argument_group("running the kernel in a Slurm job (HPC)")
    batch.add_argument("--slurm", metavar="'SBATCH OPTIONS'",
                       help="HOST is a login host: run the kernel in a batch job submitted there with "
                            "these sbatch options (e.g. --slurm '--partition=gpu --time=04:00:00'; '' for none)")
    batch.add_argument("--queue-timeout", type=float, metavar="S",
                       help="cancel the job if it has not started after this long (default: wait); "
                            "--timeout counts from when it runs")
    parser.add_argument("--log-level", default="INFO",
                        choices=("DEBUG", "INFO", "WARNING", "ERROR"), help="default: INFO")
    parser.add_argument("--agent-source", help=argparse.SUPPRESS)  # tests ship a modified agent
    return parser


def _logger(level: str) -> "logging.Logger":
    import logging  # here, not at the top: the first ssh starts before any import it need not wait for
    logging.basicConfig(level=level, stream=sys.stderr, format="[proxykernel %(levelname)s] %(message)s")
    return logging.getLogger("proxykernel")


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(join_dash_values(sys.argv[1:] if argv is None else argv))
    try:
        env = parse_env(args.env)
        check_batch_options(args.slurm, args.sudo)
    except ValueError as error:
        _logger(args.log_level).error("%s", error)
        return 2
    ssh = SSHOptions(host=args.host, config_file=args.ssh_config, options=tuple(args.ssh_option),
                     connect_timeout=args.timeout, ssh=args.ssh_command)
    config = ProxyConfig(host=args.host, python=args.python, connection_file=args.connection_file,
                         timeout=args.timeout, env=env, sudo=args.sudo, ssh=ssh,
                         transport=args.transport, agent_source=args.agent_source,
                         workdir=args.workdir, pre_command=args.pre_command,
                         heartbeat_interval=args.heartbeat_interval,
                         heartbeat_timeout=args.heartbeat_timeout,
                         reconnect_timeout=args.reconnect_timeout, linger=args.linger,
                         buffer_size=int(args.buffer_size * 1024 * 1024),
                         share_connection=not args.no_connection_sharing,
                         connection_persist=args.connection_persist,
                         session=args.session or os.environ.get("JPY_SESSION_NAME") or None,
                         reattach=not args.no_reattach, persistent=args.persistent,
                         persistent_linger=args.persistent_linger,
                         slurm=args.slurm, queue_timeout=args.queue_timeout)

    # ssh first: its handshake (~0.2 s) then overlaps the imports of asyncio, zmq and tornado.
    first_ssh, control, failure, held = None, None, None, []
    try:
        info = load_connection_file(config.connection_file)
        held = hold_ports(info)
        key = str(info["key"])
        control = control_path(config)
        first_ssh = spawn_ssh(ssh_command(config, key, control))
    except ConnectionFileError:
        pass  # the proxy reports it, in one sentence
    except OSError as error:
        failure = error
    log = _logger(args.log_level)
    if failure is not None:
        log.error("cannot run %r: %s", args.ssh_command, failure)
        return 1
    import asyncio
    from proxykernel.proxy import Proxy

    async def run() -> int:
        for sock in held:
            sock.close()  # the Proxy binds them now, with ZMQ
        return await Proxy(config, first_ssh, control).run()

    return asyncio.run(run())
