"""Printing a run: the side-by-side table with ratios, issue 5's targets, and a baseline comparison.

Pure functions of the result dict that ``bench.run.Bench.run()`` returns (and that the JSON holds).
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Tuple

__all__ = ["FIGURES", "WAN_FIGURES", "SLURM_FIGURES", "table", "wan_table", "slurm_table", "targets", "compare"]

# key, label, unit, which way is better
FIGURES: List[Tuple[str, str, str, str]] = [
    ("start_s", "start -> kernel_info_reply (median)", "s", "lower"),
    ("restart_s", "restart -> kernel_info_reply (median)", "s", "lower"),
    ("pass_ms", "execute 'pass' round trip, median", "ms", "lower"),
    ("pass_p99_ms", "execute 'pass' round trip, p99", "ms", "lower"),
    ("comm_ms", "comm message echo, median", "ms", "lower"),
    ("stdout_mb_s", "stdout throughput", "MB/s", "higher"),
    ("display_mb_s", "display_data throughput", "MB/s", "higher"),
    ("local_rss_mb", "peak RSS, local proxy / launcher", "MiB", "lower"),
    ("local_ssh_rss_mb", "peak RSS, local ssh client", "MiB", "lower"),
    ("remote_rss_mb", "peak RSS, remote agent process(es), sum", "MiB", "lower"),
    ("remote_rss_max_mb", "peak RSS, largest remote agent process", "MiB", "lower"),
    ("concurrent_s", "N kernels at once, all ready", "s", "lower"),
]
WAN_FIGURES: List[Tuple[str, str, str, str]] = [
    ("ssh_true_s", "ssh HOST true", "s", "lower"),
    ("ssh_true_rtts", "ssh HOST true, in round trips", "RTT", "lower"),
    ("sshl_start_s", "ssh -L start", "s", "lower"),
    ("sshl_extra_rtts", "ssh -L start - local start, in round trips", "RTT", "lower"),
    ("cold_start_s", "proxykernel cold start", "s", "lower"),
    ("cold_extra_rtts", "cold start - local start, in round trips", "RTT", "lower"),
    ("cold_beyond_ssh_rtts", "cold start - local start - ssh true, in RTT", "RTT", "lower"),
    ("warm_start_s", "proxykernel warm start", "s", "lower"),
    ("warm_extra_rtts", "warm start - local start, in round trips", "RTT", "lower"),
    ("sshl_pass_ms", "ssh -L 'pass' round trip, median", "ms", "lower"),
    ("sshl_pass_rtts", "ssh -L 'pass', in round trips", "RTT", "lower"),
    ("warm_pass_ms", "proxykernel 'pass' round trip, median", "ms", "lower"),
    ("warm_pass_rtts", "proxykernel 'pass', in round trips", "RTT", "lower"),
]
# The Slurm section (bench/slurm.py), beside the login-node kernel (d)'s same figure.
SLURM_FIGURES: List[Tuple[str, str, str, str]] = [
    ("start_s", "start -> kernel_info_reply (median)", "s", "lower"),
    ("queue_s", "  of which in the queue (median)", "s", "lower"),
    ("start_minus_queue_s", "  start without the queue (median)", "s", "lower"),
    ("restart_s", "restart in place (same job), median", "s", "lower"),
    ("pass_ms", "execute 'pass' round trip, median", "ms", "lower"),
    ("stdout_mb_s", "stdout throughput", "MB/s", "higher"),
]
COLUMNS = [("local", "(a) local"), ("sshl", "(b) ssh -L"), ("cold", "(c) pxk cold"),
           ("warm", "(d) pxk warm")]
RATIOS = [("cold", "local", "c/a"), ("warm", "local", "d/a"), ("cold", "sshl", "c/b"),
          ("warm", "sshl", "d/b")]


def _num(value: Optional[float], width: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-".rjust(width)
    digits = 3 if abs(value) < 10 else (1 if abs(value) < 1000 else 0)
    return ("%.*f" % (digits, value)).rjust(width)


def _ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return a / b if a is not None and b and not math.isnan(a) else None


def table(result: Dict[str, Any]) -> str:
    figures: Dict[str, Dict[str, float]] = result["figures"]
    n = result["meta"]["sizes"]["concurrent"]
    head = "%-40s %-5s" % ("figure", "unit") + "".join("%13s" % title for _, title in COLUMNS) \
        + "".join("%7s" % title for _, _, title in RATIOS)
    lines = [head, "-" * len(head)]
    for key, label, unit, _ in FIGURES:
        values = [figures.get(v, {}).get(key) for v, _ in COLUMNS]
        if all(value is None for value in values):
            continue
        label = label.replace("N kernels", "%d kernels" % n)
        row = "%-40s %-5s" % (label, unit) + "".join(_num(value, 13) for value in values)
        for top, bottom, _ in RATIOS:
            row += _num(_ratio(figures.get(top, {}).get(key), figures.get(bottom, {}).get(key)), 7)
        lines.append(row)
    failures = result.get("failures", {})
    lines.append("%-40s %-5s" % ("failures among the %d kernels at once" % n, "")
                 + "".join(("%13s" % failures[v]["concurrent"]) if v in failures else "%13s" % "-"
                           for v, _ in COLUMNS))
    lines.append("ratios are column / column: for s, ms and MiB lower is better, for MB/s higher. "
                 "ssh HOST true: %.3f s." % result.get("reference", {}).get("ssh_true_s", float("nan")))
    return "\n".join(lines)


def wan_table(result: Dict[str, Any]) -> str:
    wan = result.get("wan")
    if not wan:
        return ""
    lines = ["emulated WAN: %.0f ms round trip (a delaying TCP proxy in front of sshd); local start "
             "%.3f s" % (wan["rtt_ms"], wan["local_start_s"])]
    for key, label, unit, _ in WAN_FIGURES:
        if key in wan:
            lines.append("  %-46s %-4s %s" % (label, unit, _num(wan[key], 9)))
    return "\n".join(lines)


def slurm_table(result: Dict[str, Any]) -> str:
    """The Slurm section beside the login-node figures (d), and where they come from."""
    if "slurm_skipped" in result:
        return "no Slurm figures: %s" % result["slurm_skipped"]
    slurm = result.get("slurm")
    if not slurm:
        return ""
    warm = result["figures"].get("warm", {})
    head = "%-40s %-5s%16s%16s" % ("a kernel in a Slurm job", "unit", "(d) login node", "(e) Slurm job")
    lines = [head, "-" * len(head)]
    for key, label, unit, _ in SLURM_FIGURES:
        lines.append("%-40s %-5s%16s%16s" % (label, unit, _num(warm.get(key), 16).strip(),
                                             _num(slurm.get(key), 16).strip()))
    lines.append("(e): %s" % result.get("slurm_source", ""))
    return "\n".join(lines)


def targets(result: Dict[str, Any]) -> str:
    """Issue 5's "done when" criteria, evaluated on this run (only where the figures exist)."""
    f = result["figures"]
    get = lambda v, k: f.get(v, {}).get(k)  # noqa: E731
    ssh_true = result.get("reference", {}).get("ssh_true_s")
    checks: List[Tuple[bool, str]] = []

    def check(ok: bool, text: str) -> None:
        checks.append((ok, text))

    local_start = get("local", "start_s")
    if local_start is not None and get("cold", "start_s") is not None and ssh_true is not None:
        limit = local_start + ssh_true + 0.1
        check(get("cold", "start_s") <= limit, "1. cold start %.3f s <= local %.3f + ssh true %.3f + 0.1 = %.3f s"
              % (get("cold", "start_s"), local_start, ssh_true, limit))
    if local_start is not None and get("warm", "start_s") is not None:
        limit = local_start + 0.15
        check(get("warm", "start_s") <= limit, "1. warm start %.3f s <= local %.3f + 0.15 = %.3f s"
              % (get("warm", "start_s"), local_start, limit))
    for key, factor in (("pass_ms", 1.1), ("pass_p99_ms", 1.3)):
        if get("local", key) is not None and get("warm", key) is not None:
            check(get("warm", key) <= factor * get("local", key), "2. %s %.2f ms <= %.1f x local %.2f ms"
                  % (key, get("warm", key), factor, get("local", key)))
    for key in ("stdout_mb_s", "display_mb_s"):
        if get("local", key) is not None and get("warm", key) is not None:
            check(get("warm", key) >= 0.9 * get("local", key), "3. %s %.0f >= 0.9 x local %.0f"
                  % (key, get("warm", key), get("local", key)))
        if get("sshl", key) is not None and get("warm", key) is not None:
            check(get("warm", key) >= 1.2 * get("sshl", key), "3. %s %.0f >= 1.2 x ssh -L %.0f"
                  % (key, get("warm", key), get("sshl", key)))
    for key in ("local_rss_mb", "remote_rss_mb"):
        if get("warm", key) is not None:
            check(get("warm", key) <= 40, "4. %s %.1f MiB <= 40" % (key, get("warm", key)))
    wan = result.get("wan")
    if wan:
        check(wan["cold_beyond_ssh_rtts"] <= 2, "5. WAN cold start beyond local start + ssh true: %.1f "
              "round trips <= 2" % wan["cold_beyond_ssh_rtts"])
        if get("local", "pass_ms") is not None and "warm_pass_ms" in wan:
            limit = get("local", "pass_ms") + 1.1 * wan["rtt_ms"]
            check(wan["warm_pass_ms"] <= limit, "5. WAN 'pass' %.1f ms <= local %.2f + one round trip "
                  "(%.0f ms, +10%%) = %.1f ms" % (wan["warm_pass_ms"], get("local", "pass_ms"),
                                                 wan["rtt_ms"], limit))
    cold = get("cold", "start_s")
    for variant in ("cold", "warm"):
        if cold is not None and get(variant, "concurrent_s") is not None:
            fails = result.get("failures", {}).get(variant, {}).get("concurrent", 0)
            check(get(variant, "concurrent_s") <= 3 * cold and fails == 0,
                  "6. %d %s kernels at once ready in %.2f s <= 3 x cold start %.3f s, failures %d"
                  % (result["meta"]["sizes"]["concurrent"], variant, get(variant, "concurrent_s"), cold, fails))
    return "\n".join("%s  %s" % ("met   " if ok else "NOT met", text) for ok, text in checks)


def compare(result: Dict[str, Any], baseline: Dict[str, Any], tolerance: float) -> List[str]:
    """What got worse than ``baseline`` by more than ``tolerance`` (0.1 = 10%): one line each."""
    worse: List[str] = []

    def judge(where: str, label: str, unit: str, better: str, now: Any, then: Any) -> None:
        if not isinstance(now, (int, float)) or not isinstance(then, (int, float)) or then <= 0:
            return
        change = now / then - 1
        if (better == "lower" and change > tolerance) or (better == "higher" and change < -tolerance):
            worse.append("%-22s %-46s %10.3f -> %10.3f %-5s (%+.0f%%)"
                         % (where, label, then, now, unit, 100 * change))

    for variant, _ in COLUMNS:
        for key, label, unit, better in FIGURES:
            judge(variant, label, unit, better, result.get("figures", {}).get(variant, {}).get(key),
                  baseline.get("figures", {}).get(variant, {}).get(key))
        now_f = result.get("failures", {}).get(variant, {}).get("concurrent")
        then_f = baseline.get("failures", {}).get(variant, {}).get("concurrent")
        if isinstance(now_f, int) and isinstance(then_f, int) and now_f > then_f:
            worse.append("%-22s %-46s %10d -> %10d" % (variant, "failures among kernels at once", then_f, now_f))
    for key, label, unit, better in WAN_FIGURES:
        judge("wan", label, unit, better, (result.get("wan") or {}).get(key),
              (baseline.get("wan") or {}).get(key))
    for key, label, unit, better in SLURM_FIGURES:
        judge("slurm", label.strip(), unit, better, (result.get("slurm") or {}).get(key),
              (baseline.get("slurm") or {}).get(key))
    return worse
