"""``python -m proxykernel.manage`` and ``add_kernel`` keep ssh_ipykernel's flags, keywords, names and argv."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from tests.userland import kernelspec, one_error, run, user_env

EXAMPLE_NAME = "ssh__ssh_btest_demo_abc_"


def _expected_argv(local_python: str, *sudo: str) -> list:
    return [local_python, "-m", "proxykernel", "--host", "btest", "--python", "/opt/anaconda/envs/python36",
            "--timeout", "10", "--env", "VAR1=demo VAR2=abc", *sudo, "-f", "{connection_file}"]


def test_manage_module_writes_the_example_kernelspec(tmp_path: Path) -> None:
    env = user_env(tmp_path)
    result = run([sys.executable, "-m", "proxykernel.manage", "--display-name", "SSH btest:demo(abc)",
                  "--host", "btest", "--python", "/opt/anaconda/envs/python36",
                  "--env", "VAR1=demo VAR2=abc", "--timeout", "10"], env)
    assert result.returncode == 0, result.stderr
    spec = kernelspec(env, EXAMPLE_NAME)  # what `jupyter kernelspec list` shows
    assert spec["spec"]["argv"] == _expected_argv(sys.executable)
    assert spec["spec"]["display_name"] == "SSH btest:demo(abc)"
    assert spec["spec"]["language"] == "python"
    assert Path(spec["resource_dir"]).parent == tmp_path / "jupyter" / "kernels"


def test_add_kernel_with_ssh_ipykernel_keywords(tmp_path: Path) -> None:
    env = user_env(tmp_path)
    code = ("import proxykernel.manage as m\n"
            "for sudo in (False, True):\n"
            "    print(m.add_kernel(host='btest', display_name='SSH btest:demo(abc)' + ('x' if sudo else ''),\n"
            "        local_python_path='/opt/miniconda/envs/test36/bin/python',\n"
            "        remote_python_path='/opt/anaconda/envs/python36', sudo=sudo,\n"
            "        env='VAR1=demo VAR2=abc', timeout=10))\n")
    result = run([sys.executable, "-c", code], env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [EXAMPLE_NAME, EXAMPLE_NAME + "x"]
    assert kernelspec(env, EXAMPLE_NAME)["spec"]["argv"] == _expected_argv("/opt/miniconda/envs/test36/bin/python")
    # ssh_ipykernel puts -s just before -f.
    assert kernelspec(env, EXAMPLE_NAME + "x")["spec"]["argv"] == _expected_argv(
        "/opt/miniconda/envs/test36/bin/python", "-s")
    kernel_json = json.loads((tmp_path / "jupyter" / "kernels" / EXAMPLE_NAME / "kernel.json").read_text())
    assert kernel_json["interrupt_mode"] == "signal"


def test_manage_bad_env_is_one_sentence(tmp_path: Path) -> None:
    result = run([sys.executable, "-m", "proxykernel.manage", "--host", "btest", "--python", "python3",
                  "--env", "VAR1=demo oops"], user_env(tmp_path))
    assert "--env expects VAR=value pairs, not 'oops'" in one_error(result)
    assert not (tmp_path / "jupyter" / "kernels").exists()
