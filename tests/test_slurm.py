"""Kernels in Slurm jobs (``--slurm``), through the test sshd (AllowTcpForwarding no) and the suite's own
single-node Slurm cluster (proxykernel/testing/slurm.py): the kernel runs in a batch job, every ssh
session reaches it with ``srun --overlap``, a restart keeps the job, drops lose nothing, shutdown and
an outside scancel end it cleanly, a full node makes the start wait (and say why), --queue-timeout
bounds that wait (issue 13's "done when" 1 to 5)."""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Tuple

import pytest
from jupyter_client import BlockingKernelClient, KernelManager

from proxykernel.cli import build_parser, join_dash_values
from proxykernel.testing.slurm import SlurmCluster
from tests.kernels import alive, kernel_manager, proxy_argv, run_cell, running_kernel, shell_reply
from tests.test_kernel import CELLS, _normal
from tests.test_reconnect import FAST, PRINT_UNTIL, collect_lines, dropping
from tests.userland import one_error, proxykernel, user_env

Kernel = Tuple[KernelManager, BlockingKernelClient]


def slurm_argv(sshd: Any, slurm: SlurmCluster, options: List[str], *extra: str) -> List[str]:
    return proxy_argv(sshd, extra=[*options, "--pre-command", slurm.pre_command, *extra])


def job_of(kc: BlockingKernelClient) -> str:
    return str(run_cell(kc, "import os; print(os.environ['SLURM_JOB_ID'])")[1][0][1]["text"].strip())


def jobs(slurm: SlurmCluster) -> Dict[str, List[str]]:
    return {line.split()[0]: line.split()[1:] for line in slurm.jobs()}


def wait_until(check: Any, timeout: float) -> float:
    """Seconds until ``check()`` held; AssertionError after ``timeout``."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < timeout, "not within %.0f s" % timeout
        time.sleep(0.02)
    return time.monotonic() - started


@pytest.fixture(autouse=True)
def _no_job_left(slurm: SlurmCluster) -> Iterator[None]:
    yield
    left = slurm.jobs()
    slurm.cancel_all()
    assert left == []


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kernel]:
    with running_kernel(None, tmp_path_factory.mktemp("spec")) as kernel:
        yield kernel


def test_slurm_value_starting_with_a_dash_parses_as_one_value() -> None:
    base = ["--host", "h", "--python", "p", "-f", "c.json"]
    parse = build_parser().parse_args
    assert parse(join_dash_values(base + ["--slurm", "--time=10 --partition=debug"])).slurm == \
        "--time=10 --partition=debug"
    assert parse(join_dash_values(base + ["--slurm=--time=10"])).slurm == "--time=10"
    assert parse(join_dash_values(base + ["--slurm", ""])).slurm == ""


def test_kernel_runs_in_a_job_and_behaves_as_a_local_one(sshd: Any, slurm: SlurmCluster, tmp_path: Path,
                                                         local: Kernel) -> None:
    # The values reach sbatch as data: a --comment with $(...), ; and quotes is shown verbatim.
    comment = "x$(touch %s/pwned); echo 'q\"" % tmp_path
    options = ["--slurm", "--time=10 --partition=debug --comment=%s" % shlex.quote(comment)]
    with running_kernel(slurm_argv(sshd, slurm, options), tmp_path / "spec") as (km, kc):
        job = job_of(kc)
        assert jobs(slurm)[job][:2] == [jobs(slurm)[job][0], "RUNNING"]
        assert jobs(slurm)[job][0].startswith("proxykernel-")
        shown = slurm.run("squeue", "-h", "-j", job, "-o", "%k").strip()
        assert shown == comment
        assert not (tmp_path / "pwned").exists()
        for code in CELLS:
            ours = _normal(run_cell(kc, code)[1])
            theirs = _normal(run_cell(local[1], code)[1])
            assert [(kind, {k: v for k, v in c.items() if k != "execution_count"}) for kind, c in ours] == \
                [(kind, {k: v for k, v in c.items() if k != "execution_count"}) for kind, c in theirs]


@pytest.mark.parametrize("mode", ["signal", "message"])
def test_restart_keeps_the_job_and_interrupt_works(sshd: Any, slurm: SlurmCluster, tmp_path: Path,
                                                   mode: str) -> None:
    argv = slurm_argv(sshd, slurm, ["--slurm=--time=10"])
    with running_kernel(argv, tmp_path, interrupt_mode=mode) as (km, kc):
        job = job_of(kc)
        run_cell(kc, "marker = 1")
        km.restart_kernel(now=False)
        kc.wait_for_ready(timeout=60)
        assert run_cell(kc, "marker")[0]["ename"] == "NameError"
        assert job_of(kc) == job and list(jobs(slurm)) == [job]
        msg_id = kc.execute("import time; time.sleep(60)")
        time.sleep(1.0)
        km.interrupt_kernel()
        assert shell_reply(kc, msg_id, timeout=10)["content"]["ename"] == "KeyboardInterrupt"


def test_ssh_killed_mid_cell_five_times_loses_nothing(sshd: Any, slurm: SlurmCluster, tmp_path: Path) -> None:
    stop = tmp_path / "stop"
    with running_kernel(slurm_argv(sshd, slurm, ["--slurm=--time=10"], *FAST), tmp_path) as (km, kc):
        job = job_of(kc)
        pid = run_cell(kc, "import os; print(os.getpid())")[1][0][1]["text"]
        msg_id = kc.execute(PRINT_UNTIL.format(stop=str(stop)))
        with dropping(km, 5, every=1.0) as done:
            wait_until(lambda: done["drops"] == 5, 50)
            time.sleep(1.0)
            stop.touch()
            got = collect_lines(kc, msg_id, timeout=60)
        assert len(got) > 30 * 5 and got == list(range(len(got)))
        assert run_cell(kc, "import os; print(os.getpid())")[1][0][1]["text"] == pid
        assert job_of(kc) == job and list(jobs(slurm)) == [job]


def test_shutdown_ends_the_job_and_leaves_nothing_on_the_node(sshd: Any, slurm: SlurmCluster,
                                                            tmp_path: Path) -> None:
    with running_kernel(slurm_argv(sshd, slurm, ["--slurm=--time=10"]), tmp_path) as (km, kc):
        job = job_of(kc)
        node_side = slurm.job_processes(job)
        assert node_side, "no job processes under slurmd"
        folder = run_cell(kc, "import ipykernel, os; print(os.path.dirname(ipykernel.get_connection_file()))")
        remote_dir = folder[1][0][1]["text"].strip()
    assert wait_until(lambda: job not in jobs(slurm), 5) < 5
    wait_until(lambda: not any(alive(pid) for pid in node_side), 5)
    assert not os.path.exists(remote_dir)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "proxykernel" / "jobs"
    assert not (cache / ("%s.out" % job)).exists()


@contextmanager
def piped_kernel(argv: List[str], spec_dir: Path) -> Iterator[Tuple[KernelManager, BlockingKernelClient,
                                                                       Callable[[], str]]]:
    """A started kernel (not waited for) whose proxy's stderr, the Jupyter log, is read by the
    third value: everything written so far (non-blocking: the ssh master holds the pipe open)."""
    km = kernel_manager(argv, spec_dir)
    km.start_kernel(stderr=subprocess.PIPE)
    pipe = km.provisioner.process.stderr  # type: ignore[union-attr]
    os.set_blocking(pipe.fileno(), False)
    got: List[bytes] = []

    def log() -> str:
        got.append(pipe.read() or b"")
        return b"".join(got).decode(errors="replace")
    kc = km.client()
    kc.start_channels()
    try:
        yield km, kc, log
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=False)  # a shutdown request: the job ends with the kernel
        km.cleanup_resources()


@contextmanager
def node_full(slurm: SlurmCluster) -> Iterator[str]:
    """A job holding all the node's CPUs, running; cancelled (and gone from squeue) at the end."""
    job = slurm.run("sbatch", "--parsable", "--job-name=filler", "-c", str(slurm.cpus), "--output=/dev/null",
                    "--wrap", "exec sleep 300").strip()
    try:
        wait_until(lambda: jobs(slurm).get(job, ["", ""])[1] == "RUNNING", 10)
        yield job
    finally:
        slurm.run("scancel", job)
        wait_until(lambda: job not in jobs(slurm), 10)


def iopub_until(kc: BlockingKernelClient, msg_id: str, done: Callable[[List[Dict[str, Any]]], bool],
                timeout: float) -> List[Dict[str, Any]]:
    """The IOPub messages (type and content) of the request ``msg_id`` until ``done`` says so."""
    got: List[Dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while not done(got):
        msg = kc.get_iopub_msg(timeout=max(0.01, deadline - time.monotonic()))
        if msg["parent_header"].get("msg_id") == msg_id:
            got.append({"msg_type": msg["msg_type"], **msg["content"]})
    return got


def our_job(slurm: SlurmCluster) -> str:
    ours = [job for job, (name, *_) in jobs(slurm).items() if name.startswith("proxykernel-")]
    assert len(ours) == 1, jobs(slurm)
    return ours[0]


def test_a_full_node_makes_the_start_wait_and_say_why(sshd: Any, slurm: SlurmCluster, tmp_path: Path) -> None:
    with node_full(slurm) as filler, \
            piped_kernel(slurm_argv(sshd, slurm, ["--slurm=--time=10"]), tmp_path) as (km, kc, log):
        wait_until(lambda: "PENDING (Resources) for" in log(), 20)
        job = our_job(slurm)
        assert jobs(slurm)[job][1:] == ["PENDING", "Resources"]
        assert "Slurm job %s PENDING (Resources) for " % job in log()
        time.sleep(3.0)
        msg_id = kc.execute("print('ran')")  # a cell run while the job waits shows why nothing happens
        shown = iopub_until(kc, msg_id, lambda got: any(m["msg_type"] == "stream" for m in got), 10)
        texts = [(m["name"], m["text"]) for m in shown if m["msg_type"] == "stream"]
        assert len(texts) == 1 and texts[0][0] == "stderr", texts
        said = re.fullmatch(r"\[proxykernel\] Slurm job %s PENDING \(Resources\) for (\d+) s; "
                            r"the cell runs when the job starts\n" % job, texts[0][1])
        assert said and int(said.group(1)) >= 3, texts  # the wait so far, not the first report's
        time.sleep(1.0)
        assert jobs(slurm)[job][1] == "PENDING" and km.is_alive()
        slurm.run("scancel", filler)  # the node frees: the job runs, the kernel starts, the cell runs
        reply = shell_reply(kc, msg_id, timeout=30)
        assert reply["content"]["status"] == "ok"
        ran = iopub_until(kc, msg_id, lambda got: any(m.get("execution_state") == "idle" for m in got), 10)
        assert [m["text"] for m in ran if m["msg_type"] == "stream"] == ["ran\n"]
        assert job_of(kc) == job
        assert "Slurm job %s RUNNING on %s after " % (job, slurm.host) in log()


def test_queue_timeout_cancels_a_job_that_cannot_run(sshd: Any, slurm: SlurmCluster, tmp_path: Path) -> None:
    argv = slurm_argv(sshd, slurm, ["--slurm=--time=10"], "--queue-timeout", "2")
    with node_full(slurm) as filler, piped_kernel(argv, tmp_path) as (km, kc, log):
        wait_until(lambda: "PENDING (Resources) for" in log(), 20)
        job = our_job(slurm)
        assert 1.5 < wait_until(lambda: not km.is_alive(), 15) < 10
        assert list(jobs(slurm)) == [filler]
        errors = [line for line in log().splitlines() if "ERROR" in line or "Traceback" in line]
        assert errors == ["[proxykernel ERROR] Slurm job %s still PENDING (Resources) after 2 s "
                          "(--queue-timeout); it was cancelled"
                          % job], log()


def test_scancel_from_outside_is_a_dead_kernel_with_the_reason(sshd: Any, slurm: SlurmCluster,
                                                                tmp_path: Path) -> None:
    km = kernel_manager(slurm_argv(sshd, slurm, ["--slurm=--time=10"], *FAST), tmp_path)
    km.start_kernel(stderr=subprocess.PIPE)
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        job = job_of(kc)
        slurm.run("scancel", job)
        assert wait_until(lambda: not km.is_alive(), 5) < 5
        pipe = km.provisioner.process.stderr  # type: ignore[union-attr]
        os.set_blocking(pipe.fileno(), False)  # the ssh master holds it open: read what is there
        stderr = (pipe.read() or b"").decode()
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
        km.cleanup_resources()
    assert "Slurm job %s ended: CANCELLED" % job in stderr, stderr[-2000:]


def test_check_with_slurm_options(sshd: Any, slurm: SlurmCluster, tmp_path: Path) -> None:
    def check(options: str, pre_command: str = slurm.pre_command) -> "subprocess.CompletedProcess[str]":
        return proxykernel(user_env(tmp_path), "check", sshd.alias, "--python", sys.executable, "--ssh-config",
                           str(sshd.config_path), "--pre-command", pre_command, "--slurm", options)
    good = check("--time=10 --partition=debug")
    assert good.returncode == 0, good.stderr
    steps = re.findall(r"^  ok +(\S+) .*$", good.stdout, re.M)
    assert steps[-3:] == ["slurm", "options", "start"], good.stdout
    assert re.search(r"ok +slurm +\d+\.\d\d s  sbatch, srun, squeue, scancel are on PATH", good.stdout)
    assert re.search(r"ok +options +sbatch accepts --time=10 --partition=debug\n", good.stdout)
    assert re.search(r"ok +start +a job would start at \S+ \(1 processors on nodes %s in partition debug\)"
                     % slurm.host, good.stdout), good.stdout
    assert good.stdout.rstrip().endswith("is ready for proxykernel in Slurm jobs")
    assert one_error(check("--time=10 --bogus")) == \
        "proxykernel check: error: Slurm refused --time=10 --bogus on %s: unrecognized option '--bogus'" % sshd.alias
    assert one_error(check("--partition=nope")) == \
        "proxykernel check: error: Slurm refused --partition=nope on %s: invalid partition specified: nope" \
        % sshd.alias
    assert one_error(check("", "export PATH=/nonexistent")) == \
        "proxykernel check: error: Slurm's sbatch is not on PATH on %s: load it with --pre-command " \
        "(e.g. 'module load slurm')" % sshd.alias
    assert slurm.jobs() == []  # a test submission submits nothing


@contextmanager
def removed(directory: str) -> Iterator[None]:
    try:
        yield
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_ps_lists_a_kernel_by_its_job_and_stop_cancels_the_job(sshd: Any, slurm: SlurmCluster, tmp_path: Path) -> None:
    # The job files live in the test's own cache (those of other runs, job ids of other clusters, stay
    # out), the daemon's status file in its own runtime directory (another ps cannot touch it).
    cache, runtime = tmp_path / "cache", tempfile.mkdtemp(prefix="pxkps-", dir="/tmp")  # short: sockets
    pre_command = "export XDG_CACHE_HOME=%s XDG_RUNTIME_DIR=%s; %s" % (
        shlex.quote(str(cache)), shlex.quote(runtime), slurm.pre_command)
    argv = proxy_argv(sshd, extra=["--slurm=--time=10", "--pre-command", pre_command])

    def command(*args: str) -> "subprocess.CompletedProcess[str]":
        return proxykernel(user_env(tmp_path), args[0], sshd.alias, "--python", sys.executable, "--ssh-config",
                           str(sshd.config_path), "--pre-command", pre_command, *args[1:], timeout=60)

    def listed() -> Dict[str, Dict[str, Any]]:
        done = command("ps", "--json")
        assert done.returncode == 0, done.stderr
        return {kernel["id"]: kernel for kernel in json.loads(done.stdout)["kernels"]}
    with removed(runtime), running_kernel(argv, tmp_path / "spec") as (km, kc):
        job = job_of(kc)
        [kernel_id] = [name for name in os.listdir(cache / "proxykernel" / "jobs") if "." not in name]
        for _ in range(2):  # the daemon's pid is not visible from the sshd's PID namespace: its file stays
            row = listed()[kernel_id]
            assert (row["job"], row["job_state"], row["node"]) == (job, "RUNNING", slurm.host)
            assert row["status"] is True and row["attached"] is True  # the node's status file, merged
        table = command("ps").stdout
        assert re.search(r"^%s .* attached \(\d+ s\), job %s RUNNING on %s " % (kernel_id[:12], job, slurm.host),
                         table, re.M), table
        stopped = command("stop", kernel_id)
        assert stopped.returncode == 0, stopped.stderr
        assert re.fullmatch(r"stopped %s, job %s cancelled, in \d+\.\d s\n" % (kernel_id[:12], job),
                            stopped.stdout), stopped.stdout
        assert wait_until(lambda: job not in jobs(slurm), 5) < 5
        assert kernel_id not in listed()
        assert wait_until(lambda: not km.is_alive(), 10) < 10
