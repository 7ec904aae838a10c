"""``python -m bench.stress``: many short kernel sessions, counting the ones that stall.

Issue 9's pattern, as a new user's benchmark drives a kernel: start it through a kernelspec with
``KernelManager``; resend ``kernel_info_request`` every 0.25 s until a reply (so two or three are in
flight); resend a silent ``execute("pass")`` every 0.2 s until IOPub says ``idle`` for one of them;
then at once an execute with ``user_expressions`` until its reply; close; ``shutdown_kernel(now=False)``.
A session in which any step waits longer than ``--stall`` seconds is counted as stalled (that is the
lost wake-up: a request sitting unread in the proxy's socket).

Sessions run one after another in each of ``--workers`` processes (jupyter_client's blocking
managers want a process each), against a private sshd on 127.0.0.1 (``bench.run.Bench``), with a
shared runtime directory so starts reuse the host's ssh connection. A start that fails is counted
apart, with the proxy's sentence: with several workers, a port that jupyter_client picked can be
taken by another process before the proxy binds it ("Address already in use"), as it could before
a local ipykernel binds it.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from queue import Empty
from typing import Any, Callable, Dict, List, Optional

from jupyter_client import KernelManager
from jupyter_client.kernelspec import KernelSpecManager

from bench.run import QUICK, ROOT, Bench

__all__ = ["main", "session"]

RESULTS = ROOT / "bench" / "results"  # where a stalled session's log is kept
KERNEL_INFO_EVERY = 0.25
PASS_EVERY = 0.2


class Stalled(Exception):
    """A step of a session waited longer than the stall limit."""


def _wait_for(get: Callable[..., Dict[str, Any]], matches: Callable[[Dict[str, Any]], bool], sent: List[str],
              resend: Optional[Callable[[], str]], every: float, deadline: float, step: str) -> Dict[str, Any]:
    """Messages from ``get`` (a client's shell or IOPub queue) until one for a request in ``sent``
    that ``matches``; with ``resend``, the request is sent again every ``every`` s meanwhile."""
    next_send = time.monotonic() + every
    while True:
        now = time.monotonic()
        if now > deadline:
            raise Stalled(step)
        if resend is not None and now >= next_send:
            sent.append(resend())
            next_send = now + every
        try:
            msg = get(timeout=min(every / 2, max(deadline - now, 0.01)))  # resends stay on time
        except Empty:
            continue
        if msg["parent_header"].get("msg_id") in sent and matches(msg):
            return msg


def _is_idle(msg: Dict[str, Any]) -> bool:
    return msg["msg_type"] == "status" and msg["content"].get("execution_state") == "idle"


def session(ksm: KernelSpecManager, name: str, stall: float, log: Any) -> Dict[str, Any]:
    """One session of the pattern; returns its timings and, if it stalled, the step; if the proxy
    ended instead (a failed start, not a lost message), its error sentence."""
    km = KernelManager(kernel_name=name, kernel_spec_manager=ksm)
    began = time.monotonic()
    result: Dict[str, Any] = {"stalled": None}
    km.start_kernel(stdout=log, stderr=log, cwd=str(ROOT))
    kc = km.client()
    kc.start_channels(hb=False)
    try:
        info = [kc.kernel_info()]
        _wait_for(kc.get_shell_msg, lambda msg: True, info, kc.kernel_info, KERNEL_INFO_EVERY,
                  time.monotonic() + 60.0, "kernel_info")
        result["ready_s"] = time.monotonic() - began
        run = lambda: kc.execute("pass", silent=True, store_history=False)  # noqa: E731
        _wait_for(kc.get_iopub_msg, _is_idle, [run()], run, PASS_EVERY, time.monotonic() + stall, "execute pass")
        expr = [kc.execute("x = 1", user_expressions={"x": "x + 1"})]
        reply = _wait_for(kc.get_shell_msg, lambda msg: True, expr, None, 0.2, time.monotonic() + stall,
                          "user_expressions")
        if reply["content"]["user_expressions"]["x"]["data"]["text/plain"] != "2":
            raise Stalled("wrong user_expressions reply")
    except Stalled as stalled:
        if km.is_alive():
            result["stalled"] = str(stalled)
        else:  # not a lost message: the proxy ended, and said why in its log
            result["failed_start"] = _last_error(log.name)
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=False)
        km.cleanup_resources()
    result["seconds"] = time.monotonic() - began
    return result


def _last_error(log_path: str) -> str:
    """The proxy's error sentence, from its log."""
    with open(log_path, errors="replace") as log:
        errors = [line.strip() for line in log if "ERROR]" in line]
    return errors[-1] if errors else "the proxy exited without an error line"


def worker(spec_dir: str, name: str, sessions: int, stall: float, log_dir: str) -> int:
    """One worker process: ``sessions`` sessions, one JSON line each on stdout. Each session's
    proxy log is kept (in ``log_dir``) only if the session stalled."""
    ksm = KernelSpecManager(kernel_dirs=[spec_dir])
    for _ in range(sessions):
        with tempfile.NamedTemporaryFile(prefix="session-", suffix=".log", dir=log_dir, delete=False) as log:
            result = session(ksm, name, stall, log)
        if result["stalled"] or result.get("failed_start"):
            result["log"] = log.name
        else:
            os.unlink(log.name)
        print(json.dumps(result), flush=True)
    return 0


def run(sessions: int, workers: int, stall: float, say: Any = print) -> Dict[str, Any]:
    """Start the sshd and kernelspecs, split the sessions among worker processes, count stalls."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    with Bench(QUICK, ["warm"], say=say) as bench:
        spec = bench.specs["warm"]
        bench.prime(spec)  # agent cached, the host's ssh connection open: as for any later start
        spec_dir = str(bench.tmp / "specs" / "kernels")
        env = dict(os.environ, **spec.env)
        shares = [sessions // workers + (1 if i < sessions % workers else 0) for i in range(workers)]
        procs = [subprocess.Popen(
            [sys.executable, "-m", "bench.stress", "--worker", spec_dir, "--kernel", spec.name,
             "--sessions", str(share), "--stall", str(stall), "--log", str(RESULTS)],
            cwd=str(ROOT), env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
            for share in shares if share]
        results: List[Dict[str, Any]] = []
        for proc in procs:
            out, _ = proc.communicate(timeout=sessions * (stall + 60.0))
            results.extend(json.loads(line) for line in out.splitlines() if line.startswith("{"))
        bench.stop_masters()
    stalled = ["%s: see %s" % (r["stalled"], r["log"]) for r in results if r["stalled"]]
    failed = [r["failed_start"] for r in results if r.get("failed_start")]
    ready = sorted(r["ready_s"] for r in results if "ready_s" in r)
    return {"sessions": len(results), "stalled": len(stalled), "stalled_steps": stalled,
            "failed_starts": failed,
            "ready_median_s": ready[len(ready) // 2] if ready else None,
            "workers_ok": all(proc.returncode == 0 for proc in procs)}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.stress", description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=500)
    parser.add_argument("--workers", type=int, default=4, help="sessions run in this many processes")
    parser.add_argument("--stall", type=float, default=10.0,
                        help="seconds a step may wait before the session counts as stalled")
    parser.add_argument("--worker", metavar="SPEC_DIR", help=argparse.SUPPRESS)
    parser.add_argument("--kernel", help=argparse.SUPPRESS)
    parser.add_argument("--log", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args.worker, args.kernel, args.sessions, args.stall, args.log)
    began = time.monotonic()
    say = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    result = run(args.sessions, args.workers, args.stall, say)
    result["seconds"] = round(time.monotonic() - began, 1)
    print(json.dumps(result))
    print("%d sessions in %.0f s (%d workers), %d stalled, %d failed to start; median start %.2f s"
          % (result["sessions"], result["seconds"], args.workers, result["stalled"],
             len(result["failed_starts"]), result["ready_median_s"] or 0.0), file=sys.stderr)
    for sentence in result["failed_starts"]:
        print("  failed start: %s" % sentence, file=sys.stderr)
    ok = result["stalled"] == 0 and not result["failed_starts"] and result["sessions"] == args.sessions
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
