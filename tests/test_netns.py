"""A long network outage: the "remote" host in its own network namespace, its link cut for 30 s.

The test makes the namespace (``ip netns add``), a veth pair with a /30 used only by these two
ends, and runs the test sshd inside it (``ip netns exec``) on the namespace's address. The cut is
made from the namespace side (``ip -n NS link set DEV down``): TCP does not notice, exactly like a
dropped Wi-Fi. Blackhole routes for the /30, in the namespace and on this host, keep its packets off
every other interface while the link is down. Everything is removed by name in ``finally``.
"""
from __future__ import annotations

import ipaddress
import json
import os
import random
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from queue import Empty
from typing import Any, Callable, Dict, Iterator, List, Tuple

import pytest

from proxykernel.testing.sshd import SSHServer
from tests.kernels import proxy_argv, run_cell, running_kernel, shell_reply
from tests.test_reconnect import PRINT_UNTIL, ssh_child

# Timing- and memory-sensitive: run alone, after the parallel part of the suite (scripts/test).
pytestmark = pytest.mark.serial

OUTAGE = 30.0  # seconds the link stays down
CHECK_EVERY = 0.5  # how often is_alive() and the client's heartbeat are checked during it
POOL = ipaddress.ip_network("10.213.0.0/16")  # where the test's /30 is picked (private, RFC 1918)
BLACKHOLE_METRIC = "4242"  # below the connected route's priority: used only while the link is down


@dataclass(frozen=True)
class Namespace:
    name: str
    host_dev: str  # this host's end of the veth pair
    ns_dev: str  # the namespace's end: the one the test takes down
    subnet: ipaddress.IPv4Network
    host_address: str
    remote_address: str


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          check=check, timeout=10)


def _networks_in_use() -> List[ipaddress.IPv4Network]:
    """Every IPv4 route (all tables) and address on this host, so the test's /30 overlaps none."""
    used = []
    for entry in json.loads(_ip("-j", "-4", "route", "show", "table", "all").stdout or "[]"):
        dst = entry.get("dst", "")
        if dst and dst != "default":
            used.append(ipaddress.ip_network(dst, strict=False))
    for link in json.loads(_ip("-j", "-4", "addr").stdout or "[]"):
        for addr in link.get("addr_info", []):
            used.append(ipaddress.ip_network("%s/%s" % (addr["local"], addr["prefixlen"]), strict=False))
    return used


def _free_subnet() -> ipaddress.IPv4Network:
    used = _networks_in_use()
    candidates = list(POOL.subnets(new_prefix=30))
    for _ in range(100):
        subnet = random.choice(candidates)
        if not any(subnet.overlaps(net) for net in used):
            return subnet
    raise AssertionError("no free /30 in %s" % POOL)


def _namespaces_allowed() -> Tuple[bool, str]:
    """Can this sandbox make a network namespace? (root and CAP_SYS_ADMIN, an ``ip`` binary)."""
    if os.geteuid() != 0:
        return False, "network namespaces need root"
    name = "pxk-probe-%d-%06x" % (os.getpid(), random.getrandbits(24))
    try:
        result = _ip("netns", "add", name, check=False)
    except FileNotFoundError:
        return False, "no 'ip' command (apt-get install iproute2)"
    if result.returncode != 0:
        return False, "'ip netns add' failed: %s" % result.stderr.strip()
    _ip("netns", "del", name, check=False)
    return True, ""


@contextmanager
def remote_namespace() -> Iterator[Namespace]:
    """A network namespace joined to this host by a veth pair; all removed by name afterwards."""
    tag = "%06x" % random.getrandbits(24)
    subnet = _free_subnet()
    host_ip, remote_ip = (str(a) for a in subnet.hosts())
    ns = Namespace(name="pxk-test-%d-%s" % (os.getpid(), tag), host_dev="pxk%sh" % tag,
                   ns_dev="pxk%sn" % tag, subnet=subnet, host_address=host_ip, remote_address=remote_ip)
    try:
        _ip("netns", "add", ns.name)
        _ip("link", "add", ns.host_dev, "type", "veth", "peer", "name", ns.ns_dev, "netns", ns.name)
        _ip("addr", "add", "%s/30" % host_ip, "dev", ns.host_dev)
        _ip("link", "set", ns.host_dev, "up")
        _ip("-n", ns.name, "link", "set", "lo", "up")  # ipykernel listens on 127.0.0.1 in there
        _ip("-n", ns.name, "addr", "add", "%s/30" % remote_ip, "dev", ns.ns_dev)
        _ip("-n", ns.name, "link", "set", ns.ns_dev, "up")
        # While the link is down its connected routes vanish; these catch the subnet's traffic then,
        # so it never takes another route (the namespace has none; this host has a default route).
        _ip("-n", ns.name, "route", "add", "blackhole", str(subnet), "metric", BLACKHOLE_METRIC)
        _ip("route", "add", "blackhole", str(subnet), "metric", BLACKHOLE_METRIC)
        yield ns
    finally:
        _ip("route", "del", "blackhole", str(subnet), "metric", BLACKHOLE_METRIC, check=False)
        _ip("link", "del", ns.host_dev, check=False)  # deletes its peer too
        _ip("netns", "del", ns.name, check=False)
        leftovers = [line for line in _ip("netns", "list").stdout.splitlines() if ns.name in line]
        assert not leftovers, "namespace %s was not removed" % ns.name


def _link_up(ns: Namespace, up: bool) -> None:
    _ip("-n", ns.name, "link", "set", ns.ns_dev, "up" if up else "down")


ALLOWED, WHY_NOT = _namespaces_allowed()


@pytest.mark.skipif(not ALLOWED, reason="network namespaces not available here: %s" % WHY_NOT)
def test_link_cut_for_30s_mid_cell_kernel_stays_alive_and_output_arrives(tmp_path: Path) -> None:
    stop = tmp_path / "stop"
    with remote_namespace() as ns:
        with SSHServer(netns=ns.name, listen_address=ns.remote_address) as server:
            assert server.listen_address == ns.remote_address
            with running_kernel(proxy_argv(server), tmp_path) as (km, kc):
                figures = _outage_mid_cell(km, kc, ns, stop)
    print("after a %.0f s cut: %d lines exact; first output %.1f s after the link came back"
          % (OUTAGE, figures["lines"], figures["recovered_s"]))


class _IOPub:
    """The client's IOPub messages with their arrival times (read in this thread, bounded in time)."""

    def __init__(self, kc: Any) -> None:
        self.kc = kc
        self.messages: List[Tuple[float, Dict[str, Any]]] = []

    def read_until(self, deadline: float, done: Callable[[Dict[str, Any]], bool] = lambda m: False) -> bool:
        """Read until ``deadline`` or until a message satisfies ``done`` (then True)."""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            try:
                msg = self.kc.get_iopub_msg(timeout=left)
            except Empty:
                return False
            self.messages.append((time.monotonic(), msg))
            if done(msg):
                return True

    def stream_text(self, msg_id: str, after: float = 0.0, before: float = float("inf")) -> str:
        return "".join(m["content"]["text"] for t, m in self.messages
                       if after <= t < before and m["msg_type"] == "stream"
                       and m["parent_header"].get("msg_id") == msg_id)


def _outage_mid_cell(km: Any, kc: Any, ns: Namespace, stop: Path) -> Dict[str, float]:
    run_cell(kc, "state = 'kept'")
    first_ssh = ssh_child(km)
    msg_id = kc.execute(PRINT_UNTIL.format(stop=str(stop)))
    iopub = _IOPub(kc)
    iopub.read_until(time.monotonic() + 1.0)
    checks = 0
    dead_seen: List[str] = []
    _link_up(ns, False)
    cut = time.monotonic()
    try:
        while time.monotonic() - cut < OUTAGE:
            if not km.is_alive():
                dead_seen.append("is_alive() False at %.1f s" % (time.monotonic() - cut))
            if not kc.hb_channel.is_beating():
                dead_seen.append("the heartbeat channel reported dead at %.1f s" % (time.monotonic() - cut))
            checks += 1
            iopub.read_until(time.monotonic() + CHECK_EVERY)
    finally:
        _link_up(ns, True)
    restored = time.monotonic()
    assert not dead_seen, dead_seen
    assert checks >= OUTAGE / CHECK_EVERY - 2
    # The cut was real: past the heartbeat timeout (5 s) and the last bytes in flight, nothing came.
    assert iopub.stream_text(msg_id, after=cut + 7, before=restored) == ""

    def new_output(msg: Dict[str, Any]) -> bool:
        return msg["msg_type"] == "stream" and msg["parent_header"].get("msg_id") == msg_id
    assert iopub.read_until(restored + 30, new_output), "no output within 30 s of the link's return"
    recovered = iopub.messages[-1][0] - restored
    iopub.read_until(time.monotonic() + 1.0)  # output printed after the outage must arrive too
    stop.touch()

    def idle(msg: Dict[str, Any]) -> bool:
        return (msg["msg_type"] == "status" and msg["parent_header"].get("msg_id") == msg_id
                and msg["content"]["execution_state"] == "idle")
    assert iopub.read_until(time.monotonic() + 30, idle), "the cell did not finish within 30 s"
    got = [int(line) for line in iopub.stream_text(msg_id).split()]
    assert len(got) > OUTAGE / 0.03  # it printed all through the outage (20 ms sleep + print)
    assert got == list(range(len(got)))  # exactly once, in order
    assert shell_reply(kc, msg_id, timeout=20)["content"]["status"] == "ok"
    assert run_cell(kc, "print(state)")[1] == [("stream", {"name": "stdout", "text": "kept\n"})]
    assert km.is_alive() and kc.hb_channel.is_beating()
    assert ssh_child(km) != first_ssh  # the outage really cost the first ssh
    return {"recovered_s": recovered, "lines": len(got)}
