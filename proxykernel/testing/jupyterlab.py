"""A private JupyterLab for tests: its own Jupyter directories and kernelspecs, and servers started
and stopped by PID.

    home = JupyterHome(tmp_path / "jupyter")
    name = home.add_proxied_kernel("SSH lab test", host, python, ssh_config)
    home.write_notebook("analysis.ipynb", name)
    with JupyterServer(home) as server:        # jupyter lab on 127.0.0.1 and a free port
        server.url("lab/tree/analysis.ipynb")  # what a browser opens (with the token)
    server.stop(signal.SIGKILL)                # a crash; a second server on the same home
                                               # is Jupyter started again

Nothing here reads the user's ~/.jupyter: every Jupyter directory lives under the home, and the
token is in the home's config file (0600), not on a command line. tests/test_lab.py drives it
with headless Chromium (``labpage``).
"""
from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from proxykernel.manage import add_kernel
from proxykernel.testing.sshd import free_port

__all__ = ["JupyterHome", "JupyterServer", "START_TIMEOUT"]

START_TIMEOUT = 60.0  # seconds until the server answers /api/status (about 8 s on a busy 2-core machine)
STOP_TIMEOUT = 15.0  # seconds a SIGTERM'd server gets to shut its kernels down before SIGKILL
POLL_INTERVAL = 0.1


def _write_json(path: Path, data: Dict[str, Any], mode: int = 0o600) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.write_text(json.dumps(data, indent=1) + "\n")
    path.chmod(mode)


class JupyterHome:
    """The Jupyter directories of one test "user" (data, config, runtime, path, the notebook root),
    shared by every server a test starts on it, as a real restart would share them.

    Tests make one per test, register kernels and write notebooks, then start ``JupyterServer``s.
    """

    def __init__(self, base: Path) -> None:
        self.base = base
        self.root = base / "notebooks"
        self.data_dir, self.config_dir = base / "data", base / "config"
        # Kernelspecs go to PREFIX/share/jupyter/kernels (add_kernel's prefix=), which JUPYTER_PATH names.
        self.prefix = base / "prefix"
        self.runtime_dir, self.path_dir = base / "runtime", self.prefix / "share" / "jupyter"
        for directory in (self.root, self.data_dir, self.config_dir, self.runtime_dir, self.path_dir):
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.token = secrets.token_hex(24)
        self._configure()

    def _configure(self) -> None:
        """The server's and Lab's settings: quiet, local, nothing fetched from the network."""
        _write_json(self.config_dir / "jupyter_server_config.json", {
            "IdentityProvider": {"token": self.token},
            "ServerApp": {"root_dir": str(self.root), "open_browser": False,
                          "allow_root": os.geteuid() == 0,  # CI runs as root
                          "port_retries": 0,  # a port taken meanwhile is an error, not another port
                          # Language servers and terminals: not used, and slow to load.
                          "jpserver_extensions": {"jupyter_lsp": False, "jupyter_server_terminals": False}},
        })
        # The build check runs a slow scan in the server at every page load; a pip install needs none.
        # The language-server client would ask the disabled jupyter_lsp (404s in the log).
        _write_json(self.config_dir / "labconfig" / "page_config.json",
                    {"buildCheck": False, "buildAvailable": False,
                     "disabledExtensions": {"@jupyterlab/lsp-extension": True}})
        _write_json(self.config_dir / "lab" / "user-settings" / "@jupyterlab" / "apputils-extension" /
                    "notification.jupyterlab-settings", {"fetchNews": "false", "checkForUpdates": False})

    def env(self) -> Dict[str, str]:
        """Our environment with every Jupyter directory in the home; CI=true, nothing prompts."""
        return dict(os.environ, CI="true", JUPYTER_PLATFORM_DIRS="0",
                    JUPYTER_DATA_DIR=str(self.data_dir), JUPYTER_CONFIG_DIR=str(self.config_dir),
                    JUPYTER_RUNTIME_DIR=str(self.runtime_dir), JUPYTER_PATH=str(self.path_dir))

    def add_proxied_kernel(self, display_name: str, host: str, python: str, ssh_config: str,
                           extra: Sequence[str] = ()) -> str:
        """Register a kernelspec as ``proxykernel add`` does (``manage.add_kernel``), under the home's
        JUPYTER_PATH; returns its name."""
        return add_kernel(host=host, display_name=display_name, local_python_path=sys.executable,
                          remote_python_path=python, ssh_config=ssh_config, extra=extra, prefix=str(self.prefix))

    def write_notebook(self, name: str, kernel_name: str, display_name: str = "",
                       cells: Sequence[str] = ("",)) -> Path:
        """An nbformat 4 notebook of code ``cells`` (one empty cell by default) whose metadata asks
        for kernel ``kernel_name``, as Lab would save it."""
        notebook = {"nbformat": 4, "nbformat_minor": 5,
                    "metadata": {"kernelspec": {"name": kernel_name, "display_name": display_name or kernel_name,
                                                "language": "python"}},
                    "cells": [{"cell_type": "code", "id": "cell-%d" % i, "metadata": {}, "source": source,
                               "outputs": [], "execution_count": None} for i, source in enumerate(cells)]}
        path = self.root / name
        _write_json(path, notebook, mode=0o644)
        return path


class JupyterServer:
    """One ``jupyter lab`` process on 127.0.0.1 for a ``JupyterHome``; tests start it, open its
    URLs in a browser, and stop it by PID with the signal they mean (SIGKILL: a crash; SIGTERM: a
    clean stop, which shuts its kernels down)."""

    def __init__(self, home: JupyterHome, start_timeout: float = START_TIMEOUT) -> None:
        self.home = home
        self.start_timeout = start_timeout
        self.port = 0
        self.process: Optional["subprocess.Popen[bytes]"] = None
        self.log_path = home.base / "server.log"
        self.started_in = 0.0  # seconds from the start until /api/status answered
        self._log_start = 0

    @property
    def pid(self) -> int:
        assert self.process is not None, "the server was not started"
        return self.process.pid

    def start(self) -> JupyterServer:
        """Run ``python -m jupyterlab`` and wait (at most start_timeout) until it answers; raises
        RuntimeError with the log's tail if it exits or does not answer in time."""
        self.port = free_port()
        began = time.monotonic()
        with open(self.log_path, "ab") as log:
            self._log_start = log.tell()  # servers of one home share the log; this one's part starts here
            log.write(b"--- server on port %d\n" % self.port)
            log.flush()
            self.process = subprocess.Popen(
                [sys.executable, "-m", "jupyterlab", "--port=%d" % self.port, "--ip=127.0.0.1"],
                env=self.home.env(), cwd=str(self.home.root), stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            while not self._answers():
                if self.process.poll() is not None:
                    raise RuntimeError("jupyter lab exited with %s:\n%s" % (self.process.returncode, self.log_tail()))
                if time.monotonic() - began > self.start_timeout:
                    raise RuntimeError("jupyter lab did not answer within %g s:\n%s"
                                       % (self.start_timeout, self.log_tail()))
                time.sleep(POLL_INTERVAL)
        except BaseException:
            self.stop(signal.SIGKILL)
            raise
        self.started_in = time.monotonic() - began
        return self

    def _answers(self) -> bool:
        try:
            self.api("api/status", timeout=1.0)
            return True
        except (OSError, ValueError):  # refused, reset, timed out, or a half-written reply
            return False

    def url(self, path: str = "lab", query: str = "") -> str:
        """A URL a browser opens, with the token (Lab then keeps it in a cookie)."""
        return "http://127.0.0.1:%d/%s?%stoken=%s" % (self.port, path.lstrip("/"), query + "&" if query else "",
                                                     self.home.token)

    def notebook_url(self, name: str) -> str:
        """Lab with notebook ``name`` (a path under the home's root) open, and only that one: ``reset``
        drops the tabs that Lab restores from the last session's workspace."""
        return self.url("lab/tree/" + name, query="reset")

    def api(self, path: str, timeout: float = 10.0) -> Any:
        """GET a REST path (``api/sessions``...) with the token in a header; the decoded JSON."""
        request = urllib.request.Request("http://127.0.0.1:%d/%s" % (self.port, path.lstrip("/")),
                                         headers={"Authorization": "token " + self.home.token})
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            return json.loads(reply.read())

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> Optional[int]:
        """Signal the server by PID and wait for it; after SIGTERM, SIGKILL if it is not gone within
        ``timeout``. Returns its exit status (None if never started). Safe to call twice."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            os.kill(self.process.pid, sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait()
        return self.process.returncode

    def log(self) -> str:
        """What this server (and the proxies it started, on their stderr) wrote to its log."""
        try:
            with open(self.log_path, "rb") as log:
                log.seek(self._log_start)
                return log.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:]) or "(empty log)"

    def __enter__(self) -> JupyterServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
