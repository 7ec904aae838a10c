"""The classic way, for comparison: a remote ipykernel reached through ``ssh -L`` of its five ports.

This is what ``ssh_ipykernel`` and ``remote_ikernel`` do, reduced to its core: a kernelspec argv runs
this script; it picks five ports for the remote kernel, starts ipykernel there over ssh with a
connection file for those ports, and forwards the five local ports Jupyter chose with ``-L``. The
server must allow TCP forwarding (the benchmark's sshd enables it only for this launcher).

    python bench/sshl_kernel.py --host HOST [--ssh-config FILE] [--python REMOTE_PY] -f {connection_file}

Deliberately kind to the classic approach: the remote ports are picked locally (the benchmark's
"remote" is this machine; the real tools need an extra ssh round trip, or guess), and the connection
file travels on ssh's stdin rather than on a command line. Stdlib only; not imported by the benchmark.
"""
import argparse
import json
import shlex
import signal
import socket
import subprocess
import sys

CHANNELS = ("shell", "iopub", "stdin", "control", "hb")

# Runs under the remote login shell as `sh -c`: the first stdin line is the connection file; the
# kernel runs until it exits (shutdown_request) or ssh's stdin ends (the launcher was stopped).
REMOTE_SCRIPT = r"""
d=$(mktemp -d) || exit 1
trap 'rm -rf "$d"' EXIT
IFS= read -r line
printf '%s\n' "$line" > "$d/kernel.json"
exec 3<&0
"$1" -m ipykernel_launcher -f "$d/kernel.json" </dev/null &
k=$!
(cat <&3 >/dev/null 2>&1; kill $k 2>/dev/null) >/dev/null 2>&1 &
w=$!
exec 3<&-
wait $k; c=$?
kill $w 2>/dev/null
exit $c
"""


EPHEMERAL_LOW = 32768  # Linux's ip_local_port_range starts here by default
OFFSET = 30000


def remote_port(local_port):
    """A port for the remote kernel. The benchmark's "remote" is this machine, where a random free
    port can collide with another launcher's or with a port Jupyter hands the next kernel: map
    Jupyter's (unique, ephemeral) local port below the ephemeral range instead, if that is free."""
    candidate = local_port - OFFSET
    if candidate > 1024 and local_port >= EPHEMERAL_LOW:
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", candidate))
                return candidate
            except OSError:
                pass
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", required=True)
    parser.add_argument("--ssh-config")
    parser.add_argument("--python", default="python3", help="the remote interpreter")
    parser.add_argument("-o", "--ssh-option", action="append", default=[])
    parser.add_argument("-f", dest="connection_file", required=True)
    args = parser.parse_args(argv)

    with open(args.connection_file) as handle:
        local = json.load(handle)
    remote = dict(local, ip="127.0.0.1", transport="tcp")
    ssh = ["ssh", "-T", "-o", "ExitOnForwardFailure=yes"]
    if args.ssh_config:
        ssh += ["-F", args.ssh_config]
    for option in args.ssh_option:
        ssh += ["-o", option]
    for channel in CHANNELS:
        port = remote["%s_port" % channel] = remote_port(local["%s_port" % channel])
        ssh += ["-L", "127.0.0.1:%d:127.0.0.1:%d" % (local["%s_port" % channel], port)]
    command = "sh -c %s pxk-sshl %s" % (shlex.quote(REMOTE_SCRIPT), shlex.quote(args.python))
    # Its own session: Jupyter signals our process group on interrupt, which must not kill ssh.
    proc = subprocess.Popen(ssh + ["--", args.host, command], stdin=subprocess.PIPE,
                            start_new_session=True)
    proc.stdin.write((json.dumps(remote) + "\n").encode())
    proc.stdin.flush()

    def stop(signum, frame):
        # EOF on ssh's stdin makes the remote script stop the kernel; ssh then exits.
        try:
            proc.stdin.close()
        except OSError:
            pass

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # interrupts go as interrupt_request messages
    try:
        code = proc.wait(timeout=None)
    finally:
        if proc.poll() is None:
            proc.kill()
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main())
