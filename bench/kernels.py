"""Starting kernels the way Jupyter does, and the measurements made on a running one.

Everything goes through ``jupyter_client``: a ``KernelManager`` per kernel (a kernelspec argv for
the ssh -L launcher and for proxykernel) and a ``BlockingKernelClient``. Times are wall-clock
``time.perf_counter()`` seconds in the benchmark process.
"""
from __future__ import annotations

import json
import os
import signal
import time
import uuid
from pathlib import Path
from queue import Empty
from typing import Any, Dict, IO, List, Optional, Sequence, Tuple

import zmq
from jupyter_client import BlockingKernelClient, KernelManager
from jupyter_client.kernelspec import KernelSpecManager

from bench import procs

__all__ = ["Spec", "Kernel", "start_kernels", "stop_kernels", "wait_ready", "KernelError",
           "measure_pass", "measure_comm", "measure_stdout", "measure_display", "peak_rss"]

READY_TIMEOUT = 60.0
REPLY_TIMEOUT = 60.0
RESEND_KERNEL_INFO = 1.0  # what jupyter_client's wait_for_ready does when no reply comes


class KernelError(Exception):
    """A kernel did not start or answer in time."""


class Spec:
    """How to launch one kind of kernel: ``argv`` None is the local "python3" kernel."""

    def __init__(self, name: str, argv: Optional[List[str]], spec_root: Path,
                 env: Optional[Dict[str, str]] = None, interrupt_mode: str = "signal") -> None:
        self.name = name
        self.argv = argv
        self.env = env or {}
        self.ksm: Optional[KernelSpecManager] = None
        if argv is not None:
            kernel_dir = spec_root / "kernels" / name
            kernel_dir.mkdir(parents=True, exist_ok=True)
            (kernel_dir / "kernel.json").write_text(json.dumps({
                "argv": argv, "display_name": name, "language": "python",
                "interrupt_mode": interrupt_mode}))
            self.ksm = KernelSpecManager(kernel_dirs=[str(spec_root / "kernels")])

    def manager(self) -> KernelManager:
        if self.ksm is None:
            return KernelManager(kernel_name="python3")
        return KernelManager(kernel_name=self.name, kernel_spec_manager=self.ksm)


class Kernel:
    """A started kernel: its manager, a client with its channels started, and the launch time."""

    def __init__(self, spec: Spec, log: IO[bytes], cwd: str) -> None:
        self.spec = spec
        self.km = spec.manager()
        env = dict(os.environ)
        env.update(spec.env)
        self.started = time.perf_counter()
        self.km.start_kernel(env=env, cwd=cwd, stdout=log, stderr=log)
        self.pid: int = self.km.provisioner.pid  # type: ignore[union-attr]
        self.kc: BlockingKernelClient = self.km.client()
        self.kc.start_channels(hb=False)
        self.ready_at: Optional[float] = None

    @property
    def start_seconds(self) -> float:
        assert self.ready_at is not None
        return self.ready_at - self.started

    def restart(self) -> float:
        """Restart as Jupyter does (shutdown_request, then a new process on the same ports) and
        return the seconds until a fresh client gets kernel_info_reply."""
        self.kc.stop_channels()
        began = time.perf_counter()
        self.km.restart_kernel(now=False)
        self.pid = self.km.provisioner.pid  # type: ignore[union-attr]
        self.kc = self.km.client()
        self.kc.start_channels(hb=False)
        self.started = began
        self.ready_at = None
        wait_ready([self])
        return self.start_seconds

    def stop(self) -> None:
        """Graceful shutdown (shutdown_request), then whatever is left below our pid is killed."""
        below = procs.local_side_pids(self.pid)["ssh"] if self.km.has_kernel else []
        try:
            self.kc.stop_channels()
            if self.km.has_kernel and self.km.is_alive():
                self.km.shutdown_kernel(now=False)
        finally:
            self.km.cleanup_resources()
            for pid in below:
                if procs.alive(pid):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass


def start_kernels(spec: Spec, count: int, log: IO[bytes], cwd: str) -> List[Kernel]:
    """Launch ``count`` kernels back to back (``start_kernel`` returns once the process is spawned;
    no threads: jupyter_client's sync managers leave an event loop behind in each thread)."""
    return [Kernel(spec, log, cwd) for _ in range(count)]


def stop_kernels(kernels: Sequence[Kernel]) -> None:
    """Stop many kernels at once: every shutdown_request first, then wait for each."""
    for kernel in kernels:
        kernel.kc.stop_channels()
        if kernel.km.has_kernel:
            try:
                kernel.km.request_shutdown()
            except Exception:  # noqa: BLE001 - stop() below kills what did not stop
                pass
    for kernel in kernels:
        kernel.stop()


def wait_ready(kernels: Sequence[Kernel], timeout: float = READY_TIMEOUT) -> List[Kernel]:
    """Wait as ``wait_for_ready`` does, for many kernels in one poll loop; returns the failed ones.

    Ready = a kernel_info_reply on shell and some IOPub message (jupyter_client's check that IOPub is
    connected). Unlike ``wait_for_ready`` we stop the clock there, not 0.2 s later after flushing
    IOPub, so the figure is the kernel's, not the client's idle timer.
    """
    poller = zmq.Poller()
    owner: Dict[Any, Tuple[Kernel, str]] = {}
    replied: Dict[int, float] = {}
    iopub_seen: Dict[int, float] = {}
    asked: Dict[int, float] = {}
    for kernel in kernels:
        for name in ("shell", "iopub"):
            sock = getattr(kernel.kc, "%s_channel" % name).socket
            poller.register(sock, zmq.POLLIN)
            owner[sock] = (kernel, name)
    pending = {id(k): k for k in kernels if k.ready_at is None}
    failed: List[Kernel] = []
    deadline = time.perf_counter() + timeout
    last_alive_check = 0.0
    while pending:
        now = time.perf_counter()
        for key, kernel in pending.items():
            if key not in replied and now - asked.get(key, -1e9) >= RESEND_KERNEL_INFO:
                kernel.kc.kernel_info()
                asked[key] = now
        for sock, _ in poller.poll(20):
            kernel, name = owner[sock]
            channel = getattr(kernel.kc, "%s_channel" % name)
            try:
                msg = channel.get_msg(timeout=0)
            except Empty:
                continue
            at = time.perf_counter()
            key = id(kernel)
            if name == "iopub":
                iopub_seen.setdefault(key, at)
            elif msg["msg_type"] == "kernel_info_reply":
                replied.setdefault(key, at)
        for key in list(pending):
            if key in replied and key in iopub_seen:
                pending.pop(key).ready_at = max(replied[key], iopub_seen[key])
        now = time.perf_counter()
        if now - last_alive_check > 0.5:
            last_alive_check = now
            for key, kernel in list(pending.items()):
                if not kernel.km.is_alive():
                    failed.append(pending.pop(key))
        if now > deadline:
            failed.extend(pending.values())
            break
    for sock in owner:
        poller.unregister(sock)
    return failed


# -- measurements on a running kernel ---------------------------------------------------------------

def _drain_iopub(kc: BlockingKernelClient) -> None:
    while True:
        try:
            kc.iopub_channel.get_msg(timeout=0)
        except Empty:
            return


def _shell_reply(kc: BlockingKernelClient, msg_id: str, timeout: float = REPLY_TIMEOUT) -> Dict[str, Any]:
    deadline = time.perf_counter() + timeout
    while True:
        try:
            msg = kc.shell_channel.get_msg(timeout=max(0.0, deadline - time.perf_counter()))
        except Empty:
            raise KernelError("no reply to %s within %.0f s" % (msg_id, timeout)) from None
        if msg["parent_header"].get("msg_id") == msg_id:
            return msg


def run(kc: BlockingKernelClient, code: str) -> None:
    """Execute setup code (untimed) and check it worked."""
    reply = _shell_reply(kc, kc.execute(code, store_history=False))
    if reply["content"]["status"] != "ok":
        raise KernelError("setup code failed: %s" % reply["content"].get("evalue"))
    _until_idle(kc, reply["parent_header"]["msg_id"])


def _until_idle(kc: BlockingKernelClient, msg_id: str, on_msg: Any = None,
                timeout: float = REPLY_TIMEOUT) -> float:
    """Read IOPub until the kernel is idle after ``msg_id``; returns the time that happened."""
    deadline = time.perf_counter() + timeout
    while True:
        try:
            msg = kc.iopub_channel.get_msg(timeout=max(0.0, deadline - time.perf_counter()))
        except Empty:
            raise KernelError("the kernel did not go idle after %s within %.0f s" % (msg_id, timeout)) from None
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        if on_msg is not None:
            on_msg(msg)
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            return time.perf_counter()


def measure_pass(kc: BlockingKernelClient, count: int) -> List[float]:
    """Round trips of ``execute_request("pass")`` -> ``execute_reply``, in seconds."""
    times = []
    for _ in range(5):  # warm-up: first executions compile, open history, etc.
        _shell_reply(kc, kc.execute("pass"))
    _drain_iopub(kc)
    for _ in range(count):
        began = time.perf_counter()
        _shell_reply(kc, kc.execute("pass"))
        times.append(time.perf_counter() - began)
        _drain_iopub(kc)  # untimed: keep the client's (and the proxy's) queues short
    return times


COMM_TARGET = "pxk_bench_echo"
_COMM_SETUP = """
def _pxk_bench_target(comm, msg):
    @comm.on_msg
    def _echo(msg):
        comm.send(msg["content"]["data"])
get_ipython().kernel.comm_manager.register_target(%r, _pxk_bench_target)
""" % COMM_TARGET


def measure_comm(kc: BlockingKernelClient, count: int) -> List[float]:
    """Round trips of a comm_msg (shell) echoed by the kernel as a comm_msg (IOPub), in seconds."""
    run(kc, _COMM_SETUP)
    comm_id = uuid.uuid4().hex
    opening = kc.session.msg("comm_open", {"comm_id": comm_id, "target_name": COMM_TARGET, "data": {}})
    kc.shell_channel.send(opening)
    _until_idle(kc, opening["header"]["msg_id"])
    times = []
    for i in range(count + 3):
        msg = kc.session.msg("comm_msg", {"comm_id": comm_id, "data": {"i": i}})
        began = time.perf_counter()
        kc.shell_channel.send(msg)
        deadline = began + REPLY_TIMEOUT
        while True:
            try:
                echo = kc.iopub_channel.get_msg(timeout=max(0.0, deadline - time.perf_counter()))
            except Empty:
                raise KernelError("no comm echo within %.0f s" % REPLY_TIMEOUT) from None
            if echo["msg_type"] == "comm_msg" and echo["content"].get("data") == {"i": i}:
                break
        if i >= 3:  # the first few are warm-up
            times.append(time.perf_counter() - began)
        _until_idle(kc, msg["header"]["msg_id"])
    return times


_STDOUT_CODE = """
import sys as _s
_c = ("x" * 1023 + "\\n") * 64
for _ in range(%d):
    _s.stdout.write(_c)
_s.stdout.flush()
"""


def measure_stdout(kc: BlockingKernelClient, nbytes: int) -> Tuple[int, float]:
    """Print ``nbytes`` (rounded to 64 KiB) from the kernel; (bytes received, seconds until idle)."""
    _drain_iopub(kc)
    received = [0]

    def count(msg: Dict[str, Any]) -> None:
        if msg["msg_type"] == "stream":
            received[0] += len(msg["content"]["text"])

    began = time.perf_counter()
    msg_id = kc.execute(_STDOUT_CODE % max(1, nbytes // 65536), store_history=False)
    done = _until_idle(kc, msg_id, count)
    _shell_reply(kc, msg_id)
    return received[0], done - began


def measure_display(kc: BlockingKernelClient, nbytes: int) -> Tuple[int, float]:
    """One display_data of ``nbytes`` (base64 of random bytes, as a PNG would be); (bytes, seconds)."""
    run(kc, "import base64 as _b, os as _o\n"
            "_pxk_img = {'image/png': _b.b64encode(_o.urandom(%d)).decode()}" % (nbytes * 3 // 4))
    _drain_iopub(kc)
    received = [0]

    def count(msg: Dict[str, Any]) -> None:
        if msg["msg_type"] == "display_data":
            received[0] += len(msg["content"]["data"].get("image/png", ""))

    began = time.perf_counter()
    msg_id = kc.execute("from IPython.display import display as _d; _d(_pxk_img, raw=True)",
                        store_history=False)
    done = _until_idle(kc, msg_id, count)
    _shell_reply(kc, msg_id)
    return received[0], done - began


def peak_rss(kernel: Kernel, sshd_pid: Optional[int]) -> Dict[str, float]:
    """Peak RSS (MB) of the local process Jupyter started, of its ssh client(s), and of the remote
    agent process(es); the kernel itself is left out."""
    local = procs.local_side_pids(kernel.pid)
    figures = {"local_rss_mb": procs.peak_rss_mb(local["main"]),
               "local_ssh_rss_mb": procs.peak_rss_mb(local["ssh"])}
    if sshd_pid is not None:
        agents = procs.remote_agent_pids(sshd_pid)
        if agents:  # one agent, or an attach process and a detached agent: report both ways
            figures["remote_rss_mb"] = procs.peak_rss_mb(agents)
            figures["remote_rss_max_mb"] = max(procs.peak_rss_mb([pid]) for pid in agents)
    return figures
