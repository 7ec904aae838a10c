"""Unit tests of ``batch.JobWatch``: what the login host's ``PXKJOB`` lines become (no sockets, a
fake clock)."""
from __future__ import annotations

from typing import List

from proxykernel.batch import JobWatch
from proxykernel.batch_check import refusal
from proxykernel.scheduler import Slurm


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_waiting_job_counts_its_wait_on_between_reports() -> None:
    clock = Clock()
    watch = JobWatch(True, clock)
    assert watch.feed("PXKJOB state Slurm|12|PENDING|Resources|4.250|")
    assert (watch.job, watch.waiting) == ("12", True)
    assert watch.news == "Slurm job 12 PENDING (Resources) for 4 s"
    clock.now += 30.5  # no new line: the state has not changed, the wait goes on
    assert watch.news == "Slurm job 12 PENDING (Resources) for 34 s"
    watch.feed("PXKJOB state Slurm|12|RUNNING|None|41.316|node7")
    clock.now += 100
    assert (watch.waiting, watch.news) == (False, "Slurm job 12 RUNNING on node7 after 41 s in the queue")


def test_no_reason_and_other_lines() -> None:
    watch = JobWatch(True, Clock())
    assert watch.news == ""
    watch.feed("PXKJOB state Slurm|3|PENDING|None|0|")
    assert watch.news == "Slurm job 3 PENDING for 0 s"
    assert not watch.feed("agent: hello")
    assert not JobWatch(False, Clock()).feed("PXKJOB state Slurm|3|PENDING|None|0|")


def test_a_cell_run_while_waiting_shows_the_news_in_its_output() -> None:
    shown: List[str] = []

    class Cells:
        def publish_stream(self, text: str, before: object) -> None:
            shown.append(text)
    clock = Clock()
    watch = JobWatch(True, clock)
    header = b'{"msg_type": "execute_request"}'
    watch.show_in_cell(Cells(), "shell", [b"id", b"<IDS|MSG>", b"sig", header, b"{}", b"{}", b"{}"])
    watch.feed("PXKJOB state Slurm|3|PENDING|Priority|0|")
    clock.now += 7
    watch.show_in_cell(Cells(), "shell", [b"id", b"<IDS|MSG>", b"sig", header, b"{}", b"{}", b"{}"])
    watch.show_in_cell(Cells(), "control", [b"id", b"<IDS|MSG>", b"sig", header, b"{}", b"{}", b"{}"])
    assert shown == ["[proxykernel] Slurm job 3 PENDING (Priority) for 7 s; the cell runs when the job starts\n"]


def test_what_a_test_submission_said() -> None:
    said = "sbatch: Job 2 to start at 2024-05-02T10:16:02 using 4 processors on nodes n7 in partition gpu"
    assert Slurm().estimated_start(said) == "2024-05-02T10:16:02 (4 processors on nodes n7 in partition gpu)"
    assert Slurm().estimated_start("sbatch: something else") is None
    assert refusal("sbatch: unrecognized option '--x'\nTry \"sbatch --help\" for more information\n", 255) == \
        "unrecognized option '--x'"
    assert refusal("sbatch: error: invalid partition specified: nope\nallocation failure: Invalid\n", 1) == \
        "invalid partition specified: nope"
    assert refusal("", 1) == "no message (exit code 1)"


def test_a_short_wait_is_shown_to_the_hundredth() -> None:
    watch = JobWatch(True, Clock())
    watch.feed("PXKJOB state Slurm|3|RUNNING|None|0.052|n1")
    assert watch.news == "Slurm job 3 RUNNING on n1 after 0.05 s in the queue"
