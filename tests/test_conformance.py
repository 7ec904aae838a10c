"""Jupyter's kernel conformance suite (``jupyter_kernel_test``) through the proxy: once for a kernel
on the remote host, once for a kernel in a Slurm job on a compute node (issue 13), each against the
test sshd (``AllowTcpForwarding no``), as it runs against a local ipykernel."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, List

import jupyter_kernel_test
import pytest

from proxykernel.testing.slurm import SlurmCluster
from tests.kernels import READY_TIMEOUT, kernel_manager, proxy_argv


class PythonKernelTests(jupyter_kernel_test.KernelTests):
    """What ipykernel answers, as its own conformance test describes it; the kernel is started by a
    class fixture of each subclass (``started``), not by ``setUpClass``."""

    __test__ = False  # a base: its subclasses, which start the kernel, are the tests
    language_name = "python"
    file_extension = ".py"
    code_hello_world = "print('hello, world')"
    code_stderr = "import sys; print('test', file=sys.stderr)"
    completion_samples = [{"text": "zi", "matches": {"zip"}}]
    complete_code_samples = ["1", "print('hello, world')", "def f(x):\n  return x*2\n\n\n"]
    incomplete_code_samples = ["print('''hello", "def f(x):\n  x*2"]
    invalid_code_samples = ["import = 7q"]
    code_page_something = "zip?"
    code_generate_error = "raise ValueError('a test error')"
    code_execute_result = [{"code": "1+2+3", "result": "6"}, {"code": "[n*n for n in range(1, 4)]",
                                                              "result": "[1, 4, 9]"}]
    code_display_data = [{"code": "from IPython.display import HTML, display; display(HTML('<b>test</b>'))",
                          "mime": "text/html"}]
    code_history_pattern = "1?2*"
    # Not "range": a local ipykernel 7 fails jupyter_kernel_test's range check too (tried here).
    supported_history_operations = ("tail", "search")
    code_inspect_sample = "zip"
    code_clear_output = "from IPython.display import clear_output; clear_output()"

    @classmethod
    def setUpClass(cls) -> None:
        """Started by ``started`` instead, which has the test sshd."""

    @classmethod
    def tearDownClass(cls) -> None:
        """Stopped by ``started``."""


def _start(request: pytest.FixtureRequest, argv: List[str], spec_dir: Path) -> Iterator[None]:
    km = kernel_manager(argv, spec_dir)
    km.start_kernel()
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=READY_TIMEOUT)
        request.cls.km, request.cls.kc = km, kc
        yield
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=False)
        km.cleanup_resources()


class TestProxiedKernelConformance(PythonKernelTests):
    """A kernel on the remote host (the test sshd)."""

    __test__ = True

    @pytest.fixture(autouse=True, scope="class")
    def started(self, request: pytest.FixtureRequest, sshd: Any,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
        yield from _start(request, proxy_argv(sshd), tmp_path_factory.mktemp("spec"))


class TestSlurmKernelConformance(PythonKernelTests):
    """A kernel in a Slurm job, reached through the login host (the test sshd) with srun --overlap."""

    __test__ = True

    @pytest.fixture(autouse=True, scope="class")
    def started(self, request: pytest.FixtureRequest, sshd: Any, slurm: SlurmCluster,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
        argv = proxy_argv(sshd, extra=["--slurm=--time=10", "--pre-command", slurm.pre_command])
        yield from _start(request, argv, tmp_path_factory.mktemp("spec"))
