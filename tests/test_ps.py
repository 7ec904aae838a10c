"""``proxykernel ps`` and ``stop`` against the test sshd with real kernels (issue 11): the kernels
listed attached, a proxy killed leaves its kernel listed detached with its linger deadline, ``stop``
by an id's start ends it, ``stop --all`` ends only the detached ones, a name that fits no kernel is
one sentence. The remote runtime directory is the test's own (XDG_RUNTIME_DIR through
--pre-command), so the kernels of other tests running meanwhile are never listed or stopped."""
from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import pytest
from jupyter_client import BlockingKernelClient
from jupyter_client.connect import write_connection_file

from proxykernel.config import kernel_id
from proxykernel.testing.procs import descendants
from tests.kernels import alive, proxy_argv, run_cell
from tests.test_reconnect import host_pid
from tests.userland import one_error, proxykernel, user_env

LINGER = 120.0


class Kernels:
    """Proxies started as Jupyter would (a connection file each), with the test's remote options."""

    def __init__(self, sshd: Any, tmp_path: Path, runtime: str) -> None:
        self.sshd, self.tmp_path = sshd, tmp_path
        self.remote = ["--ssh-config", str(sshd.config_path),
                       "--pre-command", "export XDG_RUNTIME_DIR=%s" % shlex.quote(runtime)]
        self.env = user_env(tmp_path)
        self.proxies: List["subprocess.Popen[bytes]"] = []
        self.clients: List[BlockingKernelClient] = []

    def start(self, name: str) -> Tuple[str, int, "subprocess.Popen[bytes]"]:
        """A kernel through its own proxy: (its daemon's id, the kernel's pid there, the proxy)."""
        connection_file = str(self.tmp_path / ("kernel-%s.json" % name))
        key = "key-of-%s" % name
        write_connection_file(connection_file, ip="127.0.0.1", key=key.encode())
        argv = [connection_file if part == "{connection_file}" else part
                for part in proxy_argv(self.sshd, extra=["--linger", "%g" % LINGER, *self.remote[2:]])]
        with open(self.tmp_path / ("proxy-%s.log" % name), "ab") as log:
            proxy = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        self.proxies.append(proxy)
        kc = BlockingKernelClient()
        kc.load_connection_file(connection_file)
        kc.hb_channel.time_to_dead = 10.0  # not 1 s: wait_for_ready gives up on one late beat under load
        kc.start_channels()
        self.clients.append(kc)
        kc.wait_for_ready(timeout=60)
        pid = int(run_cell(kc, "import os; print(os.getpid())")[1][0][1]["text"])
        return kernel_id(key, connection_file), pid, proxy

    def command(self, *args: str) -> "subprocess.CompletedProcess[str]":
        return proxykernel(self.env, args[0], self.sshd.alias, *self.remote, *args[1:], timeout=60)

    def ps(self) -> Dict[str, Dict[str, Any]]:
        """``proxykernel ps --json``: the kernels by id."""
        result = self.command("ps", "--json")
        assert result.returncode == 0, result.stderr
        return {kernel["id"]: kernel for kernel in json.loads(result.stdout)["kernels"]}

    def close(self) -> None:
        for kc in self.clients:
            kc.stop_channels()
        for proxy in self.proxies:
            if proxy.poll() is None:
                proxy.terminate()  # SIGTERM: the proxy ends its remote kernel
                try:
                    proxy.wait(20)
                except subprocess.TimeoutExpired:
                    proxy.kill()
                    proxy.wait()
        self.command("stop", "--all")  # the detached ones a failed test left


@pytest.fixture
def kernels(sshd: Any, tmp_path: Path) -> Iterator[Kernels]:
    runtime = tempfile.mkdtemp(prefix="pxkps-", dir="/tmp")  # short: sockets are named in it
    held = Kernels(sshd, tmp_path, runtime)
    try:
        yield held
    finally:
        held.close()
        shutil.rmtree(runtime, ignore_errors=True)


def kill_proxy(proxy: "subprocess.Popen[bytes]") -> None:
    """SIGKILL a proxy and its ssh (not the shared master): the daemon sees its stream end."""
    ssh = [pid for pid in descendants(proxy.pid) if b"[mux]" not in Path("/proc/%d/cmdline" % pid).read_bytes()]
    for pid in [proxy.pid, *ssh]:
        os.kill(pid, signal.SIGKILL)
    proxy.wait()


def wait_for(kernels: Kernels, check: Any, timeout: float = 20.0) -> Dict[str, Dict[str, Any]]:
    """``ps`` until ``check(listing)`` holds."""
    deadline = time.monotonic() + timeout
    while True:
        listing = kernels.ps()
        if check(listing):
            return listing
        assert time.monotonic() < deadline, listing
        time.sleep(0.3)


def test_ps_lists_attached_and_detached_kernels_and_stop_ends_them(kernels: Kernels, sshd: Any) -> None:
    runtime = Path(kernels.remote[-1].split("=", 1)[1]) / "proxykernel"
    a, b, c = (kernels.start(name) for name in "abc")
    stale = runtime / ("0" * 24 + ".json")  # a daemon that died without cleaning up
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale.write_text(json.dumps({"id": "0" * 24, "agent_pid": dead.pid}))

    listing = kernels.ps()
    assert sorted(listing) == sorted([a[0], b[0], c[0]])
    assert not stale.exists()
    for kernel_id_, pid, _ in (a, b, c):
        kernel = listing[kernel_id_]
        assert (kernel["kernel_pid"], kernel["attached"], kernel["python"]) == (pid, True, sys.executable)
        assert kernel["linger"] == LINGER and kernel["lingers_until"] is None and kernel["session"] is None
        assert 10 << 20 < kernel["rss"] < 1 << 30  # an ipykernel's resident memory, read through /proc
        path = runtime / (kernel_id_ + ".json")
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert "key-of" not in path.read_text() and "shell_port" not in path.read_text()
    table = kernels.command("ps").stdout.splitlines()
    assert table[0].split()[:3] == ["ID", "SESSION", "PID"]
    assert all(" attached (" in line for line in table[1:]) and len(table) == 4

    kill_proxy(a[2])
    kill_proxy(c[2])
    listing = wait_for(kernels, lambda ps: not ps[a[0]]["attached"] and not ps[c[0]]["attached"])
    assert listing[b[0]]["attached"]
    assert listing[a[0]]["lingers_until"] == pytest.approx(listing[a[0]]["since"] + LINGER)
    [row] = [line for line in kernels.command("ps").stdout.splitlines() if line.startswith(a[0][:12])]
    assert " detached (" in row and ("(in 1 min)" in row or "(in 2 min)" in row)

    stopped = kernels.command("stop", a[0][:6])
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout.startswith("stopped %s, kernel pid %d, in " % (a[0][:12], a[1]))
    assert sorted(kernels.ps()) == sorted([b[0], c[0]])
    assert not (runtime / (a[0] + ".json")).exists() and gone(sshd, a[1])

    stopped = kernels.command("stop", "--all")
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout.split(",")[0] == "stopped %s" % c[0][:12]
    assert list(kernels.ps()) == [b[0]]
    assert run_cell(kernels.clients[1], "print(6 * 7)")[1][0][1]["text"] == "42\n"  # untouched

    assert one_error(kernels.command("stop", "nosuchkernel")) == (
        "proxykernel stop: error: no kernel on %s has the id or session name 'nosuchkernel' "
        "(see 'proxykernel ps %s')" % (sshd.alias, sshd.alias))
    assert kernels.command("stop", "--all").stdout == "no detached kernel on %s\n" % sshd.alias


def gone(sshd: Any, ns_pid: int) -> bool:
    """Is the remote process of pid ``ns_pid`` (in the test sshd's namespace) gone?"""
    try:
        return not alive(host_pid(sshd, ns_pid))
    except AssertionError:  # no such process under the sshd
        return True
