"""The ``proxykernel`` console command: add, list, remove, check, discover, deploy, login, logout, ps,
stop, demo.

A friendlier face on proxykernel/manage.py (kernelspecs), proxykernel/probe.py (looking at a
remote host) and proxykernel/demo.py. Bad input or a failed step ends with one sentence on stderr
and a non-zero exit, never a traceback.
"""
from __future__ import annotations

import argparse
import itertools
import json
import shlex
import sys
import time
from typing import Callable, Dict, Iterator, List, Optional, Sequence

from proxykernel import login, ps
from proxykernel.batch_check import batch_check
from proxykernel.cli import check_batch_options, join_dash_values
from proxykernel.probe import ProbeFailed, Step, Target, check, deploy, deploy_report, discover, ssh_runner
from proxykernel.ssh import SSHOptions

__all__ = ["main", "build_parser"]

PROG = "proxykernel"


class CommandError(Exception):
    """Ends the command; ``str(error)`` is the sentence the user sees."""


def _remote_options(parser: argparse.ArgumentParser, python_required: bool = True) -> None:
    """How to reach the remote and prepare its shell: the same flags a kernelspec stores."""
    parser.add_argument("host", metavar="HOST", help="ssh host or alias from your ssh config")
    if python_required:
        parser.add_argument("--python", "-p", required=True,
                            help="remote Python: an interpreter path, a name on PATH, or an environment prefix")
    parser.add_argument("--workdir", "-w", metavar="DIR", help="remote directory to start in")
    parser.add_argument("--pre-command", metavar="SHELL",
                        help="remote sh code run first, e.g. 'module load cuda; conda activate x'")
    parser.add_argument("-s", "--sudo", action="store_true", help="run the remote Python with sudo -n")
    parser.add_argument("--ssh-option", "-o", action="append", default=[], metavar="NAME=VALUE",
                        help="an option for ssh, as ssh -o takes it (repeatable)")
    parser.add_argument("--ssh-config", "-F", metavar="FILE",
                        help="an ssh config file to use instead of ~/.ssh/config")
    parser.add_argument("--timeout", "-t", type=float, default=30, metavar="S",
                        help="seconds to wait for the remote (default: 30)")


def _batch_options(parser: argparse.ArgumentParser) -> None:
    """A kernel in a Slurm job on a compute node, HOST being the login host (``add``, ``check``)."""
    parser.add_argument("--slurm", metavar="'SBATCH OPTIONS'",
                        help="run the kernel in a Slurm job with these sbatch options, e.g. "
                             "--slurm '--partition=gpu --time=04:00:00' ('' for none)")
    parser.add_argument("--queue-timeout", type=float, metavar="S",
                        help="cancel a job that has not started after this long (default: wait)")


def _kernels_options(parser: argparse.ArgumentParser) -> None:
    """``ps`` and ``stop``: the remote options of ``check``, any Python to run the listing, --json."""
    _remote_options(parser, python_required=False)
    parser.add_argument("--python", "-p", default="python3",
                        help="remote Python >= 3.8 that reads the list (default: python3)")
    parser.add_argument("--json", action="store_true", help="print JSON for scripts instead of a table")


def _kernelspec_options(parser: argparse.ArgumentParser) -> None:
    """Where a kernelspec goes and what else its kernels get."""
    parser.add_argument("--env", "-e", nargs="*", default=[], metavar="VAR=value",
                        help="environment variables for the remote kernel, e.g. --env 'A=1 B=2'")
    parser.add_argument("--log-level", choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                        help="what the proxy writes to the Jupyter server's log (default: INFO)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--user", action="store_true", help="install for this user (the default)")
    where.add_argument("--sys-prefix", action="store_true",
                       help="install into the prefix of the Python running proxykernel")
    where.add_argument("--prefix", metavar="PREFIX", help="install into PREFIX/share/jupyter/kernels")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Jupyter kernels on remote hosts over one SSH connection.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    add = commands.add_parser("add", help="add a kernelspec for a Python on a remote host",
                              description="Add a kernelspec that starts a kernel on HOST.")
    _remote_options(add)
    _batch_options(add)
    _kernelspec_options(add)
    add.add_argument("--display-name", "-d", help="the name Jupyter shows (default: 'SSH HOST')")
    add.add_argument("--name", help="the kernelspec's directory name (default: from the display name)")

    commands.add_parser("list", help="list the proxykernel kernelspecs",
                        description="List the installed kernelspecs that run proxykernel.")

    remove = commands.add_parser("remove", help="remove proxykernel kernelspecs",
                                 description="Remove proxykernel kernelspecs by name.")
    remove.add_argument("names", nargs="+", metavar="NAME", help="a name that 'proxykernel list' shows")

    check_ = commands.add_parser("check", help="check that HOST can run a kernel, step by step",
                                 description="Connect to HOST and report each step with its time: "
                                             "the login, ssh, the remote Python, ipykernel, the agent "
                                             "cache, the round-trip time; with --slurm, the scheduler "
                                             "on the login host HOST and the sbatch options.")
    _remote_options(check_)
    _batch_options(check_)

    find = commands.add_parser("discover", help="find Pythons with ipykernel on HOST, add kernelspecs",
                               description="List the Python environments on HOST (conda environments, "
                                           "remote kernelspecs, PATH, --python candidates) and add "
                                           "kernelspecs for the ones picked.")
    _remote_options(find, python_required=False)
    _kernelspec_options(find)
    find.add_argument("--python", "-p", action="append", default=[], metavar="PYTHON",
                      help="a candidate to look at too (repeatable); the first runs the search "
                           "(default: python3)")
    pick = find.add_mutually_exclusive_group()
    pick.add_argument("--all", action="store_true", help="add a kernelspec for every one with ipykernel")
    pick.add_argument("--pick", metavar="N,N", help="add kernelspecs for these numbers of the list")

    deploy_ = commands.add_parser("deploy", help="install or update the agent on HOST",
                                  description="Check the remote Python and ipykernel, and put the "
                                              "agent in the remote cache, so kernels start without "
                                              "sending it.")
    _remote_options(deploy_)

    _login_parsers(commands)
    ps_ = commands.add_parser("ps", help="list the kernels the agent holds on HOST",
                              description="List this user's kernels held by the agent on HOST: id, "
                                          "session, kernel pid, start, attached or detached, memory, "
                                          "how long a detached one lingers, Python; on a login host, "
                                          "also the kernels in its Slurm jobs (job id, state, node; "
                                          "--pre-command as the kernelspec's, e.g. 'module load slurm').")
    _kernels_options(ps_)
    stop = commands.add_parser("stop", help="stop a kernel the agent holds on HOST",
                               description="Stop a kernel held by the agent on HOST (as 'proxykernel "
                                           "ps' lists it) by its id, a unique start of its id, or its "
                                           "session name (a kernel in a Slurm job: its job is "
                                           "cancelled); or every detached one with --all.")
    _kernels_options(stop)
    stop.add_argument("kernel", nargs="?", metavar="ID|NAME", help="an id, its start, or a session name")
    stop.add_argument("--all", action="store_true", help="stop every kernel no proxy is attached to")

    commands.add_parser("demo", help="run a notebook through a proxied kernel on a private sshd",
                        description="Start a private sshd on 127.0.0.1 with throwaway keys, run a "
                                    "notebook through a proxied kernel, print where it ran, and "
                                    "remove everything.")
    return parser


def _login_parsers(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """``login`` and ``logout`` take the ssh settings a kernelspec has: they name the shared connection."""
    opened = commands.add_parser("login", help="log in to HOST in this terminal, for its kernels (password, OTP)",
                                 description="Open the shared ssh connection to HOST in this terminal, "
                                             "where ssh asks for a password or one-time code; kernels with "
                                             "the same ssh settings use it, for --persist.")
    opened.add_argument("--persist", default=login.DEFAULT_PERSIST, metavar="TIME",
                        help="how long the connection stays after its last session, e.g. 12h, 90m "
                             "(default: 12h)")
    closed = commands.add_parser("logout", help="close the shared ssh connection to HOST",
                                 description="Close the shared ssh connection to HOST that 'login' opened.")
    for sub in (opened, closed):
        sub.add_argument("host", metavar="HOST", help="ssh host or alias from your ssh config")
        sub.add_argument("--ssh-option", "-o", action="append", default=[], metavar="NAME=VALUE",
                         help="an option for ssh, as ssh -o takes it (repeatable; the kernelspec's)")
        sub.add_argument("--ssh-config", "-F", metavar="FILE",
                         help="an ssh config file to use instead of ~/.ssh/config (the kernelspec's)")


def _ssh(args: argparse.Namespace) -> SSHOptions:
    return SSHOptions(host=args.host, config_file=args.ssh_config, options=tuple(args.ssh_option),
                      connect_timeout=getattr(args, "timeout", None))


def _target(args: argparse.Namespace, python: str) -> Target:
    return Target(args.host, python, args.sudo, args.workdir, args.pre_command)


def _install(args: argparse.Namespace, python: str, display_name: str, name: Optional[str]) -> str:
    """add_kernel with the stored options of ``add``/``discover``; returns the kernelspec's name."""
    extra = ["--log-level", args.log_level] if args.log_level else []
    from proxykernel import manage  # here: it imports jupyter_client (zmq, asyncio), which check needs not
    return manage.add_kernel(
        host=args.host, display_name=display_name, local_python_path=sys.executable,
        remote_python_path=python, env=" ".join(args.env) or None, sudo=args.sudo,
        timeout=args.timeout, name=name, prefix=sys.prefix if args.sys_prefix else args.prefix,
        workdir=args.workdir, pre_command=args.pre_command, ssh_options=args.ssh_option,
        ssh_config=args.ssh_config, extra=extra, slurm=getattr(args, "slurm", None),
        queue_timeout=getattr(args, "queue_timeout", None))


def cmd_add(args: argparse.Namespace) -> None:
    name = _install(args, args.python, args.display_name or "SSH %s" % args.host, args.name)
    print("added kernelspec %s" % name)


def cmd_list(args: argparse.Namespace) -> None:
    from proxykernel import manage
    specs = manage.proxied_kernelspecs()
    if not specs:
        print("no proxykernel kernelspecs (add one with 'proxykernel add HOST --python PYTHON')")
        return
    _print_table([("NAME", "HOST", "PYTHON", "OPTIONS")] + [
        (spec.name, spec.host, spec.python, shlex.join(spec.options)) for spec in specs])


def _print_table(rows: Sequence[Sequence[str]]) -> None:
    """Columns padded to their widest cell; the last one is left as it is."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)] if rows else []
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1])


def cmd_remove(args: argparse.Namespace) -> None:
    from jupyter_client.kernelspec import KernelSpecManager

    from proxykernel import manage
    known = {spec.name for spec in manage.proxied_kernelspecs()}
    for name in args.names:
        if name not in known:
            raise CommandError("there is no proxykernel kernelspec named %r (see 'proxykernel list')" % name)
    for name in args.names:
        print("removed %s (%s)" % (name, KernelSpecManager().remove_kernel_spec(name)))


def cmd_check(args: argparse.Namespace) -> None:
    print("checking %s with Python %s" % (args.host, args.python))
    ssh, target = login.through_login(_ssh(args)), _target(args, args.python)
    steps: Iterator[Step] = itertools.chain(login.login_steps(_ssh(args), args.timeout),
                                            check(ssh, target, args.timeout))
    if args.slurm is not None:
        steps = itertools.chain(steps, batch_check(ssh_runner(ssh, args.timeout), target, args.slurm))
    for step in steps:
        took = "%6.2f s" % step.seconds if step.seconds is not None else " " * 8
        print("  %-4s %-10s %s  %s" % ("ok" if step.ok else "note", step.name, took, step.detail),
              flush=True)
    print("%s is ready for proxykernel%s" % (args.host, " in Slurm jobs" if args.slurm is not None else ""))


def cmd_deploy(args: argparse.Namespace) -> None:
    info = deploy(ssh_runner(login.through_login(_ssh(args)), args.timeout), _target(args, args.python))
    print(deploy_report(info))


def _numbers(text: str) -> List[int]:
    try:
        return [int(part) for part in text.replace(",", " ").split()]
    except ValueError:
        raise CommandError("--pick expects numbers from the list, such as 1,3, not %r" % text) from None


def _picked(args: argparse.Namespace, usable: List[int]) -> List[int]:
    """The list numbers to add: --all, --pick, or asked for on a terminal."""
    if args.all:
        return usable
    if args.pick is not None:
        numbers = _numbers(args.pick)
    elif sys.stdin.isatty():
        numbers = _numbers(input("add kernelspecs for which numbers (e.g. 1,3; empty for none)? "))
    else:
        return []
    wrong = [n for n in numbers if n not in usable]
    if wrong:
        raise CommandError("number %d is not a Python with ipykernel in the list" % wrong[0])
    return numbers


def cmd_discover(args: argparse.Namespace) -> None:
    if args.pick is not None:
        _numbers(args.pick)  # a typo fails before the remote is asked
    runner = ssh_runner(login.through_login(_ssh(args)), args.timeout)
    found = discover(runner, _target(args, args.python[0] if args.python else "python3"), args.python)
    usable = [number for number, env in enumerate(found, 1) if env["ipykernel"]]
    rows = [("%d" % number, env["source"], env["label"], "Python " + env["version"],
             "ipykernel " + env["ipykernel"] if env["ipykernel"] else "no ipykernel", env["python"])
            for number, env in enumerate(found, 1)]
    _print_table(rows)
    if not found:
        print("no Python found on %s: pass --python with an interpreter's path" % args.host)
    chosen = _picked(args, usable)
    if not chosen and usable and args.pick is None and not args.all:
        print("pass --all, or --pick with numbers, to add kernelspecs")
    for number in chosen:
        env = found[number - 1]
        name = _install(args, env["python"], "SSH %s (%s)" % (args.host, env["label"]), None)
        print("added kernelspec %s for %s" % (name, env["python"]))


def cmd_login(args: argparse.Namespace) -> None:
    state = login.login(_ssh(args), login.parse_duration(args.persist))
    print("%s: %s. Kernels there start, restart and reconnect without a prompt until then, or until "
          "the connection drops; 'proxykernel logout %s' ends it" % (args.host, state.describe(), args.host))


def cmd_logout(args: argparse.Namespace) -> None:
    closed = login.logout(_ssh(args))
    print("%s: %s" % (args.host, "logged out" if closed else "no shared connection was open"))


def cmd_ps(args: argparse.Namespace) -> None:
    reply = ps.ask(ssh_runner(_ssh(args), args.timeout), _target(args, args.python), ps.request("ps"))
    if args.json:
        print(json.dumps(dict(reply, host=args.host), indent=1))
        return
    if not reply["kernels"]:
        print("no kernels held on %s" % args.host)
    else:
        _print_table(ps.kernel_rows(reply, time.time()))
    for line in ps.notes(reply, args.host):
        print(line)


def cmd_stop(args: argparse.Namespace) -> None:
    if args.all and args.kernel is not None:
        raise CommandError("give a kernel or --all, not both")
    if not args.all and not args.kernel:
        raise CommandError("give the kernel's id, the start of it, or its session name (see 'proxykernel ps "
                           "%s'), or --all for every detached one" % args.host)
    wait = min(ps.STOP_WAIT, args.timeout / 2)  # the daemons' time to stop, within ssh's --timeout
    reply = ps.ask(ssh_runner(_ssh(args), args.timeout), _target(args, args.python),
                   ps.request("stop", args.kernel, args.all, wait))
    lines, error = ps.stop_lines(reply, args.host, args.kernel)
    print(json.dumps(dict(reply, host=args.host), indent=1) if args.json else "\n".join(lines))
    if error is not None:
        raise CommandError(error)


def cmd_demo(args: argparse.Namespace) -> None:
    from proxykernel import demo
    code = demo.main()
    if code:
        sys.exit(code)


COMMANDS: Dict[str, Callable[[argparse.Namespace], None]] = {
    "add": cmd_add, "list": cmd_list, "remove": cmd_remove, "check": cmd_check,
    "discover": cmd_discover, "deploy": cmd_deploy, "login": cmd_login, "logout": cmd_logout, "ps": cmd_ps,
    "stop": cmd_stop, "demo": cmd_demo}


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``proxykernel`` console script (setup.cfg)."""
    parser = build_parser()
    argv = join_dash_values(sys.argv[1:] if argv is None else argv)
    args, rest = parser.parse_known_args(argv)
    if getattr(args, "kernel", "") is None and len(rest) == 1 and not rest[0].startswith("-"):
        args.kernel = rest[0]  # ``stop HOST -F FILE ID``: argparse took HOST alone for both positionals
    elif rest:
        parser.parse_args(argv)  # argparse's own error for what is left
    try:
        check_batch_options(getattr(args, "slurm", None), getattr(args, "sudo", False))
        COMMANDS[args.command](args)
    except (CommandError, ProbeFailed, ValueError, OSError) as error:
        sys.stdout.flush()
        sys.stderr.write("%s %s: error: %s\n" % (PROG, args.command, error))
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
