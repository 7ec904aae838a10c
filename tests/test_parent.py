"""A proxy whose Jupyter dies (SIGKILL: a crash, the OOM killer) does what a local ipykernel does: it
notices and leaves, and leaves nothing behind here; the remote kernel lingers for ``--linger`` and then
stops (issue 11's first part). Through the test sshd, with a real kernel."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, List

from jupyter_client import BlockingKernelClient
from jupyter_client.connect import write_connection_file

from proxykernel.testing.procs import descendants, read_stat
from tests.kernels import alive, proxy_argv
from tests.test_reconnect import remote_pid

LINGER = 4.0
# Jupyter as far as the proxy can tell: it starts the proxy with JPY_PARENT_PID, as jupyter_client does.
JUPYTER = """
import json, os, subprocess, sys, time
env = dict(os.environ, JPY_PARENT_PID=str(os.getpid()))
log = open(sys.argv[2], "ab")  # as Jupyter's server log
proxy = subprocess.Popen(json.loads(sys.argv[1]), env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
print(proxy.pid, flush=True)
time.sleep(300)
"""


def wait_until_gone(pids: List[int], timeout: float) -> float:
    """Seconds until none of ``pids`` runs; fails after ``timeout``."""
    began = time.monotonic()
    while any(alive(pid) for pid in pids):
        assert time.monotonic() - began < timeout, [(pid, read_stat(pid)) for pid in pids if alive(pid)]
        time.sleep(0.05)
    return time.monotonic() - began


def test_a_proxy_whose_jupyter_died_leaves_and_the_kernel_lingers_then_stops(sshd: Any, tmp_path: Path) -> None:
    connection_file = str(tmp_path / "kernel-1.json")
    write_connection_file(connection_file, ip="127.0.0.1", key=b"a-key")
    argv = [connection_file if part == "{connection_file}" else part
            for part in proxy_argv(sshd, extra=["--linger", str(LINGER)])]
    log = tmp_path / "jupyter.log"
    jupyter = subprocess.Popen([sys.executable, "-c", JUPYTER, json.dumps(argv), str(log)], stdout=subprocess.PIPE,
                               stdin=subprocess.DEVNULL, text=True)
    kc = BlockingKernelClient()
    proxy, ssh = 0, []
    try:
        assert jupyter.stdout is not None
        proxy = int(jupyter.stdout.readline())
        kc.load_connection_file(connection_file)
        kc.start_channels()
        kc.wait_for_ready(timeout=60)
        kernel = remote_pid(kc, sshd)
        ssh = [pid for pid in descendants(proxy)
               if b"[mux]" not in Path("/proc/%d/cmdline" % pid).read_bytes()]  # the shared master stays
        assert ssh, "the proxy has no ssh child"
        jupyter.send_signal(signal.SIGKILL)
        jupyter.wait()
        left = wait_until_gone([proxy, *ssh], 10.0)
        print("\nproxy and its ssh gone %.2f s after Jupyter's death" % left)
        assert left < 2.0 + 0.5  # 2 s as the issue asks, and a tick of slack for a loaded machine
        assert alive(kernel), "the remote kernel must outlive the proxy for --linger"
        assert "has exited: detaching from the remote kernel" in log.read_text()
        wait_until_gone([kernel], LINGER + 15.0)
    finally:
        kc.stop_channels()
        if jupyter.poll() is None:
            jupyter.kill()
            jupyter.wait()
        if jupyter.stdout is not None:
            jupyter.stdout.close()
        for pid in [proxy, *ssh]:  # orphans of the dead Jupyter, if the test failed: by PID
            if pid and alive(pid):
                os.kill(pid, signal.SIGKILL)
