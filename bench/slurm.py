"""``python -m bench --slurm``: a kernel in a Slurm job, measured beside the login-node kernel (d).

Where the figures come from: ``proxykernel.testing.slurm.SlurmCluster``, a real single-node Slurm
cluster that this section brings up on this machine (Debian's ``slurm-wlm`` and ``munge``, installed
by scripts/setup-test-env; ``sched/backfill`` with ``batch_sched_delay=0``) and stops by PID. The
bench's sshd is the login host and this machine the compute node, so the figures are Slurm's own
cost (sbatch, the queue, the ``srun --overlap`` step, the daemon's start in the job), not a network's.

Each start is ``python -m proxykernel --slurm=--time=10`` from a kernelspec, after one untimed start
and stop (the agent is cached and the host's ssh connection open: "warm", as (d)). The queue time in
it is what the login host reports in the proxy's log ("Slurm job N RUNNING on NODE after S s in the
queue": from sbatch's answer until squeue says RUNNING, polled every 50 ms and doubling).
"""
from __future__ import annotations

import re
import shlex
import statistics
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional, Tuple

from bench.kernels import Kernel, KernelError, Spec, measure_pass, measure_stdout, wait_ready
from proxykernel.testing.slurm import SlurmCluster, slurm_installed

if TYPE_CHECKING:
    from bench.run import Bench

__all__ = ["measure_slurm", "SOURCE", "unavailable"]

SOURCE = ("a single-node Slurm cluster on this machine (proxykernel/testing/slurm.py: munged, slurmctld, "
          "slurmd; sched/backfill, batch_sched_delay=0), reached through the bench's sshd as the login host")
OPTIONS = "--time=10"
QUEUED = re.compile(r"RUNNING on \S+ after ([0-9.]+) s in the queue")


def unavailable() -> Optional[str]:
    """Why no Slurm cluster can be brought up here (None: it can)."""
    if not slurm_installed():
        return "slurm-wlm and munge are not installed (scripts/setup-test-env installs them)"
    return None


class _SlurmKernels:
    """Starts and stops the Slurm kernels of one run; its own log, read after each start."""

    def __init__(self, bench: "Bench", cluster: SlurmCluster) -> None:
        self.bench = bench
        pre = "%s; export XDG_CACHE_HOME=%s" % (cluster.pre_command, shlex.quote(str(bench.cache_home)))
        argv = [sys.executable, "-m", "proxykernel", "--host", bench.sshd.alias, "--python", sys.executable,
                "--ssh-config", str(bench.sshd.config_path), "--pre-command", pre, "--slurm=" + OPTIONS,
                "-f", "{connection_file}"]
        run_dir = bench.tmp / "run-slurm"  # run-*: Bench.stop_masters ends its ssh ControlMaster
        run_dir.mkdir(mode=0o700, exist_ok=True)
        self.spec = Spec("slurm", argv, bench.tmp / "specs", env={"XDG_RUNTIME_DIR": str(run_dir)})
        self.log_path: Path = bench.log_path.parent / "slurm-kernels.log"
        self.log = open(self.log_path, "wb")

    def start(self) -> Tuple[Kernel, float]:
        """A started, ready kernel and the queue time its log reported."""
        offset = self.log.tell()
        kernel = Kernel(self.spec, self.log, str(self.bench.tmp))
        self.bench.kernels.append(kernel)
        if wait_ready([kernel]):
            raise KernelError("slurm: the kernel was not ready within the timeout; see %s" % self.log_path)
        self.log.flush()
        said = self.log_path.read_bytes()[offset:].decode(errors="replace")
        queued = QUEUED.findall(said)
        if not queued:
            raise KernelError("slurm: the log does not say when the job ran; see %s" % self.log_path)
        return kernel, float(queued[-1])

    def close(self) -> None:
        self.log.close()


def measure_slurm(bench: "Bench", cluster: Optional[SlurmCluster] = None) -> Dict[str, float]:
    """The Slurm figures (keys as ``report.SLURM_FIGURES``); brings up its own cluster unless given one
    (tests/test_bench.py gives the session's)."""
    own = cluster is None
    cluster = cluster or SlurmCluster().start()
    kernels = _SlurmKernels(bench, cluster)
    try:
        return _measure(bench, kernels)
    finally:
        kernels.close()
        if own:
            cluster.stop()


def _measure(bench: "Bench", kernels: _SlurmKernels) -> Dict[str, float]:
    sizes = bench.sizes
    bench.stop(kernels.start()[0])  # warm: the agent cached, the ssh connection open
    starts: List[float] = []
    queues: List[float] = []
    kernel: Optional[Kernel] = None
    for i in range(sizes.starts):
        kernel, queued = kernels.start()
        starts.append(kernel.start_seconds)
        queues.append(queued)
        if i < sizes.starts - 1:
            bench.stop(kernel)
    assert kernel is not None
    figures = {"start_s": statistics.median(starts), "queue_s": statistics.median(queues),
               "start_minus_queue_s": statistics.median([s - q for s, q in zip(starts, queues)])}
    try:
        passes = measure_pass(kernel.kc, sizes.pass_count)
        figures["pass_ms"] = 1e3 * statistics.median(passes)
        rates = []
        for _ in range(sizes.stdout_reps):
            nbytes, seconds = measure_stdout(kernel.kc, sizes.stdout_bytes)
            rates.append(nbytes / 1e6 / seconds)
        figures["stdout_mb_s"] = statistics.median(rates)
        figures["restart_s"] = statistics.median([kernel.restart() for _ in range(sizes.restarts)])
    finally:
        bench.stop(kernel)
    return figures
