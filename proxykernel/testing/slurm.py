"""A real single-node Slurm cluster for tests, the benchmark and the demo (DESIGN.md, "How we test").

    with SlurmCluster() as cluster:
        subprocess.run(["sbatch", "--wrap", "true"], env=cluster.env())

Debian's ``slurm-wlm`` and ``munge`` (installed by scripts/setup-test-env). Everything lives in a temp
dir: our own munged on its own socket (copy of the package's key), ``slurmctld`` and ``slurmd`` in
the foreground (``-D``) on free non-default ports, state, spool, logs and pid files; nothing of the
machine's own munge or Slurm is used or touched. Every client command needs ``SLURM_CONF``: pass
``cluster.env()``, or put ``cluster.pre_command`` in front (what a site's ``module load slurm`` is).
The three daemons are our children, stopped by PID (SIGTERM, then SIGKILL); slurmd takes the job
processes with it.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from typing import Any, Dict, List, Optional

from proxykernel.testing.procs import descendants, process_table
from proxykernel.testing.sshd import free_port, port_open

__all__ = ["SlurmCluster", "slurm_installed", "MUNGE_KEY"]

MUNGE_KEY = "/etc/munge/munge.key"  # the package's key, made at install
DAEMONS = ("/usr/sbin/munged", "/usr/sbin/slurmctld", "/usr/sbin/slurmd")
START_TIMEOUT = 20.0
STOP_TIMEOUT = 5.0


def slurm_installed() -> bool:
    """Are munged, slurmctld, slurmd and the client commands there (and the munge key)?"""
    return all(os.access(path, os.X_OK) for path in DAEMONS) and os.path.exists(MUNGE_KEY) and \
        all(shutil.which(name) for name in ("sbatch", "srun", "squeue", "scancel"))


def _slurm_conf(d: str, host: str, cpus: int, ctld_port: int, slurmd_port: int) -> str:
    return "\n".join([
        "ClusterName=pxktest",
        "SlurmctldHost=%s" % host,
        "SlurmUser=root",
        "SlurmctldPort=%d" % ctld_port,
        "SlurmdPort=%d" % slurmd_port,
        "AuthType=auth/munge",
        "CredType=cred/munge",
        "AuthInfo=socket=%s" % os.path.join(d, "munge.sock"),
        "StateSaveLocation=%s" % os.path.join(d, "state"),
        "SlurmdSpoolDir=%s" % os.path.join(d, "spool"),
        "SlurmctldPidFile=%s" % os.path.join(d, "slurmctld.pid"),
        "SlurmdPidFile=%s" % os.path.join(d, "slurmd.pid"),
        "SlurmctldLogFile=%s" % os.path.join(d, "slurmctld.log"),
        "SlurmdLogFile=%s" % os.path.join(d, "slurmd.log"),
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_CPU",
        "AccountingStorageType=accounting_storage/none",
        "JobCompType=jobcomp/none",
        "JobAcctGatherType=jobacct_gather/none",
        "MailProg=/bin/true",
        "SchedulerParameters=batch_sched_delay=0",  # else jobs start on a 3 s cycle
        "SchedulerType=sched/backfill",
        "ReturnToService=2",
        "MinJobAge=300",
        "KillWait=5",
        "NodeName=%s CPUs=%d State=UNKNOWN" % (host, cpus),
        "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
        ""])


class SlurmCluster:
    """munged + slurmctld + slurmd for one node (this host), in a temp dir; ``start``/``stop`` or
    ``with``. The tests' session fixture (tests/conftest.py) and ``python -m bench`` make one.

    Attributes: ``conf`` (the slurm.conf path), ``tmpdir``, ``host`` (``hostname -s``), ``cpus``,
    ``pre_command`` (``export SLURM_CONF=...``, for ``--pre-command``).
    """

    def __init__(self) -> None:
        self.tmpdir: Optional[str] = None
        self.conf = ""
        self.host = socket.gethostname().split(".")[0]
        self.cpus = os.cpu_count() or 1
        self.procs: List["subprocess.Popen[bytes]"] = []

    @property
    def pre_command(self) -> str:
        return "export SLURM_CONF=%s" % self.conf

    def env(self, base: Optional[Dict[str, str]] = None) -> Dict[str, str]:
        """An environment for Slurm's client commands (``base``: os.environ by default)."""
        env = dict(os.environ if base is None else base)
        env["SLURM_CONF"] = self.conf
        return env

    def run(self, *argv: str, check: bool = True, timeout: float = 20.0) -> str:
        """Run a Slurm client command against this cluster; its stdout."""
        done = subprocess.run(list(argv), env=self.env(), capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
        if check and done.returncode != 0:
            raise RuntimeError("%s failed (%d): %s" % (" ".join(argv), done.returncode, done.stderr.strip()))
        return done.stdout

    def start(self) -> "SlurmCluster":
        if self.tmpdir is not None:
            raise RuntimeError("SlurmCluster already started")
        self.tmpdir = d = tempfile.mkdtemp(prefix="pxk-slurm-")
        try:
            os.chmod(d, 0o755)  # munged refuses a socket directory others may write to
            for sub in ("state", "spool"):
                os.mkdir(os.path.join(d, sub), 0o700)
            key = os.path.join(d, "munge.key")
            shutil.copyfile(MUNGE_KEY, key)
            os.chmod(key, 0o600)
            ctld_port = free_port()
            self.conf = os.path.join(d, "slurm.conf")
            with open(self.conf, "w") as handle:
                handle.write(_slurm_conf(d, self.host, self.cpus, ctld_port, free_port()))
            self._spawn("munged", ["/usr/sbin/munged", "-F", "--force", "-S", os.path.join(d, "munge.sock"),
                                   "--key-file", key, "--pid-file", os.path.join(d, "munged.pid"),
                                   "--seed-file", os.path.join(d, "munge.seed"),
                                   "--log-file", os.path.join(d, "munged.log")])
            self._wait(lambda: os.path.exists(os.path.join(d, "munge.sock")), "munged")
            self._spawn("slurmctld", ["/usr/sbin/slurmctld", "-D", "-i", "-f", self.conf])
            self._wait(lambda: port_open(ctld_port), "slurmctld")
            self._spawn("slurmd", ["/usr/sbin/slurmd", "-D", "-f", self.conf])
            self._wait(self._node_idle, "slurmd")
            # The first batch job after slurmctld starts waits for a 3 s scheduling cycle; later
            # ones start in ~40 ms. Pay it here, once, not in the first test.
            self.run("sbatch", "--wrap", "true", "--output", "/dev/null")
            self._wait(lambda: not self.jobs(), "the first batch job")
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn(self, name: str, argv: List[str]) -> None:
        assert self.tmpdir is not None
        with open(os.path.join(self.tmpdir, name + ".out"), "ab") as out:
            self.procs.append(subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                               env=self.env(), start_new_session=True))

    def _wait(self, ready: Any, name: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while not ready():
            if any(proc.poll() is not None for proc in self.procs) or time.monotonic() > deadline:
                raise RuntimeError("%s did not start; logs in %s:\n%s" % (name, self.tmpdir, self.logs()))
            time.sleep(0.02)

    def _node_idle(self) -> bool:
        try:
            return self.run("sinfo", "-h", "-N", "-o", "%T", check=False, timeout=5).strip() == "idle"
        except subprocess.TimeoutExpired:
            return False

    def logs(self) -> str:
        """The tails of the daemons' logs (for a failure's message)."""
        text = []
        for name in ("munged.out", "slurmctld.out", "slurmctld.log", "slurmd.out", "slurmd.log"):
            try:
                with open(os.path.join(self.tmpdir or "", name), errors="replace") as handle:
                    text.append("== %s\n%s" % (name, handle.read()[-2000:]))
            except OSError:
                pass
        return "\n".join(text)

    def jobs(self) -> List[str]:
        """``squeue``'s lines for this cluster: "ID NAME STATE REASON" for each job queued or running."""
        return self.run("squeue", "-h", "-o", "%i %j %T %r").splitlines()

    def _steps(self, prefix: bytes) -> List[int]:
        """This cluster's slurmstepds whose title starts with ``prefix``: daemons of their own (not
        slurmd's children), told from another cluster's by the SLURM_CONF they inherited."""
        found = []
        for pid in process_table():
            try:
                with open("/proc/%d/cmdline" % pid, "rb") as handle:
                    if not handle.read().startswith(b"slurmstepd: [" + prefix):
                        continue
                with open("/proc/%d/environ" % pid, "rb") as handle:
                    if b"SLURM_CONF=%s\0" % self.conf.encode() in handle.read():
                        found.append(pid)
            except OSError:
                pass
        return found

    def job_processes(self, job: str = "") -> List[int]:
        """The processes of ``job`` (all jobs: ""), its slurmstepds and everything they run."""
        table = process_table()
        steps = self._steps(job.encode() + b"." if job else b"")
        return steps + [child for step in steps for child in descendants(step, table)]

    def cancel_all(self, wait: float = STOP_TIMEOUT) -> None:
        """scancel every job and wait until squeue shows none (a test's cleanup)."""
        ids = [line.split()[0] for line in self.jobs()]
        if ids:
            self.run("scancel", *ids, check=False)
        deadline = time.monotonic() + wait
        while self.jobs() and time.monotonic() < deadline:
            time.sleep(0.05)

    def stop(self) -> None:
        """Cancel the jobs, stop the daemons by PID (a slurmstepd outlives slurmd by design: the
        job processes left, its descendants, are killed too), remove the temp dir. Idempotent."""
        if self.procs and all(proc.poll() is None for proc in self.procs):
            try:
                self.cancel_all()
            except (RuntimeError, subprocess.TimeoutExpired):
                pass
        leftover = self.job_processes()
        for proc in reversed(self.procs):
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=STOP_TIMEOUT)
        for pid in leftover:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.procs = []
        if self.tmpdir is not None:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.tmpdir = None

    def __enter__(self) -> "SlurmCluster":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
