"""A kernel outlives its frontend (issue 11): a start for the same notebook reattaches to the kernel
that lingers for it (same process, same variables, the output produced meanwhile delivered once),
another notebook and a restart get fresh kernels, and messages are re-signed between the two keys
with no check skipped. Through the test sshd, real kernels, jupyter_client as Jupyter Server uses it
(``JPY_SESSION_NAME`` in the kernel's environment)."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import pytest
from jupyter_client import BlockingKernelClient
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from jupyter_client.session import Session

from tests.kernels import alive, printed, kernel_manager, proxy_argv, run_cell, shell_reply
from tests.test_parent import wait_until_gone
from tests.test_reconnect import host_pid
from tests.userland import kernels_on, proxykernel, user_env

LINES = 40  # the long cell prints one a 0.2 s: 8 s
# Jupyter Server as the proxy sees it: a KernelManager that starts the kernel for a notebook.
JUPYTER = """
import json, os, sys, time
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
spec_dir, session, log = sys.argv[1:4]
km = KernelManager(kernel_name="pxk", kernel_spec_manager=KernelSpecManager(kernel_dirs=[spec_dir]))
with open(log, "ab") as out:
    km.start_kernel(env=dict(os.environ, JPY_SESSION_NAME=session), stdout=out, stderr=out)
print(km.connection_file, flush=True)
time.sleep(300)
"""


def write_spec(sshd: Any, where: Path, *extra: str) -> Path:
    """Register the proxied kernel ("pxk") in ``where``/kernels; returns that kernels directory."""
    kernel_manager(proxy_argv(sshd, extra=["--linger", "60", *extra]), where)  # writes kernel.json
    return where / "kernels"


@pytest.fixture
def spec_dir(sshd: Any, tmp_path: Path) -> Path:
    """A kernelspec of the proxied kernel, its remote kernel lingering a minute with no frontend."""
    return write_spec(sshd, tmp_path)


class Jupyter:
    """A Jupyter process that started one kernel for ``session``; the test can SIGKILL it."""

    def __init__(self, spec_dir: Path, session: str, log: Path) -> None:
        self.process = subprocess.Popen([sys.executable, "-c", JUPYTER, str(spec_dir), session, str(log)],
                                        stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
        assert self.process.stdout is not None
        self.connection_file = self.process.stdout.readline().strip()
        assert self.connection_file, "the Jupyter process did not start its kernel"

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()


def client(connection_file: str) -> BlockingKernelClient:
    kc = BlockingKernelClient()
    kc.load_connection_file(connection_file)
    kc.start_channels(hb=False)  # a heartbeat 1 s late on a loaded machine is not a dead kernel
    kc.wait_for_ready(timeout=60)
    return kc


@contextmanager
def notebook_kernel(session: str, spec_dir: Path, log: Path) -> Iterator[Tuple[KernelManager, BlockingKernelClient]]:
    """A kernel started in this process as Jupyter Server starts one for the notebook ``session``,
    with a client whose channels are started (not waited for: see the reattach test); shut down at
    the end. The proxy's log goes to ``log``."""
    km = KernelManager(kernel_name="pxk", kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(spec_dir)]))
    with open(log, "ab") as out:
        km.start_kernel(env=dict(os.environ, JPY_SESSION_NAME=session), stdout=out, stderr=out)
        kc = km.client()
        kc.start_channels()
        try:
            yield km, kc
        finally:
            kc.stop_channels()
            km.shutdown_kernel(now=False)
            km.cleanup_resources()


def kernel_pid(kc: BlockingKernelClient) -> int:
    """The kernel's pid as it sees it (inside the test sshd's PID namespace)."""
    outputs = run_cell(kc, "import os; print(os.getpid())")[1]
    return int(outputs[0][1]["text"])


def lines_of(kc: BlockingKernelClient, msg_id: str, timeout: float, until_idle: bool = True,
             at_least: int = 0) -> List[int]:
    """The numbers the cell ``msg_id`` printed, as ``kc`` received them: until the cell is idle, or
    until ``at_least`` numbers arrived."""
    text = ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            msg = kc.get_iopub_msg(timeout=max(0.01, deadline - time.monotonic()))
        except Exception:  # queue.Empty: checked below
            break
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == "stream":
            text += msg["content"]["text"]
            if not until_idle and len(text.split()) >= at_least:
                return [int(word) for word in text.split()]
        elif msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle" and until_idle:
            return [int(word) for word in text.split()]
    raise AssertionError("cell %s: got %r within %.0f s" % (msg_id, text, timeout))


@pytest.fixture
def first_frontend(spec_dir: Path, tmp_path: Path) -> Iterator[Tuple[Jupyter, BlockingKernelClient]]:
    jupyter = Jupyter(spec_dir, "analysis.ipynb", tmp_path / "jupyter-1.log")
    kc = client(jupyter.connection_file)
    try:
        yield jupyter, kc
    finally:
        kc.stop_channels()
        jupyter.kill()


def test_a_start_for_the_same_notebook_reattaches(sshd: Any, spec_dir: Path, tmp_path: Path,
                                                  first_frontend: Tuple[Jupyter, BlockingKernelClient]) -> None:
    jupyter, kc1 = first_frontend
    run_cell(kc1, "x = 42")
    pid = kernel_pid(kc1)
    cell = kc1.execute("import time\nfor i in range(%d):\n    print(i, flush=True)\n    time.sleep(0.2)" % LINES)
    seen_before = lines_of(kc1, cell, 30, until_idle=False, at_least=5)
    jupyter.kill()  # SIGKILL: the proxy notices and detaches; the kernel goes on printing
    time.sleep(1.5)
    seen_before += drain_lines(kc1, cell)
    log = tmp_path / "jupyter-2.log"
    with notebook_kernel("analysis.ipynb", spec_dir, log) as (km, kc2):
        # Not wait_for_ready: it discards IOPub until 0.2 s pass quietly (the running cell's lines).
        info = kc2.kernel_info()
        seen_after = lines_of(kc2, cell, 60)
        assert shell_reply(kc2, info)["msg_type"] == "kernel_info_reply"
        assert len(seen_after) == len(set(seen_after)), seen_after
        assert sorted(seen_before + seen_after) == list(range(LINES)), (seen_before, seen_after)
        assert printed(kc2, "print(x, os.getpid())") == "42 %d\n" % pid
        assert "reattached to the kernel of analysis.ipynb started" in log.read_text()
        assert printed(kc2, "import os; print(os.environ['JPY_SESSION_NAME'])") \
            == "analysis.ipynb\n"

        wrong_key_is_dropped_and_logged_once(kc2, log)

        with notebook_kernel("other.ipynb", spec_dir, tmp_path / "jupyter-3.log") as (_, kc3):
            kc3.wait_for_ready(timeout=60)
            assert kernel_pid(kc3) != pid
            assert run_cell(kc3, "x")[0]["ename"] == "NameError"
            other = host_pid(sshd, kernel_pid(kc3))

        km.restart_kernel(now=False)
        kc2.wait_for_ready(timeout=60)
        assert kernel_pid(kc2) != pid, "a restart gives a fresh kernel"
        assert run_cell(kc2, "x")[0]["ename"] == "NameError"
        restarted = host_pid(sshd, kernel_pid(kc2))
    wait_until_gone([other, restarted], 15.0)


def drain_lines(kc: BlockingKernelClient, msg_id: str) -> List[int]:
    """What ``kc`` still has of the cell's output, already delivered to it."""
    text = ""
    while True:
        try:
            msg = kc.get_iopub_msg(timeout=0.5)
        except Exception:  # queue.Empty: nothing more
            return [int(word) for word in text.split()]
        if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "stream":
            text += msg["content"]["text"]


def wrong_key_is_dropped_and_logged_once(kc: BlockingKernelClient, log: Path) -> None:
    """Done-when 4: after a reattach, a message signed with another key gets no answer, and the
    proxy's log says so once."""
    forged = Session(key=b"not-the-key", signature_scheme=kc.session.signature_scheme)
    ids = []
    for _ in range(2):
        msg = forged.msg("kernel_info_request")
        ids.append(msg["header"]["msg_id"])
        forged.send(kc.shell_channel.socket, msg)
    honest = kc.kernel_info()
    reply: Dict[str, Any] = {}
    deadline = time.monotonic() + 20
    while reply.get("parent_header", {}).get("msg_id") != honest:
        reply = kc.get_shell_msg(timeout=max(0.01, deadline - time.monotonic()))
        assert reply["parent_header"].get("msg_id") not in ids, "a forged message got an answer"
    text = log.read_text()
    assert text.count("dropped a message from a frontend with a wrong signature") == 1, text


def test_no_reattach_starts_a_fresh_kernel(sshd: Any, tmp_path: Path) -> None:
    spec_dir = write_spec(sshd, tmp_path, "--no-reattach")
    jupyter = Jupyter(spec_dir, "plain.ipynb", tmp_path / "jupyter-1.log")
    kc1 = client(jupyter.connection_file)
    try:
        run_cell(kc1, "x = 1")
        first = host_pid(sshd, kernel_pid(kc1))
    finally:
        kc1.stop_channels()
        jupyter.kill()
    with notebook_kernel("plain.ipynb", spec_dir, tmp_path / "jupyter-2.log") as (_, kc2):
        kc2.wait_for_ready(timeout=60)
        assert run_cell(kc2, "x")[0]["ename"] == "NameError"
    assert alive(first), "the first kernel lingers for its own notebook frontend"
    assert listing(sshd, tmp_path)["plain.ipynb"]["attached"] is False
    stopped = proxykernel(user_env(tmp_path), "stop", sshd.alias, "--ssh-config", str(sshd.config_path), "plain.ipynb")
    assert stopped.returncode == 0, stopped.stderr
    wait_until_gone([first], 15.0)


def test_the_session_name_reaches_the_kernel(sshd: Any, tmp_path: Path) -> None:
    """--session names it for frontends that pass no JPY_SESSION_NAME (nbclient, jupyter console)."""
    km = kernel_manager(proxy_argv(sshd, extra=["--session", "console-1"]), tmp_path)
    km.start_kernel()
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        text = printed(kc, "import os; print(os.environ.get('JPY_SESSION_NAME'))")
        assert text == "console-1\n"
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=False)
        km.cleanup_resources()


def test_a_persistent_kernel_survives_a_shutdown_and_restart_still_restarts(sshd: Any, tmp_path: Path) -> None:
    spec_dir = write_spec(sshd, tmp_path, "--persistent", "--persistent-linger", "120")
    log = tmp_path / "jupyter.log"
    with notebook_kernel("keep.ipynb", spec_dir, log) as (_, kc):
        kc.wait_for_ready(timeout=60)
        run_cell(kc, "x = 7")
        pid = kernel_pid(kc)
        kernel = host_pid(sshd, pid)
    # Jupyter shut the kernel down (closing the notebook, or a server stopped by SIGTERM): detached.
    assert "shutdown requested: detaching (--persistent)" in log.read_text()
    assert alive(kernel)
    with notebook_kernel("keep.ipynb", spec_dir, log) as (km, kc):
        kc.wait_for_ready(timeout=60)
        assert printed(kc, "print(x, os.getpid())") == "7 %d\n" % pid
        km.restart_kernel(now=False)
        kc.wait_for_ready(timeout=60)
        assert run_cell(kc, "x")[0]["ename"] == "NameError", "a restart gives a fresh kernel"
        fresh = host_pid(sshd, kernel_pid(kc))
    wait_until_gone([kernel], 15.0)
    assert alive(fresh), "the restarted kernel is persistent too"
    listed = listing(sshd, tmp_path)["keep.ipynb"]
    assert (listed["attached"], listed["persistent"], listed["linger"]) == (False, True, 120)
    stopped = proxykernel(user_env(tmp_path), "stop", sshd.alias, "--ssh-config", str(sshd.config_path), "keep.ipynb")
    assert stopped.returncode == 0, stopped.stderr
    wait_until_gone([fresh], 15.0)
    assert "keep.ipynb" not in listing(sshd, tmp_path)


def listing(sshd: Any, tmp_path: Path) -> Dict[str, Dict[str, Any]]:
    """The kernels ``proxykernel ps`` lists on the test sshd, by session name."""
    return {kernel["session"]: kernel for kernel in kernels_on(sshd, tmp_path) if kernel["session"]}
