"""Start a proxied kernel from Python, as Jupyter would through a kernelspec.

    with proxykernel.start_kernel("btest", python="/opt/conda/envs/x") as (km, kc):
        kc.execute_interactive("import socket; print(socket.gethostname())")

    async with await proxykernel.async_start_kernel("btest", python="python3") as (km, kc):
        await kc.execute_interactive("1 + 1")

The kernelspec is held in memory (nothing is written to a Jupyter path); its argv is the one
``proxykernel add`` would store (proxykernel/manage.py ``kernel_argv``), so the kernel is a real
``python -m proxykernel`` process started by jupyter_client's own manager.
"""
from __future__ import annotations

import subprocess
import sys
import threading
from typing import IO, Any, Dict, NamedTuple, Optional

from jupyter_client.asynchronous.client import AsyncKernelClient
from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.kernelspec import KernelSpec, KernelSpecManager
from jupyter_client.manager import AsyncKernelManager, KernelManager

from proxykernel.manage import kernel_argv

__all__ = ["start_kernel", "async_start_kernel", "RemoteKernel", "AsyncRemoteKernel", "KernelStartError"]

SPEC_NAME = "proxykernel-api"
READY_MARGIN = 10.0  # seconds wait_for_ready allows beyond the proxy's own --timeout


class KernelStartError(RuntimeError):
    """The kernel did not become ready; ``str(error)`` is the proxy's sentence for why."""


class _OneSpec(KernelSpecManager):
    """A kernelspec manager that knows one in-memory kernelspec (and the installed ones)."""

    def __init__(self, spec: KernelSpec, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.spec = spec

    def get_kernel_spec(self, kernel_name: str, *args: Any, **kwargs: Any) -> KernelSpec:
        if kernel_name == SPEC_NAME:
            return self.spec
        return super().get_kernel_spec(kernel_name, *args, **kwargs)


def _spec_manager(host: str, python: str, timeout: float, options: Any) -> _OneSpec:
    extra = ["--log-level", options.pop("log_level")] if "log_level" in options else []
    argv = kernel_argv(host, python, timeout=timeout, extra=extra, **options)
    return _OneSpec(KernelSpec(argv=argv, display_name="SSH %s" % host, language="python",
                               interrupt_mode="signal"))


class _StderrTee:
    """Copies the proxy's log lines to our stderr and keeps its last ERROR sentence."""

    def __init__(self, stream: Optional[IO[bytes]]) -> None:
        self.error: Optional[str] = None
        self.thread = threading.Thread(target=self._copy, args=(stream,), daemon=True)
        self.thread.start()

    def _copy(self, stream: Optional[IO[bytes]]) -> None:
        if stream is None:
            return
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace")
            sys.stderr.write(line)
            if "[proxykernel ERROR] " in line:
                self.error = line.split("[proxykernel ERROR] ", 1)[1].strip()
        stream.close()

    def failure(self, host: str, error: Exception) -> KernelStartError:
        self.thread.join(2.0)  # the proxy has exited or is about to: let its last line arrive
        return KernelStartError(self.error or "the kernel on %s did not become ready: %s" % (host, error))


class RemoteKernel(NamedTuple):
    """A started, ready kernel: ``(manager, client)``; leaving the ``with`` block shuts it down."""
    manager: KernelManager
    client: BlockingKernelClient

    def __enter__(self) -> "RemoteKernel":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()

    def shutdown(self) -> None:
        """Stop the client's channels, then the kernel, the proxy and the remote agent."""
        self.client.stop_channels()
        if self.manager.has_kernel:
            self.manager.shutdown_kernel(now=False)


class AsyncRemoteKernel(NamedTuple):
    """The async twin of RemoteKernel: ``async with``."""
    manager: AsyncKernelManager
    client: AsyncKernelClient

    async def __aenter__(self) -> "AsyncRemoteKernel":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.shutdown()

    async def shutdown(self) -> None:
        self.client.stop_channels()
        if self.manager.has_kernel:
            await self.manager.shutdown_kernel(now=False)


def start_kernel(host: str, python: str = "python3", timeout: float = 30, **options: Any) -> RemoteKernel:
    """Start a kernel on ``host`` and return it once it answers.

    ``options`` are ``proxykernel add``'s: env (dict or "A=1 B=2"), sudo, workdir, pre_command,
    ssh_options, ssh_config, log_level, slurm (sbatch options: ``host`` is a login host and the
    kernel runs in a Slurm job), queue_timeout. Raises KernelStartError with the proxy's sentence.
    """
    km = KernelManager(kernel_name=SPEC_NAME,
                       kernel_spec_manager=_spec_manager(host, python, timeout, dict(options)))
    km.start_kernel(stderr=subprocess.PIPE)
    tee = _StderrTee(_proxy_stderr(km))
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=_ready_wait(timeout, options))
    except RuntimeError as error:
        kernel = RemoteKernel(km, kc)
        kernel.shutdown()
        raise tee.failure(host, error) from None
    return RemoteKernel(km, kc)


async def async_start_kernel(host: str, python: str = "python3", timeout: float = 30,
                             **options: Any) -> AsyncRemoteKernel:
    """The async twin of start_kernel (AsyncKernelManager, AsyncKernelClient)."""
    km = AsyncKernelManager(kernel_name=SPEC_NAME,
                            kernel_spec_manager=_spec_manager(host, python, timeout, dict(options)))
    await km.start_kernel(stderr=subprocess.PIPE)
    tee = _StderrTee(_proxy_stderr(km))
    kc = km.client()
    kc.start_channels()
    try:
        await kc.wait_for_ready(timeout=_ready_wait(timeout, options))
    except RuntimeError as error:
        await AsyncRemoteKernel(km, kc).shutdown()
        raise tee.failure(host, error) from None
    return AsyncRemoteKernel(km, kc)


def _ready_wait(timeout: float, options: Dict[str, Any]) -> Optional[float]:
    """How long a start may take: ``timeout``, plus the time a batch job may wait in the queue
    (None: as long as it waits; the proxy's own exit ends the wait sooner if it fails)."""
    if options.get("slurm") is None:
        return timeout + READY_MARGIN
    queue = options.get("queue_timeout")
    return None if queue is None else queue + timeout + READY_MARGIN


def _proxy_stderr(km: Any) -> Optional[IO[bytes]]:
    process = getattr(km.provisioner, "process", None)  # LocalProvisioner's Popen
    return getattr(process, "stderr", None)
