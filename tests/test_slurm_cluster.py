"""The test suite's own Slurm cluster (proxykernel/testing/slurm.py) runs batch jobs and overlapping
steps, as the Slurm tests of proxykernel need."""
from __future__ import annotations

import time

from proxykernel.testing.slurm import SlurmCluster


def _wait_state(cluster: SlurmCluster, job: str, state: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(line.split()[0] == job and line.split()[2] == state for line in cluster.jobs()):
            return
        time.sleep(0.02)
    raise AssertionError("job %s not %s: %s" % (job, state, cluster.jobs()))


def test_cluster_runs_a_batch_job_and_an_overlapping_step(slurm: SlurmCluster) -> None:
    job = slurm.run("sbatch", "--parsable", "--job-name=pxk-fixture", "--output=/dev/null",
                    "--wrap", "exec sleep 60").strip()
    try:
        _wait_state(slurm, job, "RUNNING")
        assert any(line.split()[1] == "pxk-fixture" for line in slurm.jobs())
        out = slurm.run("srun", "--jobid=" + job, "--overlap", "-u", "sh", "-c", "echo $SLURM_JOB_ID")
        assert out.strip() == job
    finally:
        slurm.run("scancel", job)
    deadline = time.monotonic() + 5
    while any(line.split()[0] == job for line in slurm.jobs()) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not any(line.split()[0] == job for line in slurm.jobs())
