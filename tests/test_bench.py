"""The benchmark runs end to end with tiny sizes and reports every figure (not a timed test)."""
from __future__ import annotations

import json
import math
from dataclasses import replace
from typing import Any, Dict, List

import pytest

from bench.report import FIGURES, SLURM_FIGURES, WAN_FIGURES, compare, slurm_table, table, targets, wan_table
from bench.run import VARIANTS, Bench, Sizes
from proxykernel.testing.slurm import SlurmCluster

# Timing- and memory-sensitive: run alone, after the parallel part of the suite (scripts/test).
pytestmark = pytest.mark.serial

TINY = Sizes(starts=1, restarts=1, pass_count=10, comm_count=3, stdout_bytes=256 * 1024, stdout_reps=1,
             display_bytes=256 * 1024, display_reps=1, concurrent=2, ssh_true=1, wan_starts=1,
             wan_pass_count=3, warm_up=False)

# What each variant must report: the cold start's steady state is the warm one's, so it has none,
# and only proxied kernels have a remote agent.
STEADY = {"pass_ms", "pass_p99_ms", "comm_ms", "stdout_mb_s", "display_mb_s"}
EXPECTED = {
    "local": {"start_s", "restart_s", "concurrent_s"} | STEADY,
    "sshl": {"start_s", "restart_s", "concurrent_s", "local_rss_mb", "local_ssh_rss_mb"} | STEADY,
    "cold": {"start_s", "restart_s", "concurrent_s"},
    "warm": {key for key, _, _, _ in FIGURES},
}


def _positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and not math.isnan(value) and value > 0


def test_a_tiny_run_reports_every_figure() -> None:
    lines: List[str] = []
    with Bench(TINY, VARIANTS, wan=True, say=lines.append) as bench:
        result: Dict[str, Any] = json.loads(json.dumps(bench.run()))
    for variant in VARIANTS:
        figures = result["figures"][variant]
        assert EXPECTED[variant] <= set(figures), (variant, sorted(figures))
        bad = {key: value for key, value in figures.items() if not _positive(value)}
        assert not bad, (variant, bad)
        assert result["failures"][variant]["concurrent"] == 0
    wan = result["wan"]
    for key, _, _, _ in WAN_FIGURES:
        if key.endswith("_rtts") and key != "ssh_true_rtts":
            assert isinstance(wan[key], float)  # a difference of times: may be small or negative
        else:
            assert _positive(wan[key]), (key, wan.get(key))
    assert _positive(result["reference"]["ssh_true_s"])

    text = table(result) + wan_table(result) + targets(result)
    assert "(d) pxk warm" in text and "emulated WAN" in text
    assert compare(result, result, 0.1) == []
    slower = json.loads(json.dumps(result))
    slower["figures"]["warm"]["pass_ms"] /= 2  # the baseline was twice as fast
    slower["figures"]["warm"]["stdout_mb_s"] *= 2
    worse = compare(result, slower, 0.1)
    assert len(worse) == 2 and all("warm" in line for line in worse)


def test_the_slurm_section_reports_its_figures_beside_the_login_node(slurm: SlurmCluster) -> None:
    sizes = replace(TINY, stdout_reps=1, concurrent=0)
    with Bench(sizes, [], say=lambda _: None, slurm=slurm) as bench:  # (d) is the other test's
        result: Dict[str, Any] = json.loads(json.dumps(bench.run()))
    figures = result["slurm"]
    assert {key for key, _, _, _ in SLURM_FIGURES} == set(figures)
    assert all(_positive(value) for value in figures.values()), figures
    assert figures["start_minus_queue_s"] < figures["start_s"]
    text = slurm_table(result)
    assert "(d) login node" in text and "(e) Slurm job" in text and "proxykernel/testing/slurm.py" in text
    assert slurm.jobs() == []
