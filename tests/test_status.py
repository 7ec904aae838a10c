"""What ``proxykernel ps`` and ``stop`` are made of, without ssh or kernels: the daemon's status file
(remote_agent/status.py), the choice of the kernel a name means (listing.find), the table and the
sentences (proxykernel/ps.py), and the remote program run on the oldest Python the agent supports."""
from __future__ import annotations

import ast
import base64
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
from argparse import Namespace
from pathlib import Path
from typing import Any, Dict, List

import pytest

from proxykernel import ps, remote_ps
from proxykernel.bootstrap import remote_program
from proxykernel.probe import ProbeFailed
from remote_agent import jobs
from remote_agent.listing import ALIVE, daemon_state, find, list_kernels
from remote_agent.status import StatusFile, read_statuses

ROOT = Path(__file__).resolve().parent.parent
NOW = 1_700_000_000.0  # the remote's clock in the replies below
ID = "3f2a1b4c5d6e7f8091a2b3c4"


def kernel(**fields: Any) -> Dict[str, Any]:
    """A kernel of a ``ps`` reply, as listing.list_kernels makes it."""
    base = {"format": 1, "id": ID, "agent_pid": 4700, "session": "analysis.ipynb", "persistent": False,
            "kernel_pid": 4711, "python": "/opt/conda/bin/python", "started": NOW - 7500, "attached": True,
            "since": NOW - 7500, "linger": 3600.0, "job": None, "rss": 812 << 20, "lingers_until": None}
    base.update(fields)
    return base


def test_a_status_file_is_private_has_no_secret_and_is_written_only_on_a_change(tmp_path: Path) -> None:
    path = tmp_path / (ID + ".json")
    status = StatusFile(str(path), Namespace(id=ID, linger=60.0))
    config = {"key": "the-session-key", "session": "a.ipynb", "persistent": True, "env": {"TOKEN": "x"}}
    status.update((4711, NOW), config, True, NOW)
    written = json.loads(path.read_text())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "the-session-key" not in path.read_text() and "TOKEN" not in path.read_text()
    assert written == {"format": 1, "id": ID, "agent_pid": os.getpid(), "session": "a.ipynb", "persistent": True,
                       "kernel_pid": 4711, "python": written["python"], "started": NOW, "attached": True,
                       "since": NOW, "linger": 60.0, "job": None}
    path.unlink()
    status.update((4711, NOW), config, True, NOW + 5)  # nothing shown changed: not rewritten
    assert not path.exists()
    status.update((4711, NOW), config, False, NOW + 10)  # the proxy went: detached since then
    assert (json.loads(path.read_text())["attached"], json.loads(path.read_text())["since"]) == (False, NOW + 10)
    status.update((4712, NOW + 20), config, True, NOW + 20)  # a restart's new kernel, a new proxy
    assert json.loads(path.read_text())["started"] == NOW + 20
    status.update(None, {}, False, NOW + 30)  # between kernels
    assert json.loads(path.read_text())["kernel_pid"] is None
    assert [name for name in os.listdir(tmp_path)] == [ID + ".json"]  # no temporary file left


def test_only_status_files_are_read(tmp_path: Path) -> None:
    (tmp_path / (ID + ".json")).write_text(json.dumps({"id": ID, "agent_pid": 1}))
    (tmp_path / "0123.json").write_text(json.dumps({"id": "another", "agent_pid": 1}))  # not its name
    (tmp_path / "broken.json").write_text("{")
    (tmp_path / (ID + ".sock")).write_text("")
    assert [fields["id"] for _, fields in read_statuses(str(tmp_path))] == [ID]
    assert read_statuses(str(tmp_path / "missing")) == []


def test_a_kernel_is_named_by_its_id_its_session_or_the_start_of_its_id() -> None:
    kernels = [kernel(id="ab12" + "0" * 20, session="x.ipynb"), kernel(id="ab34" + "0" * 20, session="ab12"),
               kernel(id="cd56" + "0" * 20, session="x.ipynb")]
    assert find(kernels, "ab12" + "0" * 20) == [kernels[0]]  # an id before anything else
    assert find(kernels, "ab12") == [kernels[1]]  # a session name before an id's start
    assert find(kernels, "cd") == [kernels[2]]
    assert find(kernels, "ab") == kernels[:2]  # ambiguous: the caller says so
    assert find(kernels, "x.ipynb") == [kernels[0], kernels[2]]
    assert find(kernels, "zz") == [] and find(kernels, "") == []


def test_the_table_shows_each_kernel_as_a_person_reads_it() -> None:
    local_now = 1_800_000_000.0  # our clock is off by a lot: deadlines are shown on ours
    reply = {"now": NOW, "kernels": [
        kernel(id="b" * 24, session=None, kernel_pid=None, started=None, attached=False, since=NOW - 12,
               lingers_until=NOW + 30, rss=None, python="/usr/bin/python3"),
        kernel(attached=False, persistent=True, since=NOW - 300, lingers_until=NOW - 300 + 3600,
               session="evil\x1b[2J.ipynb")]}
    rows = ps.kernel_rows(reply, local_now)
    deadline = time.strftime("%H:%M", time.localtime(local_now + 3300))
    assert rows == [ps.HEADER,
                    (ID[:12], "evil?[2J.ipynb", "4711", "2 h 5 min ago", "detached (5 min), persistent", "812 MiB",
                     "%s (in 55 min)" % deadline, "/opt/conda/bin/python"),
                    ("b" * 12, "-", "-", "-", "detached (12 s)", "-",
                     "%s (in 30 s)" % time.strftime("%H:%M", time.localtime(local_now + 30)), "/usr/bin/python3")]
    attached = ps.kernel_row(kernel(), NOW, local_now)
    assert attached[4:7] == ("attached (2 h 5 min)", "812 MiB", "-")
    overdue = ps.kernel_row(kernel(attached=False, lingers_until=NOW - 1), NOW, local_now)
    assert overdue[6] == "now"
    far = ps.kernel_row(kernel(attached=False, lingers_until=NOW + 86400 + 7200), NOW, local_now)
    assert far[6].endswith("(in 1 d 2 h)") and far[6][:3].isalpha()  # a weekday: not today


@pytest.mark.parametrize("size, text", [(None, "-"), (512 << 10, "512 KiB"), (5 << 19, "2.5 MiB"),
                                        (812 << 20, "812 MiB"), (3 << 29, "1.5 GiB"), (12 << 30, "12 GiB")])
def test_memory(size: Any, text: str) -> None:
    assert ps.memory(size) == text


def test_what_stop_says() -> None:
    with pytest.raises(ProbeFailed) as unknown:
        ps.stop_lines({"now": NOW, "kernels": []}, "gpu", "zz")
    assert str(unknown.value) == "no kernel on gpu has the id or session name 'zz' (see 'proxykernel ps gpu')"
    with pytest.raises(ProbeFailed) as ambiguous:
        ps.stop_lines({"now": NOW, "kernels": [kernel(), kernel(id="3f" + "0" * 22, session=None)]}, "gpu", "3f")
    assert str(ambiguous.value) == ("'3f' names 2 kernels on gpu (3f2a1b4c5d6e (analysis.ipynb), 3f0000000000): "
                                    "give more of an id")
    assert ps.stop_lines({"now": NOW, "kernels": [], "stopping": True}, "gpu", None) == (
        ["no detached kernel on gpu"], None)
    done = [kernel(stopped=True, seconds=0.42), kernel(id="c" * 24, session=None, stopped=True),
            kernel(id="d" * 24, session=None, stopped=False)]
    lines, error = ps.stop_lines({"now": NOW, "kernels": done, "stopping": True}, "gpu", None)
    assert lines == ["stopped 3f2a1b4c5d6e (analysis.ipynb), kernel pid 4711, in 0.4 s",
                     "cccccccccccc had already stopped"]
    assert error == ("the agent of dddddddddddd on gpu has not exited yet after SIGTERM; it may still be "
                     "stopping its kernel (see 'proxykernel ps gpu')")


def test_the_modules_sent_import_only_each_other_in_order() -> None:
    for number, name in enumerate(ps.AGENT_MODULES):
        tree = ast.parse((ROOT / "remote_agent" / (name + ".py")).read_text())
        imported: List[str] = []
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("remote_agent"):
                imported += [node.module.split(".")[1]] if "." in node.module else [a.name for a in node.names]
        assert set(imported) <= set(ps.AGENT_MODULES[:number]), name


def test_the_remote_program_lists_on_the_oldest_python() -> None:
    python = ROOT / ".venvs" / "py38" / "bin" / "python"
    runtime = tempfile.mkdtemp(prefix="pxkst-", dir="/tmp")  # short: sockets are named in it
    try:
        directory = Path(runtime) / "proxykernel"
        directory.mkdir(mode=0o700)
        sleeper = subprocess.Popen(["sleep", "30"])  # alive, but not a daemon of that id: stale
        (directory / (ID + ".json")).write_text(json.dumps(kernel(agent_pid=sleeper.pid)))
        (directory / (ID + ".sock")).write_text("")
        try:
            done = subprocess.run([str(python), "-c", remote_program(remote_ps)], input=ps.request("ps"),
                                  capture_output=True, timeout=30, env=dict(os.environ, XDG_RUNTIME_DIR=runtime))
        finally:
            sleeper.kill()
            sleeper.wait()
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith(b"\nPXKBOOT INFO ")
        reply = json.loads(base64.b64decode(done.stdout.split()[-1]))
        assert reply["kernels"] == [] and abs(reply["now"] - time.time()) < 60
        assert not (directory / (ID + ".json")).exists()
    finally:
        shutil.rmtree(runtime, ignore_errors=True)


def test_a_daemon_in_a_batch_job_names_its_job(tmp_path: Path) -> None:
    path = tmp_path / (ID + ".json")
    StatusFile(str(path), Namespace(id=ID, linger=60.0, job="1234")).update((4711, NOW), {}, True, NOW)
    assert json.loads(path.read_text())["job"] == "1234"
    row = ps.kernel_row(kernel(job="1234"), NOW, time.time())
    assert row[4] == "attached (2 h 5 min), job 1234"


SPEC = {"label": "Slurm", "running": ["RUNNING"], "waiting": ["PENDING"], "marker": "@JOB@", "prefix": "proxykernel-"}


def test_kernels_in_jobs_are_rows_of_their_job_merged_with_a_readable_status() -> None:
    on_node = {"id": "e" * 24, "job": "77", "job_state": "RUNNING", "job_reason": "None", "node": "n7"}
    queued = {"id": "f" * 24, "job": "78", "job_state": "PENDING", "job_reason": "Resources", "node": ""}
    seen = kernel(job="76")
    merged = jobs.merge([seen], [dict(on_node), queued, {**on_node, "id": ID, "job": "76"}])
    assert [k["id"] for k in merged] == [ID, "e" * 24, "f" * 24]
    assert merged[0]["status"] is True and merged[0]["session"] == "analysis.ipynb" and merged[0]["node"] == "n7"
    assert merged[1]["status"] is False and merged[2]["status"] is False
    rows = ps.kernel_rows({"now": NOW, "kernels": merged}, time.time())
    assert rows[1][4] == "attached (2 h 5 min), job 76 RUNNING on n7"
    assert rows[2:] == [("e" * 12, "-", "-", "-", "job 77 RUNNING on n7", "-", "-", "-"),
                        ("f" * 12, "-", "-", "-", "job 78 PENDING (Resources)", "-", "-", "-")]
    assert ps.notes({"kernels": merged}, "login")[0].startswith(
        "note: kernels shown by their job alone run on compute nodes, whose local disk login cannot read")
    assert ps.notes({"kernels": [seen], "scheduler_missing": "squeue", "recorded_jobs": 2}, "login") == [
        "note: 2 kernel(s) recorded in batch jobs on login, but squeue is not on PATH there to tell whether their "
        "jobs run: pass the kernelspec's --pre-command (e.g. 'module load slurm')"]
    lines, error = ps.stop_lines({"now": NOW, "kernels": [dict(merged[1], stopped=True, cancelled=True, seconds=0.31)],
                                  "stopping": True}, "login", "e" * 24)
    assert (lines, error) == (["stopped eeeeeeeeeeee, job 77 cancelled, in 0.3 s"], None)


def test_only_job_files_of_jobs_that_run_or_wait_under_our_name_are_listed(tmp_path: Path) -> None:
    for name, text in (("a" * 24, "5\n"), ("b" * 24, "6"), ("c" * 24, "7"), ("d" * 24, "8"), ("5.out", "x"),
                       ("e" * 24 + ".new", "9")):
        (tmp_path / name).write_text(text)
    assert jobs.recorded(str(tmp_path)) == [("a" * 24, "5"), ("b" * 24, "6"), ("c" * 24, "7"), ("d" * 24, "8")]
    said = {"5": "RUNNING|None|n1|proxykernel-a.ipynb", "6": "PENDING|Priority||proxykernel-b",
            "7": "COMPLETED|None|n1|proxykernel-c", "8": "RUNNING|None|n1|someone-elses-job"}
    state = [sys.executable, "-c", "import sys; print(%r.get(sys.argv[1], ''))" % said, "@JOB@"]
    spec = dict(SPEC, state=state, cancel=["false"])
    assert [(k["id"][0], k["job_state"], k["node"]) for k in jobs.job_kernels(spec, str(tmp_path))] == [
        ("a", "RUNNING", "n1"), ("b", "PENDING", "")]
    assert jobs.still_ours(spec, str(tmp_path), {"id": "a" * 24, "job": "5"})
    assert not jobs.still_ours(spec, str(tmp_path), {"id": "a" * 24, "job": "6"})  # the file names another job
    assert not jobs.forget(spec, str(tmp_path), {"id": "a" * 24, "job": "5"})  # still running: kept
    assert jobs.forget(spec, str(tmp_path), {"id": "c" * 24, "job": "7"}) and not (tmp_path / ("c" * 24)).exists()
    with pytest.raises(jobs.Missing):
        jobs.job_kernels(dict(spec, state=["no-such-scheduler-command", "@JOB@"]), str(tmp_path))


def test_a_status_file_goes_only_when_its_daemon_is_known_dead(tmp_path: Path) -> None:
    directory = tempfile.mkdtemp(prefix="pxkst-", dir="/tmp")  # short: a socket is named in it
    try:
        gone = subprocess.Popen(["true"])
        gone.wait()  # a pid that names nobody (or someone unrelated): as a daemon in another PID namespace
        listening = socket.socket(socket.AF_UNIX)
        listening.bind(os.path.join(directory, "a" * 24 + ".sock"))
        listening.listen(4)
        closed = socket.socket(socket.AF_UNIX)
        closed.bind(os.path.join(directory, "b" * 24 + ".sock"))
        closed.close()  # its file stays, nobody listens: refused
        for name in ("a", "b", "c"):  # c: no socket at all
            (Path(directory) / (name * 24 + ".json")).write_text(json.dumps(kernel(id=name * 24, agent_pid=gone.pid)))
        try:
            assert daemon_state(kernel(id="a" * 24, agent_pid=gone.pid), directory) == ALIVE
            assert [k["id"] for k in list_kernels(directory)] == ["a" * 24]
        finally:
            listening.close()
        assert sorted(os.listdir(directory)) == ["a" * 24 + ".json", "a" * 24 + ".sock", "b" * 24 + ".sock"]
    finally:
        shutil.rmtree(directory, ignore_errors=True)
