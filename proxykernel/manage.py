"""Kernelspecs for proxied kernels, with the names and flags of the older ``ssh_ipykernel.manage``.

``python -m proxykernel.manage --display-name "SSH btest:demo(abc)" --host btest --python /opt/env``
and ``add_kernel(...)`` write ``ssh__ssh_btest_demo_abc_/kernel.json``, whose argv starts
``python -m proxykernel``. ``proxykernel add`` (proxykernel/command.py) and ``discover`` call
``add_kernel`` too; ``proxied_kernelspecs`` is what ``proxykernel list`` shows.
"""
from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

from jupyter_client.kernelspec import KernelSpecManager

from proxykernel.cli import build_parser, parse_env

__all__ = ["add_kernel", "kernel_name", "kernel_argv", "proxied_kernelspecs", "ProxiedSpec", "main"]

PREFIX = "ssh_"
Env = Union[str, Mapping[str, str], None]


def kernel_name(display_name: str) -> str:
    """ssh_ipykernel's directory name: ``"SSH btest:demo(abc)"`` -> ``ssh__ssh_btest_demo_abc_``."""
    return "%s_%s" % (PREFIX, re.sub(r"[^a-z0-9._-]", "_", display_name.lower()))


def _env_text(env: Env) -> Optional[str]:
    """The ``--env`` value; a mapping becomes shell-quoted pairs. Raises ValueError on bad pairs."""
    if env is None or env == "" or env == {}:
        return None
    text = env if isinstance(env, str) else " ".join(
        "%s=%s" % (name, shlex.quote(value)) for name, value in env.items())
    parse_env([text])  # fail at registration, not at every kernel start
    return text


def kernel_argv(host: str, remote_python_path: str, local_python_path: str = sys.executable,
                timeout: float = 30, env: Env = None, sudo: bool = False,
                workdir: Optional[str] = None, pre_command: Optional[str] = None,
                ssh_options: Sequence[str] = (), ssh_config: Optional[str] = None,
                extra: Sequence[str] = (), slurm: Optional[str] = None,
                queue_timeout: Optional[float] = None) -> List[str]:
    """The kernelspec argv, in ssh_ipykernel's order; called by add_kernel and proxykernel.api.
    ``slurm``: sbatch options, the kernel then runs in a Slurm job submitted on ``host``."""
    if not host or not remote_python_path:
        raise ValueError("a kernelspec needs both a host and a remote Python")
    argv = [local_python_path, "-m", "proxykernel", "--host", host, "--python", remote_python_path,
            "--timeout", "%g" % timeout]
    env_text = _env_text(env)
    if env_text is not None:
        argv += ["--env", env_text]
    if sudo:
        argv.append("-s")
    if workdir:
        argv += ["--workdir", workdir]
    if pre_command:
        argv += ["--pre-command", pre_command]
    if slurm is not None:
        argv.append("--slurm=" + slurm)  # one word: sbatch options start with a dash
    if queue_timeout is not None:
        argv += ["--queue-timeout", "%g" % queue_timeout]
    for option in ssh_options:
        argv += ["--ssh-option", option]
    if ssh_config:
        argv += ["--ssh-config", str(Path(ssh_config).resolve())]
    return argv + list(extra) + ["-f", "{connection_file}"]


def add_kernel(host: str, display_name: str, local_python_path: str, remote_python_path: str,
               env: Env = None, sudo: bool = False, system: bool = False, timeout: float = 30,
               *, name: Optional[str] = None, prefix: Optional[str] = None,
               workdir: Optional[str] = None, pre_command: Optional[str] = None,
               ssh_options: Sequence[str] = (), ssh_config: Optional[str] = None,
               extra: Sequence[str] = (), slurm: Optional[str] = None,
               queue_timeout: Optional[float] = None) -> str:
    """Install a kernelspec and return its name (ssh_ipykernel's signature, plus keyword options).

    Per user by default; ``system=True`` for the system-wide directory, ``prefix=`` for
    ``PREFIX/share/jupyter/kernels`` (``--sys-prefix`` passes ``sys.prefix``). Replaces an
    existing kernelspec of the same name. Raises ValueError with a sentence on bad values.
    """
    if not display_name:
        raise ValueError("the display name must not be empty")
    argv = kernel_argv(host, remote_python_path, local_python_path, timeout, env, sudo, workdir,
                       pre_command, ssh_options, ssh_config, extra, slurm, queue_timeout)
    name = name or kernel_name(display_name)
    spec = {"argv": argv, "display_name": display_name, "language": "python",
            # Jupyter's SIGINT to the proxy becomes an interrupt frame: no lab extension needed.
            "interrupt_mode": "signal"}
    with tempfile.TemporaryDirectory() as source:
        Path(source).chmod(0o755)
        (Path(source) / "kernel.json").write_text(json.dumps(spec, indent=2, sort_keys=True) + "\n")
        KernelSpecManager().install_kernel_spec(source, name, user=not system and prefix is None,
                                                prefix=prefix)
    return name


@dataclass(frozen=True)
class ProxiedSpec:
    """A kernelspec whose argv runs ``python -m proxykernel``, with its options read back."""
    name: str
    directory: str
    display_name: str
    host: str
    python: str
    options: List[str]


def proxied_kernelspecs() -> List[ProxiedSpec]:
    """Every installed kernelspec that runs proxykernel, by name; ``proxykernel list`` prints them."""
    found = []
    parser = build_parser()
    for name, entry in sorted(KernelSpecManager().get_all_specs().items()):
        spec: Dict[str, Any] = entry.get("spec", {})
        argv = spec.get("argv", [])
        if argv[1:3] != ["-m", "proxykernel"]:
            continue
        args, _ = parser.parse_known_args(argv[3:])
        options = [item for item in argv[3:] if item not in ("-f", "{connection_file}")]
        for value in ("--host", args.host, "--python", args.python):
            options.remove(value)
        found.append(ProxiedSpec(name, entry["resource_dir"], spec.get("display_name", name),
                                 args.host, args.python, options))
    return found


def build_manage_parser() -> argparse.ArgumentParser:
    """ssh_ipykernel.manage's flags, same names and meaning."""
    parser = argparse.ArgumentParser(prog="python -m proxykernel.manage",
                                     description="Add a kernelspec for a kernel on a remote host.")
    parser.add_argument("--display-name", "-d", help="kernel display name (default is host name)")
    parser.add_argument("--sudo", "-s", action="store_true",
                        help="sudo required to start kernel on the remote machine")
    parser.add_argument("--timeout", "-t", type=float, default=30,
                        help="seconds to wait for the remote kernel to start (default: 30)")
    parser.add_argument("--env", "-e", nargs="*", default=[],
                        help="environment variables for the remote kernel in the form: VAR1=value1 VAR2=value2")
    parser.add_argument("--host", "-H", required=True, help="remote host")
    parser.add_argument("--python", "-p", required=True, help="remote python_path")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_manage_parser()
    args = parser.parse_args(argv)
    try:
        name = add_kernel(host=args.host, display_name=args.display_name or args.host,
                          local_python_path=sys.executable, remote_python_path=args.python,
                          sudo=args.sudo, env=" ".join(args.env) or None, timeout=args.timeout)
    except (ValueError, OSError) as error:
        parser.exit(2, "%s: error: %s\n" % (parser.prog, error))
    print("Installed kernelspec %s" % name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
