"""The agent runs on the oldest and the newest Python the machine offers (venvs made by setup-test-env)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.kernels import proxy_argv, run_cell, running_kernel

VENVS = Path(__file__).resolve().parent.parent / ".venvs"


@pytest.mark.parametrize("name, version", [("py38", "3.8"), ("py313", "3.13")])
def test_kernel_on_remote_python(sshd: Any, tmp_path: Path, name: str, version: str) -> None:
    python = VENVS / name / "bin" / "python"
    assert python.exists(), "%s is missing: run scripts/setup-test-env" % python
    with running_kernel(proxy_argv(sshd, str(python)), tmp_path) as (_, kc):
        reply, outputs = run_cell(kc, "import sys; print('%d.%d' % sys.version_info[:2])")
        assert reply["status"] == "ok"
        assert outputs == [("stream", {"name": "stdout", "text": version + "\n"})]
