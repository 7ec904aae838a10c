"""``proxykernel demo`` runs its notebook through a proxied kernel and leaves nothing behind."""
from __future__ import annotations

import os
import re
from pathlib import Path

from tests.userland import proxykernel, user_env


def test_demo_runs_and_cleans_up(tmp_path: Path) -> None:
    result = proxykernel(user_env(tmp_path), "demo")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "hostname      : %s" % os.uname().nodename in out
    assert re.search(r"SSH_CONNECTION: 127\.0\.0\.1 \d+ 127\.0\.0\.1 \d+", out)  # it came in over ssh
    assert "PXK_DEMO      : set in the kernelspec" in out
    assert "Out[2]: 333332833333500000" in out
    assert "Out[3]: *rich output* travels too" in out
    assert re.search(r"kernel ready in \d+\.\d\d s", out)
    # The user's log, from the proxy: the agent travelled inside the stream (its cache was private).
    assert "agent sent (" in result.stderr and "kernel ready in" in result.stderr
    made = re.findall(r"keys in (\S+)", out) + re.findall(r"kernelspec \S+ in (\S+)", out)
    assert len(made) == 2 and not any(os.path.exists(path) for path in made)
    assert "some paths remain" not in out
