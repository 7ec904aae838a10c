"""Restart in place: Jupyter's restart re-attaches to the agent, through our ControlMaster."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.kernels import proxy_argv, run_cell, running_kernel


def test_restart_in_place_opens_no_new_login_and_gives_a_fresh_kernel(sshd: Any, tmp_path: Path) -> None:
    # How fast it is lives in the benchmark (python -m bench: "restart -> kernel_info_reply").
    with running_kernel(proxy_argv(sshd), tmp_path) as (km, kc):
        run_cell(kc, "state = 1")
        logins = sshd.login_count()
        for _ in range(3):
            km.restart_kernel(now=False)
            kc.wait_for_ready(timeout=60)
            reply = run_cell(kc, "state")[0]
            assert reply["status"] == "error" and reply["ename"] == "NameError"  # a fresh kernel
            run_cell(kc, "state = 1")
        assert sshd.login_count() == logins  # re-attached through our ssh ControlMaster
