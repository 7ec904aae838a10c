"""``python -m bench.outage``: how fast proxykernel notices a dead link, and how fast it recovers.

Against a private sshd on 127.0.0.1 (``proxykernel.testing.sshd.SSHServer``), with a kernel printing a
numbered line every 20 ms, for each heartbeat setting and each repetition (a fresh kernel each):

1. **detect**: SIGSTOP of sshd's process that carries the stream on the remote (a hung link:
   nothing is closed, nothing moves); the time until the proxy starts a new ``ssh``. Then **relink**: from that
   new ``ssh``'s start to the first new output line at the client (login, attach, resume, replay).
2. **return**: the link goes down for good (the sshd listener is stopped too, so the proxy's new
   ``ssh`` waits in the connection queue), and comes back (SIGCONT of both) 2 s after the proxy began
   that attempt; the time from the return to the first new output line at the client.

Medians over ``--reps`` repetitions; printed as a table and written as JSON. Every process is found in
/proc and signalled by PID; everything started is stopped.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from queue import Empty
from typing import Any, Dict, List, Optional, Sequence

from bench import procs
from bench.kernels import Kernel, Spec, wait_ready
from proxykernel.testing.procs import descendants, read_stat
from proxykernel.testing.sshd import SSHServer, stream_peer_pid

__all__ = ["main", "SETTINGS"]

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
# name -> extra proxy arguments; "default" is what a user gets without options.
SETTINGS = {
    "default": [],
    "fast": ["--heartbeat-interval", "0.5", "--heartbeat-timeout", "2"],
}
HOLD = 2.0  # seconds the link stays down after the proxy's next attempt began (phase 2)
WAIT = 30.0  # bound on every wait
LINE_EVERY = 0.02

# Prints a number every 20 ms until the stop-file exists (the kernel runs on this machine), at most 5 min.
PRINTER = ("import os, time\ni = 0\nwhile not os.path.exists({stop!r}) and i < 15000:\n"
           "    print(i, flush=True)\n    i += 1\n    time.sleep(%g)\n" % LINE_EVERY)


class Timeout(Exception):
    """Something the benchmark waits for did not happen within WAIT seconds."""


def _start_time(pid: int) -> int:
    try:
        with open("/proc/%d/stat" % pid) as handle:
            return int(handle.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return 0


def ssh_clients(proxy: int) -> List[int]:
    """The proxy's live ``ssh`` children."""
    return [p for p in descendants(proxy) if procs.alive(p) and (read_stat(p) or ("",))[0] == "ssh"
            and (read_stat(p) or ("", "", 0))[2] == proxy]


def stream_carrier(sshd: SSHServer) -> int:
    """sshd's process that carries the kernel's stream to the network (the daemon, the kernel's
    parent, holds the other end of its pipes): stopping it hangs the link, nothing closes."""
    kernels = procs.kernel_pids(sshd.pid)
    if not kernels:
        raise Timeout("no kernel on the remote side")
    daemon = (read_stat(max(kernels, key=_start_time)) or ("", "", 0))[2]
    try:
        return stream_peer_pid(sshd, daemon)
    except LookupError:
        raise Timeout("no sshd process carries the agent's stream") from None


def listener_pid(sshd: SSHServer) -> int:
    return [p for p in descendants(sshd.pid) if (read_stat(p) or ("", "", 0))[2] == sshd.pid][0]


class Lines:
    """The printer cell's output at the client, read by a thread that stamps each message's arrival.

    The thread owns the client's IOPub socket until ``close``; reading continuously keeps the stamps
    true (a message read late would look like one that arrived late).
    """

    def __init__(self, kernel: Kernel, msg_id: str) -> None:
        self.kc = kernel.kc
        self.msg_id = msg_id
        self.arrivals: List[float] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        while not self.stopping.is_set():
            try:
                msg = self.kc.iopub_channel.get_msg(timeout=0.05)
            except Empty:
                continue
            if msg["msg_type"] == "stream" and msg["parent_header"].get("msg_id") == self.msg_id:
                self.arrivals.append(time.perf_counter())

    def first_after(self, since: float, timeout: float = WAIT) -> float:
        """When the first output line that arrived after ``since`` did (waits for it)."""
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            later = [t for t in self.arrivals[-2000:] if t > since]
            if later:
                return later[0]
            time.sleep(0.01)
        raise Timeout("no output within %.0f s" % timeout)

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(5)


def new_ssh(proxy: int, old: Sequence[int], timeout: float = WAIT) -> float:
    """Wait until the proxy runs an ssh not in ``old``; returns when that was seen (10 ms polls)."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if [p for p in ssh_clients(proxy) if p not in old]:
            return time.perf_counter()
        time.sleep(0.01)
    raise Timeout("the proxy started no new ssh within %.0f s" % timeout)


def one_round(sshd: SSHServer, spec: Spec, log: Any, tmp: Path) -> Dict[str, float]:
    """One fresh kernel: a hang detected and re-linked (phase 1), then a link that returns (phase 2)."""
    stop = tmp / ("stop-%d" % time.monotonic_ns())
    kernel = Kernel(spec, log, str(ROOT))
    stopped: List[int] = []
    lines: Optional[Lines] = None
    try:
        if wait_ready([kernel]):
            raise Timeout("the kernel was not ready")
        proxy = kernel.pid
        lines = Lines(kernel, kernel.kc.execute(PRINTER.format(stop=str(stop))))
        lines.first_after(0.0)
        time.sleep(1.0)

        # Phase 1: a hung link.
        carrier, old = stream_carrier(sshd), ssh_clients(proxy)
        os.kill(carrier, signal.SIGSTOP)
        stopped.append(carrier)
        hung = time.perf_counter()
        detected = new_ssh(proxy, old)
        relinked = lines.first_after(detected)
        time.sleep(1.0)

        # Phase 2: the link goes away until we bring it back.
        listener = listener_pid(sshd)
        os.kill(listener, signal.SIGSTOP)
        stopped.append(listener)
        carrier, old = stream_carrier(sshd), ssh_clients(proxy)
        os.kill(carrier, signal.SIGSTOP)
        stopped.append(carrier)
        new_ssh(proxy, old)  # the dead link was noticed; this attempt now waits for the listener
        time.sleep(HOLD)
        for pid in reversed(stopped):
            os.kill(pid, signal.SIGCONT)
        stopped.clear()
        returned = time.perf_counter()
        first = lines.first_after(returned)
        return {"detect_s": detected - hung, "relink_s": relinked - detected, "return_s": first - returned}
    finally:
        for pid in stopped:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        stop.touch()
        if lines is not None:
            lines.close()
        kernel.stop()


def measure(reps: int, settings: Sequence[str], say: Any) -> Dict[str, Any]:
    results: Dict[str, Any] = {}
    RESULTS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="pxk-outage-") as tmpdir, \
            open(RESULTS / "outage-kernels.log", "wb") as log, SSHServer() as sshd:
        tmp = Path(tmpdir)
        for name in settings:
            argv = [sys.executable, "-m", "proxykernel", "--host", sshd.alias, "--python", sys.executable,
                    "--ssh-config", str(sshd.config_path), *SETTINGS[name],
                    # every reconnect must log in anew (through a shared connection none would)
                    "--no-connection-sharing",
                    "-f", "{connection_file}"]
            spec = Spec("outage-" + name, argv, tmp / "specs")
            rounds = []
            for rep in range(reps):
                rounds.append(one_round(sshd, spec, log, tmp))
                say("%s #%d: %s" % (name, rep + 1, ", ".join("%s %.2f" % kv for kv in rounds[-1].items())))
            results[name] = {
                "args": SETTINGS[name],
                "rounds": rounds,
                "median": {key: statistics.median(r[key] for r in rounds) for key in rounds[0]},
            }
    return results


def table(results: Dict[str, Any]) -> str:
    rows = [("setting", "detect (s)", "relink (s)", "return -> first output (s)")]
    for name, result in results.items():
        med = result["median"]
        label = "%s (%s)" % (name, " ".join(result["args"]) or "interval 1, timeout 5")
        rows.append((label, "%.2f" % med["detect_s"], "%.2f" % med["relink_s"], "%.2f" % med["return_s"]))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.outage", description=(
        "Detection time of a hung link and time from the link's return to the first relayed output, "
        "with the default heartbeat and a fast one."))
    parser.add_argument("--reps", type=int, default=3, help="repetitions per setting (default 3)")
    parser.add_argument("--settings", default=",".join(SETTINGS),
                        help="a subset of %s (default: all)" % ",".join(SETTINGS))
    parser.add_argument("--json", metavar="PATH", type=Path, default=RESULTS / "outage.json",
                        help="where to write the results (default: bench/results/outage.json)")
    args = parser.parse_args(argv)
    settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    unknown = sorted(set(settings) - set(SETTINGS))
    if unknown or args.reps < 1:
        parser.error("unknown setting(s) %s; choose from %s" % (", ".join(unknown), ", ".join(SETTINGS))
                     if unknown else "--reps must be at least 1")
    say = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    started = time.time()
    results = measure(args.reps, settings, say)
    document = {"meta": {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "seconds": round(time.time() - started, 1),
                         "reps": args.reps, "host": platform.node(), "loadavg": os.getloadavg()},
                "settings": results}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(document, indent=1, sort_keys=True) + "\n")
    print(table(results))
    print("\nmedians of %d; detect = SIGSTOP of sshd's process carrying the stream until the proxy "
          "starts a new ssh; relink = that ssh's start until the first new output line; return = SIGCONT "
          "of the stopped sshd listener and that process until the first new output line. JSON: %s"
          % (args.reps, args.json))
    return 0


if __name__ == "__main__":
    sys.exit(main())
