"""The proxied kernel in JupyterLab, as a user sees it: headless Chromium opens a notebook in a real
``jupyter lab``, whose kernelspec runs ``python -m proxykernel`` through the test sshd; cells are
typed and run with Shift+Enter (proxykernel/testing/labpage.py, .../jupyterlab.py).

Issue 11, done-when 2: a variable outlives a Jupyter server killed by SIGKILL, because the next
server's start for the same notebook reattaches to the kernel that lingers on the remote.
Select these with ``-m browser``; each takes 20-50 s on a busy 2-core machine.
"""
from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, List

import pytest

from proxykernel.manage import kernel_name
from proxykernel.testing.jupyterlab import JupyterHome, JupyterServer
from proxykernel.testing.labpage import CHROMIUM, LabNotebook, chromium
from tests.kernels import alive
from tests.test_reconnect import host_pid
from tests.userland import kernels_on, proxykernel, user_env

# Collected with the rest of the suite: a missing browser is a setup error, not a skip.
assert os.access(CHROMIUM, os.X_OK), "no %s: run scripts/setup-test-env" % CHROMIUM

pytestmark = [pytest.mark.browser, pytest.mark.slow]

DISPLAY_NAME = "SSH lab test"
KERNEL_NAME = kernel_name(DISPLAY_NAME)  # what add_kernel names it
STOP_TIMEOUT = 15.0  # seconds for a SIGTERM'd Jupyter's kernel to end on the remote
LINGER = 60  # the detached kernel's life: long enough for a second server to start on a busy machine

Servers = Callable[[], JupyterServer]


@pytest.fixture
def lab_home(sshd: Any, tmp_path: Path) -> JupyterHome:
    """Private Jupyter directories with our kernel registered as ``proxykernel add`` would."""
    home = JupyterHome(tmp_path / "jupyter")
    assert home.add_proxied_kernel(DISPLAY_NAME, sshd.alias, sys.executable, str(sshd.config_path),
                                   extra=["--linger", str(LINGER)]) == KERNEL_NAME
    return home


@pytest.fixture
def servers(lab_home: JupyterHome) -> Iterator[Servers]:
    """``servers()`` starts one more ``jupyter lab`` on the test's home; all stopped by PID at the end
    (SIGTERM, which shuts their kernels down; SIGKILL if that takes too long)."""
    started: List[JupyterServer] = []

    def start() -> JupyterServer:
        started.append(JupyterServer(lab_home))
        return started[-1].start()

    yield start
    for server in reversed(started):
        server.stop(signal.SIGTERM)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    with chromium(tmp_path / "chromium") as context:
        yield context


def open_notebook(browser: Any, server: JupyterServer, name: str) -> LabNotebook:
    began = time.monotonic()
    notebook = LabNotebook.open(browser, server.notebook_url(name))
    waited = notebook.wait_for_kernel(DISPLAY_NAME)
    print("server up in %.1f s; Lab shown in %.1f s, kernel idle %.1f s later"
          % (server.started_in, time.monotonic() - began - waited, waited))
    return notebook


def kernel_of(server: JupyterServer, name: str) -> str:
    """The kernelspec name of the session the server holds for notebook ``name``."""
    sessions = [s for s in server.api("api/sessions") if s["path"] == name]
    assert len(sessions) == 1, sessions
    return str(sessions[0]["kernel"]["name"])


def test_a_cell_runs_in_jupyterlab_on_the_proxied_kernel(lab_home: JupyterHome, servers: Servers,
                                                         browser: Any) -> None:
    name = "first.ipynb"
    # Saved with code in its last cell: the driver adds a cell below to type into.
    lab_home.write_notebook(name, KERNEL_NAME, DISPLAY_NAME, cells=["'not run'"])
    server = servers()
    notebook = open_notebook(browser, server, name)
    began = time.monotonic()
    assert notebook.run("print(1+1)") == "2"
    print("cell ran in %.2f s" % (time.monotonic() - began))
    assert notebook.cells().count() == 3  # the saved one, ours, and the one Shift+Enter added
    assert kernel_of(server, name) == KERNEL_NAME


def test_a_variable_outlives_a_killed_jupyter_server(lab_home: JupyterHome, servers: Servers, browser: Any,
                                                     sshd: Any) -> None:
    name = "analysis.ipynb"
    lab_home.write_notebook(name, KERNEL_NAME, DISPLAY_NAME)
    first = servers()
    notebook = open_notebook(browser, first, name)
    pid = int(notebook.run("x = 42; import os; os.getpid()"))
    kernel = host_pid(sshd, pid)

    first.stop(signal.SIGKILL)  # a crash, or the OOM killer: no shutdown reaches the kernel
    notebook.close()
    assert alive(kernel), "the remote kernel must linger after its Jupyter died"

    second = servers()  # Jupyter started again, on the same notebooks
    notebook = open_notebook(browser, second, name)
    assert notebook.run("print(x, os.getpid())") == "42 %d" % pid
    assert "reattached to the kernel of %s" % (lab_home.root / name) in second.log()

    second.stop(signal.SIGTERM)  # a clean stop shuts the kernel down: nothing lingers
    began = time.monotonic()
    while alive(kernel):
        assert time.monotonic() - began < STOP_TIMEOUT, "the kernel outlived a clean stop of Jupyter"
        time.sleep(0.05)


def test_a_persistent_kernel_outlives_a_clean_stop_of_jupyter(lab_home: JupyterHome, servers: Servers,
                                                              browser: Any, sshd: Any, tmp_path: Path) -> None:
    """Issue 11, done-when 3, as a user does it: --persistent, Jupyter stopped cleanly (SIGTERM, which
    shuts its kernels down), started again: the same kernel; 'proxykernel ps' lists it detached with
    its session, and 'proxykernel stop' ends it."""
    display = "SSH lab persistent"
    spec = lab_home.add_proxied_kernel(display, sshd.alias, sys.executable, str(sshd.config_path),
                                       extra=["--persistent", "--persistent-linger", "300"])
    name = "keep.ipynb"
    session = str(lab_home.root / name)  # what Jupyter Server passes as JPY_SESSION_NAME
    lab_home.write_notebook(name, spec, display)
    first = servers()
    notebook = LabNotebook.open(browser, first.notebook_url(name))
    notebook.wait_for_kernel(display)
    pid = int(notebook.run("y = 7; import os; os.getpid()"))
    kernel = host_pid(sshd, pid)
    first.stop(signal.SIGTERM)
    notebook.close()
    assert "shutdown requested: detaching (--persistent)" in first.log()
    assert alive(kernel), "a persistent kernel outlives a clean stop of Jupyter"
    listed = [k for k in kernels_on(sshd, tmp_path) if k["session"] == session]
    assert [(k["attached"], k["persistent"]) for k in listed] == [(False, True)], listed

    second = servers()
    notebook = LabNotebook.open(browser, second.notebook_url(name))
    notebook.wait_for_kernel(display)
    assert notebook.run("print(y, os.getpid())") == "7 %d" % pid
    second.stop(signal.SIGTERM)
    notebook.close()
    assert alive(kernel)
    stopped = proxykernel(user_env(tmp_path), "stop", sshd.alias, "--ssh-config", str(sshd.config_path), session)
    assert stopped.returncode == 0, stopped.stderr
    began = time.monotonic()
    while alive(kernel):
        assert time.monotonic() - began < STOP_TIMEOUT, "'proxykernel stop' did not end the kernel"
        time.sleep(0.05)
    assert not [k for k in kernels_on(sshd, tmp_path) if k["session"] == session]

