"""Helpers for integration tests: start kernels through a kernelspec, as Jupyter does, and run cells."""
from __future__ import annotations

import json
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.manager import KernelManager
from jupyter_client.kernelspec import KernelSpecManager

from proxykernel.testing.procs import descendants, read_stat

READY_TIMEOUT = 60

Output = Tuple[str, Dict[str, Any]]


def proxy_argv(sshd: Any, python: str = sys.executable, extra: Sequence[str] = ()) -> List[str]:
    """The kernelspec argv a user would register, pointed at the test sshd's own ssh config."""
    return [sys.executable, "-m", "proxykernel", "--host", sshd.alias, "--python", python,
            "--ssh-config", str(sshd.config_path), *extra, "-f", "{connection_file}"]


def kernel_manager(argv: Optional[List[str]], spec_dir: Path, interrupt_mode: str = "signal") -> KernelManager:
    """A KernelManager for a kernelspec written to ``spec_dir``; ``argv=None`` means a local ipykernel."""
    if argv is None:
        return KernelManager(kernel_name="python3")
    kernel_dir = spec_dir / "kernels" / "pxk"
    kernel_dir.mkdir(parents=True, exist_ok=True)
    (kernel_dir / "kernel.json").write_text(json.dumps({
        "argv": argv, "display_name": "SSH test", "language": "python",
        "interrupt_mode": interrupt_mode}))
    ksm = KernelSpecManager(kernel_dirs=[str(spec_dir / "kernels")])
    return KernelManager(kernel_name="pxk", kernel_spec_manager=ksm)


@contextmanager
def running_kernel(argv: Optional[List[str]], spec_dir: Path, interrupt_mode: str = "signal",
                   **start: Any) -> Iterator[Tuple[KernelManager, BlockingKernelClient]]:
    """A kernel started as Jupyter starts one (``start``: more for ``start_kernel``, such as
    ``env`` or ``stderr``), ready, with a client; shut down at the end."""
    km = kernel_manager(argv, spec_dir, interrupt_mode)
    km.start_kernel(**start)
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=READY_TIMEOUT)
        yield km, kc
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=False)
        km.cleanup_resources()


def run_cell(kc: BlockingKernelClient, code: str, timeout: float = 60,
             stdin_reply: Optional[str] = None) -> Tuple[Dict[str, Any], List[Output]]:
    """Execute ``code``; returns the execute_reply content and the cell's IOPub outputs in order."""
    outputs: List[Output] = []

    def on_output(msg: Dict[str, Any]) -> None:
        kind = msg["msg_type"]
        if kind in ("stream", "execute_result", "display_data", "error"):
            outputs.append((kind, msg["content"]))

    def on_stdin(msg: Dict[str, Any]) -> None:
        outputs.append(("input_request", msg["content"]))
        kc.input(stdin_reply if stdin_reply is not None else "")

    reply = kc.execute_interactive(code, timeout=timeout, output_hook=on_output,
                                   stdin_hook=on_stdin, allow_stdin=stdin_reply is not None)
    return reply["content"], outputs


def printed(kc: BlockingKernelClient, code: str, timeout: float = 60) -> str:
    """What running ``code`` printed, its stream messages joined (under load ipykernel may flush a
    line and its newline as two messages)."""
    return "".join(out["text"] for kind, out in run_cell(kc, code, timeout)[1] if kind == "stream")


def shell_reply(kc: BlockingKernelClient, msg_id: str, timeout: float = 20) -> Dict[str, Any]:
    """The shell reply to ``msg_id``, skipping stale ones (wait_for_ready may leave a kernel_info_reply)."""
    deadline = time.monotonic() + timeout
    while True:
        reply: Dict[str, Any] = kc.get_shell_msg(timeout=max(0.01, deadline - time.monotonic()))
        if reply["parent_header"].get("msg_id") == msg_id:
            return reply


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie has finished), read from /proc by PID."""
    stat = read_stat(pid)
    return stat is not None and stat[1] != "Z"


def live_descendants(pid: int) -> List[int]:
    return [p for p in descendants(pid) if alive(p)]
