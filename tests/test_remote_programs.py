"""The programs sent to the remote Python (proxykernel/remote_*.py): the text sent is their code, it
stays small, and a Python too old for proxykernel answers with one line, not a traceback."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from proxykernel import (remote_batch, remote_bootstrap, remote_checks, remote_discover, remote_job, remote_probe,
                         remote_ps)
from proxykernel.bootstrap import agent_bundle, remote_command, remote_program
from tests.userland import old_python

PROGRAMS = [remote_bootstrap, remote_probe, remote_discover, remote_batch, remote_job, remote_ps]
CHECKED = [remote_bootstrap, remote_probe, remote_batch, remote_job, remote_ps]  # those that refuse a Python too old


def _code(tree: ast.Module) -> str:
    """The tree without its string statements (docstrings, wherever the concatenation put them)."""
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list):
            node.body = [statement for statement in body if not (  # type: ignore[attr-defined]
                isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant)
                and isinstance(statement.value.value, str))]
    return ast.dump(tree)


@pytest.mark.parametrize("program", PROGRAMS, ids=lambda m: m.__name__)
def test_the_text_sent_is_the_checks_then_the_program(program: ModuleType) -> None:
    sources = [Path(str(module.__file__)).read_text() for module in (remote_checks, program)]
    own = [line for line in sources[1].splitlines() if line.startswith("from proxykernel.remote_checks import ")]
    assert len(own) == 1
    whole = sources[0] + sources[1].replace(own[0], "")
    sent = remote_program(program)
    assert _code(ast.parse(sent)) == _code(ast.parse(whole))
    assert "proxykernel.remote_checks" not in sent and '"""' not in sent
    assert not [line for line in sent.splitlines() if not line.strip() or line.lstrip().startswith("#")]


def test_the_bootstrap_command_line_stays_small() -> None:
    # It is on ssh's command line at every (re)connection; Linux allows 128 KiB for one argument.
    # A single quote in the text costs 17 bytes there, being quoted twice (sh -c inside sh -c).
    command = remote_command("/opt/conda/envs/analysis/bin/python", agent_bundle(), True,
                             ["--id", "0" * 32, "--linger", "3600", "--buffer", "67108864"],
                             "module load cuda; conda activate analysis", "~/projects/analysis")
    assert len(command) < 4096
    assert all("'" not in remote_program(program) for program in PROGRAMS)


@pytest.mark.parametrize("program", CHECKED, ids=lambda m: m.__name__)
@pytest.mark.parametrize("minor", ["2.7", "3.6", "3.7"])
def test_an_old_python_answers_one_line(program: ModuleType, minor: str) -> None:
    python = old_python(minor)
    result = subprocess.run([python, "-c", remote_program(program), agent_bundle().sha256], input=b"",
                            capture_output=True, timeout=30)
    assert (result.returncode, result.stderr) == (3, b"")
    assert result.stdout == b"\nPXKBOOT ERR old-python %s %s\n" % (minor.encode(), python.encode())


def test_discover_still_lists_from_python_3_6() -> None:
    python = old_python("3.6")
    result = subprocess.run([python, "-c", remote_program(remote_discover), sys.executable], input=b"",
                            capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(b"\nPXKBOOT INFO ")
