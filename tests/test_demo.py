"""``proxykernel demo`` runs its notebook through a proxied kernel and leaves nothing behind."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tests.userland import one_error, proxykernel, user_env

# Put first on PYTHONPATH, this makes ``import MODULE`` fail in every Python started with that
# environment, as in an environment where the package was never installed.
HIDE = """
import sys

class _Hidden:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == {module!r}:
            raise ModuleNotFoundError("No module named %r" % name, name=name)
        return None

sys.meta_path.insert(0, _Hidden())
"""


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


@pytest.mark.parametrize("module", ["ipykernel", "nbclient", "nbformat"])
def test_demo_without_its_extra_says_so_in_one_sentence(tmp_path: Path, module: str) -> None:
    # Found in an environment with nbconvert (so nbclient and nbformat) but no ipykernel: the demo
    # printed the proxy's sentence, then nbclient's traceback.
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(HIDE.format(module=module))
    env = user_env(tmp_path)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(hook), env.get("PYTHONPATH")]))
    line = one_error(proxykernel(env, "demo", timeout=60))
    assert line == ("proxykernel demo: error: No module named '%s': install the demo's extra with "
                    "pip install 'proxykernel[demo]'" % module)
