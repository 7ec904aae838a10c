"""One benchmark run: a private sshd on loopback, four ways to reach a kernel, every figure.

Called by ``bench.__main__`` (and by tests/test_bench.py with tiny sizes). ``Bench.run()`` returns
the result dict that ``bench.report`` prints and writes as JSON.
"""
from __future__ import annotations

import glob
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, IO, List, Optional

from bench import procs
from bench.kernels import (Kernel, KernelError, Spec, measure_comm, measure_display, measure_pass,
                           measure_stdout, peak_rss, start_kernels, stop_kernels, wait_ready)
from proxykernel.testing.sshd import SSHServer

__all__ = ["Sizes", "FULL", "QUICK", "VARIANTS", "Bench", "ROOT"]

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = ("local", "sshl", "cold", "warm")
LABELS = {"local": "(a) local ipykernel", "sshl": "(b) ssh -L tunnel", "cold": "(c) proxykernel cold",
          "warm": "(d) proxykernel warm"}
WAN_ALIAS = "pxk-wan"
MB = 1e6


@dataclass(frozen=True)
class Sizes:
    starts: int = 5
    restarts: int = 3
    pass_count: int = 300
    comm_count: int = 100
    stdout_bytes: int = 20 * 2 ** 20
    stdout_reps: int = 3
    display_bytes: int = 10 * 2 ** 20
    display_reps: int = 3
    concurrent: int = 20
    ssh_true: int = 5
    wan_delay: float = 0.02  # seconds, each way
    wan_starts: int = 3
    wan_pass_count: int = 100
    warm_up: bool = True  # one untimed local start first (a cold page cache would hit variant (a))


FULL = Sizes()
QUICK = Sizes(starts=2, restarts=1, pass_count=300, comm_count=50, stdout_reps=1, display_reps=1,
              concurrent=8, ssh_true=3, wan_starts=1, wan_pass_count=30)


def _median(values: List[float]) -> float:
    return statistics.median(values)


def _p99(values: List[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))]


def clear_agent_cache(cache_home: Path) -> None:
    for path in glob.glob(str(cache_home / "proxykernel" / "agent-*")):
        shutil.rmtree(path, ignore_errors=True)


class Bench:
    """Owns the sshd, the kernelspecs, the log and every process; ``close()`` stops them all."""

    def __init__(self, sizes: Sizes = FULL, variants: Any = VARIANTS, wan: bool = False,
                 log_path: Optional[Path] = None, say: Callable[[str], None] = print,
                 slurm: Any = None) -> None:
        """``slurm``: True (or a running SlurmCluster to use) for the Slurm section (bench/slurm.py)."""
        self.sizes = sizes
        self.variants = [v for v in VARIANTS if v in variants]
        self.wan = wan
        self.slurm = slurm
        self.say = say
        self.tmp = Path(tempfile.mkdtemp(prefix="pxk-bench-"))
        self.log_path = log_path or self.tmp / "kernels.log"
        self.log: IO[bytes] = open(self.log_path, "ab")
        self.sshd = SSHServer(allow_tcp_forwarding=True)
        self.kernels: List[Kernel] = []
        self.helpers: List[subprocess.Popen] = []  # type: ignore[type-arg]
        self.specs: Dict[str, Spec] = {}
        self.fresh_runtime = 0
        # The "remote" is this machine and user: a cache of our own, so that emptying it for cold
        # starts never races with other proxykernel runs (tests, other benchmarks) on this host.
        self.cache_home = self.tmp / "remote-cache"

    # -- setup ---------------------------------------------------------------------------------
    def __enter__(self) -> "Bench":
        self.sshd.start()
        self.specs = self._specs(self.sshd.alias, str(self.sshd.config_path), "")
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _specs(self, alias: str, config: str, suffix: str) -> Dict[str, Spec]:
        py = sys.executable
        proxy = [py, "-m", "proxykernel", "--host", alias, "--python", py, "--ssh-config", config,
                 "--pre-command", "export XDG_CACHE_HOME=%s" % shlex.quote(str(self.cache_home)),
                 "-f", "{connection_file}"]
        sshl = [py, str(ROOT / "bench" / "sshl_kernel.py"), "--host", alias, "--ssh-config", config,
                "--python", py, "-f", "{connection_file}"]
        root = self.tmp / "specs"
        warm_run = self.tmp / "run-warm"
        warm_run.mkdir(mode=0o700, exist_ok=True)
        return {
            "local": Spec("local", None, root),
            "sshl": Spec("sshl" + suffix, sshl, root, interrupt_mode="message"),
            "cold": Spec("cold" + suffix, proxy, root),
            # A shared runtime directory, in case the proxy keeps a reusable connection there.
            "warm": Spec("warm" + suffix, proxy, root, env={"XDG_RUNTIME_DIR": str(warm_run)}),
        }

    def _prepare(self, variant: str, spec: Spec) -> None:
        """Before each cold start: no cached agent, and a runtime directory no earlier run used."""
        if variant == "cold":
            clear_agent_cache(self.cache_home)
            self.fresh_runtime += 1
            run_dir = self.tmp / ("run-cold-%d" % self.fresh_runtime)
            run_dir.mkdir(mode=0o700)
            spec.env["XDG_RUNTIME_DIR"] = str(run_dir)

    # -- kernels -------------------------------------------------------------------------------
    def start(self, variant: str, spec: Spec) -> Kernel:
        self._prepare(variant, spec)
        kernel = Kernel(spec, self.log, str(ROOT))
        self.kernels.append(kernel)
        failed = wait_ready([kernel])
        if failed:
            raise KernelError("%s: the kernel was not ready within the timeout; see %s"
                              % (spec.name, self.log_path))
        return kernel

    def prime(self, spec: Spec) -> None:
        """One untimed start and stop: then the agent is cached on the remote and the host's shared
        ssh connection is open, as after any kernel there in the last --connection-persist seconds.
        That is what "warm" means."""
        self.stop(self.start("warm", spec))

    def stop(self, kernel: Kernel) -> None:
        try:
            kernel.stop()
        finally:
            if kernel in self.kernels:
                self.kernels.remove(kernel)

    def stop_all(self, kernels: List[Kernel]) -> None:
        try:
            stop_kernels(kernels)
        finally:
            for kernel in kernels:
                if kernel in self.kernels:
                    self.kernels.remove(kernel)

    # -- the run -------------------------------------------------------------------------------
    def run(self) -> Dict[str, Any]:
        began = time.perf_counter()
        result: Dict[str, Any] = {"meta": self.meta(), "figures": {}, "failures": {}, "reference": {}}
        result["reference"]["ssh_true_s"] = self.ssh_true(self.sshd.alias, str(self.sshd.config_path))
        if self.sizes.warm_up:
            self.warm_up()
        for variant in self.variants:
            self.say("measuring %s ..." % LABELS[variant])
            figures, failures = self.measure(variant)
            result["figures"][variant] = figures
            result["failures"][variant] = failures
        if self.wan:
            self.say("measuring over the emulated WAN (%.0f ms round trip) ..." % (4e3 * self.sizes.wan_delay / 2))
            local_start = result["figures"].get("local", {}).get("start_s")
            result["wan"] = self.measure_wan(local_start)
        if self.slurm:
            self.measure_slurm(result)
        result["meta"]["seconds"] = round(time.perf_counter() - began, 1)
        result["meta"]["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
        self.stop_masters()  # by design they outlive their kernels by --connection-persist
        # Everything was shut down: what still runs on the "remote" (besides the sshd) was left over.
        result["meta"]["remote_leftovers"] = [" ".join(procs.cmdline(p))[:120]
                                              for p in self.sshd.session_pids()]
        return result

    def measure_slurm(self, result: Dict[str, Any]) -> None:
        """The Slurm section, where a cluster can be brought up; else why not, in ``slurm_skipped``."""
        from bench.slurm import SOURCE, measure_slurm, unavailable
        cluster = None if self.slurm is True else self.slurm
        why = unavailable() if cluster is None else None
        if why is not None:
            self.say("no Slurm section: %s" % why)
            result["slurm_skipped"] = why
            return
        self.say("measuring a kernel in a Slurm job (a single-node cluster on this machine) ...")
        result["slurm"] = measure_slurm(self, cluster)
        result["slurm_source"] = SOURCE

    def stop_masters(self) -> None:
        """``ssh -O exit`` for the shared ControlMasters the proxies left in our runtime dirs."""
        for control in glob.glob(str(self.tmp / "run-*" / "proxykernel" / "cm-*")):
            subprocess.run(["ssh", "-o", "ControlPath=" + control, "-O", "exit", "pxk-bench"],
                           stdin=subprocess.DEVNULL, capture_output=True, timeout=10)

    def warm_up(self) -> None:
        """One untimed local start, so that the first variant does not pay for a cold page cache."""
        self.stop(self.start("local", self.specs["local"]))

    def measure(self, variant: str) -> Any:
        sizes, spec = self.sizes, self.specs[variant]
        figures: Dict[str, float] = {}
        if variant == "warm":
            self.prime(spec)
        starts = []
        kernel = None
        for i in range(sizes.starts):
            kernel = self.start(variant, spec)
            starts.append(kernel.start_seconds)
            if i < sizes.starts - 1:
                self.stop(kernel)
        figures["start_s"] = _median(starts)
        assert kernel is not None
        try:
            if variant != "cold":  # the steady state of a cold-started kernel is the warm one's
                figures.update(self.steady_state(kernel))
            restarts = []
            for _ in range(sizes.restarts):
                self._prepare(variant, spec)
                restarts.append(kernel.restart())
            figures["restart_s"] = _median(restarts)
        finally:
            self.stop(kernel)
        concurrent, failures = self.concurrent(variant, spec)
        figures["concurrent_s"] = concurrent
        return figures, {"concurrent": failures}

    def steady_state(self, kernel: Kernel) -> Dict[str, float]:
        sizes, kc = self.sizes, kernel.kc
        figures: Dict[str, float] = {}
        passes = measure_pass(kc, sizes.pass_count)
        figures["pass_ms"] = 1e3 * _median(passes)
        figures["pass_p99_ms"] = 1e3 * _p99(passes)
        figures["comm_ms"] = 1e3 * _median(measure_comm(kc, sizes.comm_count))
        rates = []
        for _ in range(sizes.stdout_reps):
            nbytes, seconds = measure_stdout(kc, sizes.stdout_bytes)
            rates.append(nbytes / MB / seconds)
        figures["stdout_mb_s"] = _median(rates)
        rates = []
        for _ in range(sizes.display_reps):
            nbytes, seconds = measure_display(kc, sizes.display_bytes)
            rates.append(nbytes / MB / seconds)
        figures["display_mb_s"] = _median(rates)
        if kernel.spec.argv is not None:
            figures.update(peak_rss(kernel, self.sshd.pid if "sshl" not in kernel.spec.name else None))
        return figures

    def concurrent(self, variant: str, spec: Spec) -> Any:
        """``concurrent`` kernels started at once; seconds until the last is ready, and failures."""
        if self.sizes.concurrent <= 0:
            return 0.0, 0
        self._prepare(variant, spec)
        kernels: List[Kernel] = []
        try:
            kernels = start_kernels(spec, self.sizes.concurrent, self.log, str(ROOT))
            self.kernels.extend(kernels)
            failed = wait_ready(kernels)
            ready = [k.ready_at for k in kernels if k.ready_at is not None]
            first = min(k.started for k in kernels)
            return (max(ready) - first if ready else float("nan")), len(failed)
        finally:
            self.stop_all(kernels)

    # -- references ----------------------------------------------------------------------------
    def ssh_true(self, alias: str, config: str, count: Optional[int] = None) -> float:
        """Median seconds of ``ssh HOST true``: the floor under any remote start."""
        times = []
        for _ in range(count or self.sizes.ssh_true):
            began = time.perf_counter()
            subprocess.run(["ssh", "-F", config, alias, "true"], check=True,
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
            times.append(time.perf_counter() - began)
        return _median(times)

    def meta(self) -> Dict[str, Any]:
        def version(module: str) -> str:
            try:
                from importlib.metadata import version as v
                return v(module)
            except Exception:
                return "unknown"
        ssh = subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr.strip()
        try:
            commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                                    capture_output=True, text=True).stdout.strip()
        except OSError:
            commit = ""
        return {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "host": platform.node(),
                "loadavg_before": [round(x, 2) for x in os.getloadavg()],
                "cpus": os.cpu_count(), "python": platform.python_version(),
                "ipykernel": version("ipykernel"), "jupyter_client": version("jupyter_client"),
                "pyzmq": version("pyzmq"), "openssh": ssh, "commit": commit,
                "sizes": asdict(self.sizes), "variants": self.variants}

    # -- the emulated WAN ----------------------------------------------------------------------
    def measure_wan(self, local_start: Optional[float]) -> Dict[str, float]:
        sizes = self.sizes
        rtt = 2 * sizes.wan_delay
        port = self._start_delay_proxy()
        config = self._wan_config(port)
        specs = self._specs(WAN_ALIAS, config, "-wan")
        out: Dict[str, float] = {"rtt_ms": 1e3 * rtt}
        if local_start is None:
            kernel = self.start("local", self.specs["local"])
            local_start = kernel.start_seconds
            self.stop(kernel)
        out["local_start_s"] = local_start
        out["ssh_true_s"] = self.ssh_true(WAN_ALIAS, config)
        out["ssh_true_rtts"] = out["ssh_true_s"] / rtt
        for variant in ("sshl", "cold", "warm"):
            if variant == "warm":
                self.prime(specs[variant])
            times = []
            for i in range(sizes.wan_starts):
                kernel = self.start(variant, specs[variant])
                times.append(kernel.start_seconds)
                last = i == sizes.wan_starts - 1
                if last and variant != "cold":
                    passes = measure_pass(kernel.kc, sizes.wan_pass_count)
                    out["%s_pass_ms" % variant] = 1e3 * _median(passes)
                    out["%s_pass_rtts" % variant] = _median(passes) / rtt
                self.stop(kernel)
            out["%s_start_s" % variant] = _median(times)
            out["%s_extra_rtts" % variant] = (out["%s_start_s" % variant] - local_start) / rtt
        # Issue 5's target 5: cold start <= local start + ssh handshake + 2 round trips.
        out["cold_beyond_ssh_rtts"] = (out["cold_start_s"] - local_start - out["ssh_true_s"]) / rtt
        return out

    def _start_delay_proxy(self) -> int:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.delay", "--target-port", str(self.sshd.port),
             "--delay", str(self.sizes.wan_delay)],
            cwd=str(ROOT), stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, start_new_session=True)
        self.helpers.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline().decode().split()
        if len(line) != 2 or line[0] != "PORT":
            raise RuntimeError("the delaying proxy did not start")
        return int(line[1])

    def _wan_config(self, port: int) -> str:
        """An ssh config with a ``pxk-wan`` alias whose Port is the delaying proxy."""
        sshd = self.sshd
        known = self.tmp / "known_hosts_wan"
        key = Path(str(sshd.host_key_path) + ".pub").read_text().split()[:2]
        known.write_text("[127.0.0.1]:%d %s %s\n" % (port, key[0], key[1]))
        path = self.tmp / "ssh_config_wan"
        path.write_text(
            "Host %s\n    HostName 127.0.0.1\n    Port %d\n    User %s\n    IdentityFile %s\n"
            "    IdentitiesOnly yes\n    BatchMode yes\n    UserKnownHostsFile %s\n"
            "    GlobalKnownHostsFile /dev/null\n    UpdateHostKeys no\n    ConnectTimeout 10\n"
            "    LogLevel ERROR\n" % (WAN_ALIAS, port, sshd.user, sshd.client_key_path, known))
        path.chmod(0o600)
        return str(path)

    # -- teardown ------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop every kernel, helper and the sshd, by PID; then anything still using our temp dir
        (e.g. an ssh ControlMaster the proxy left in our runtime directories)."""
        try:
            self.stop_all(list(self.kernels))
        finally:
            for proc in self.helpers:
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
                if proc.stdout is not None:
                    proc.stdout.close()
            self.sshd.stop()
            self._kill_strays()
            self.log.close()
            shutil.rmtree(self.tmp, ignore_errors=True)

    def _kill_strays(self) -> None:
        marker = str(self.tmp)
        for pid in procs.all_pids():
            if pid != os.getpid() and any(marker in part for part in procs.cmdline(pid)):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
