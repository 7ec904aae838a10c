"""The link to the agent, driven by hand: a fake clock, the bootstrap's line, and the agent's bytes from a
real agent-side ``wire.Connection``. No ssh, no sockets, no sleeping."""
from __future__ import annotations

import logging
from typing import Any, List, Sequence

import pytest

from proxykernel.bootstrap import BootReply, boot_error
from proxykernel.config import ProxyConfig
from proxykernel.link import (BACKOFF, SHUTDOWN_GRACE, Action, ConnectTimedOut, Deliver, Exit, Fail, Flush,
                              ForgetAgent, KillSsh, Link, OutputDropped, RememberAgent, Silent, SshExited,
                              StartSsh, State, StopMaster, Wake)
from remote_agent import wire

HOST = "btest"
CONFIG = ProxyConfig(host=HOST, python="/opt/py/bin/python3", connection_file="kernel.json", timeout=30.0,
                     heartbeat_interval=1.0, heartbeat_timeout=5.0, reconnect_timeout=60.0)
READY = {"ipykernel": "6.29", "python": "3.11", "hostname": "remote", "pid": 4242}
HAVE = b"\nPXKBOOT HAVE\n"


class Remote:
    """The remote end of the link: a real agent-side Connection that answers a hello as the agent does."""

    def __init__(self) -> None:
        self.conn = wire.Connection(wire.Role.AGENT)
        self.heard: List[Any] = []

    def new_ssh(self) -> None:
        self.conn.new_link()

    def hear(self, data: bytes) -> List[Any]:
        """The proxy's bytes reach the agent."""
        events = self.conn.receive_data(data)
        for event in events:
            if isinstance(event, wire.Hello):
                self.conn.send_hello(capabilities=["resumed"] if self.conn.resumed else [])
                self.conn.resume(event.received)
        self.heard += events
        return events


def make_link(agent_cached: bool = True, shared_master: bool = True, config: ProxyConfig = CONFIG) -> Link:
    return Link(config, {"key": "secret"}, "session-1", agent_cached=agent_cached, agent_size=8192,
                shared_master=shared_master, started_at=0.0)


def feed(link: Link, data: bytes, now: float, chunk: int = 1 << 30) -> List[Action]:
    """What ssh's stdout would do: read into the link's buffer, then report the count."""
    actions: List[Action] = []
    view = memoryview(data)
    while view:
        buffer = link.read_buffer()
        count = min(len(buffer), len(view), chunk)
        buffer[:count] = view[:count]
        actions += link.received(count, now)
        view = view[count:]
    return actions


def boot(link: Link, remote: Remote, now: float = 1.0) -> List[Action]:
    """The first link, up to the kernel's ready."""
    assert link.start(0.0) == [StartSsh(send_agent=False), Wake(CONFIG.timeout)]
    remote.hear(link.data_to_send())
    remote.conn.send_ready(READY)
    actions = feed(link, HAVE + remote.conn.data_to_send(), now)
    assert link.ready and state(link) is State.LINKED
    return actions


def attach(link: Link, remote: Remote, now: float) -> List[Action]:
    """A new ssh reached the agent: the bootstrap's line, then the agent's (resumed) hello."""
    remote.new_ssh()
    remote.hear(link.data_to_send())
    return feed(link, HAVE + remote.conn.data_to_send(), now)


def state(link: Link) -> State:
    return link.state  # (read through a call: mypy would keep the state it saw last)


def data_seen(events: Sequence[Any]) -> List[Any]:
    return [(e.seq, [bytes(f) for f in e.frames]) for e in events if isinstance(e, wire.ChannelData)]


def delivered(actions: Sequence[Action]) -> List[Any]:
    return [(a.channel, [bytes(f) for f in a.frames]) for a in actions if isinstance(a, Deliver)]


def test_first_link_boots_sends_the_start_and_reports_ready(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="proxykernel")
    link, remote = make_link(), Remote()
    actions = boot(link, remote, now=2.5)
    assert RememberAgent() in actions and Flush() in actions
    start = [e for e in remote.heard if isinstance(e, wire.Start)]
    assert [s.config for s in start] == [{"key": "secret"}]
    assert "kernel ready in 2.50 s: ipykernel 6.29, Python 3.11 on remote (pid 4242)" in caplog.messages
    assert "agent cached on btest" in caplog.messages


def test_messages_flow_both_ways_when_linked() -> None:
    link, remote = make_link(), Remote()
    boot(link, remote)
    assert link.send("shell", [b"id", b"<IDS|MSG>", b"x"]) == [Flush()]
    assert data_seen(remote.hear(link.data_to_send())) == [(1, [b"id", b"<IDS|MSG>", b"x"])]
    remote.conn.send_data("iopub", [b"topic", b"out"])
    assert delivered(feed(link, remote.conn.data_to_send(), 2.0)) == [("iopub", [b"topic", b"out"])]


def test_a_drop_reconnects_after_the_backoff_step_and_resumes(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="proxykernel")
    link, remote = make_link(), Remote()
    boot(link, remote)
    assert link.ssh_exited(255, 10.0) == [KillSsh(), Wake(10.0 + BACKOFF[0])]  # no StopMaster: ssh just exited
    assert state(link) is State.WAITING and not link.linked
    assert "connection to btest lost (ssh exited with code 255); reconnecting" in caplog.messages
    assert link.poll(10.0) == [StartSsh(send_agent=False)]
    assert "reconnecting to btest (attempt 1)" in caplog.messages
    before = len(remote.heard)
    actions = attach(link, remote, 10.3)
    assert remote.heard[before:] == [wire.Hello(wire.PROTOCOL_VERSION, "proxy", "session-1", (), 0)]  # no start
    assert Flush() in actions and state(link) is State.LINKED and link.lost_at is None
    assert "reconnected to btest after 0.3 s (attempt 1); resent 0 messages" in caplog.messages


def test_a_silent_link_is_declared_dead_its_ssh_killed_and_the_master_stopped(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="proxykernel")
    link, remote = make_link(), Remote()
    boot(link, remote, now=1.0)
    assert link.poll(2.0) == [Flush()]  # a ping is due every heartbeat_interval
    assert remote.hear(link.data_to_send()) == []  # (answered by the agent's Connection itself)
    feed(link, remote.conn.data_to_send(), 2.1)  # the pong: heard at 2.1
    for now in (3.0, 4.0, 5.0, 6.0, 7.0):
        assert link.poll(now) == [Flush()]  # pings, unanswered now: the network hangs
    assert state(link) is State.LINKED
    assert link.poll(7.125) == [KillSsh(), StopMaster(), Wake(7.125)]
    assert state(link) is State.WAITING
    assert "connection to btest lost (no reply for 5.0 s); reconnecting" in caplog.messages


def test_without_a_shared_master_a_dead_link_stops_none() -> None:
    link, remote = make_link(shared_master=False), Remote()
    boot(link, remote, now=1.0)
    assert link.poll(6.5) == [KillSsh(), Wake(6.5)]


def test_a_reconnect_that_does_not_connect_times_out() -> None:
    link, remote = make_link(), Remote()
    boot(link, remote)
    link.ssh_exited(255, 10.0)
    assert link.poll(10.0) == [StartSsh(send_agent=False)]
    assert link.poll(10.0 + CONFIG.timeout) == []  # the ssh hangs in its login
    assert link.poll(10.0 + CONFIG.timeout + 0.25) == [KillSsh(), StopMaster(), Wake(40.25 + BACKOFF[1])]
    assert ConnectTimedOut(30.0).sentence == "ssh did not connect within 30 s"


def test_the_backoff_schedule_across_repeated_failures() -> None:
    link, remote = make_link(), Remote()
    boot(link, remote)
    now, delays = 100.0, []
    actions = link.ssh_exited(255, now)
    for _ in range(9):
        [wake] = [a for a in actions if isinstance(a, Wake)]
        delays.append(wake.at - now)
        if wake.at > now:
            assert link.poll(wake.at - 0.01) == []  # not before its time
        now = wake.at
        assert link.poll(now) == [StartSsh(send_agent=False)]
        actions = link.ssh_exited(255, now)  # that attempt fails at once
    assert delays == [0.0, 0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0, 5.0]
    assert link.poll(now + 5.0) == [StartSsh(send_agent=False)]
    attach(link, remote, now + 5.5)
    assert link.attempts == 0 and link.lost_at is None  # the next outage starts the schedule over
    assert link.ssh_exited(255, 200.0) == [KillSsh(), Wake(200.0)]


def test_resume_replays_what_the_agent_lacks_exactly_once_after_its_hello(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="proxykernel")
    link, remote = make_link(), Remote()
    boot(link, remote)
    link.send("shell", [b"m1"])
    assert data_seen(remote.hear(link.data_to_send())) == [(1, [b"m1"])]
    link.send("shell", [b"m2"])
    link.data_to_send()  # written to a pipe whose ssh dies: m2 never arrives
    remote.conn.send_data("iopub", [b"o1"])
    assert delivered(feed(link, remote.conn.data_to_send(), 2.0)) == [("iopub", [b"o1"])]
    remote.conn.send_data("iopub", [b"o2"])
    remote.conn.data_to_send()  # lost in flight the other way
    link.ssh_exited(255, 3.0)
    link.send("shell", [b"m3"])  # what frontends send meanwhile waits in the replay buffer
    link.send("control", [b"m4"])
    assert link.poll(3.0) == [StartSsh(send_agent=False)]
    remote.new_ssh()
    first = remote.hear(link.data_to_send())
    assert [type(e) for e in first] == [wire.Hello] and first[0].received == 1  # nothing before its hello
    actions = feed(link, HAVE + remote.conn.data_to_send(), 3.5)  # the agent's hello says received=1
    assert delivered(actions) == [("iopub", [b"o2"])]  # its replay
    assert data_seen(remote.hear(link.data_to_send())) == [(2, [b"m2"]), (3, [b"m3"]), (4, [b"m4"])]
    assert data_seen(remote.hear(link.data_to_send())) == []  # exactly once
    assert "reconnected to btest after 0.5 s (attempt 1); resent 3 messages" in caplog.messages


def test_gives_up_after_the_reconnect_timeout() -> None:
    link, remote = make_link(), Remote()
    boot(link, remote)
    now = 100.0
    [wake] = [a for a in link.ssh_exited(255, now) if isinstance(a, Wake)]
    while wake.at <= 100.0 + CONFIG.reconnect_timeout:  # every attempt fails at once
        assert link.poll(wake.at) == [StartSsh(send_agent=False)]
        [wake] = [a for a in link.ssh_exited(255, wake.at) if isinstance(a, Wake)]
    assert link.poll(100.0 + CONFIG.reconnect_timeout) == []
    assert link.poll(100.0 + CONFIG.reconnect_timeout + 0.1) == [Fail(
        "lost the connection to btest and could not reconnect within 60 s (--reconnect-timeout); the remote "
        "kernel stops after --linger")]
    assert link.finished
    assert link.poll(1000.0) == [] and link.ssh_exited(1, 1000.0) == [] and link.shutdown(1000.0) == []


def test_a_stale_agent_memo_restarts_the_first_link_with_the_agent_and_the_start(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="proxykernel")
    link, remote = make_link(agent_cached=True), Remote()
    assert link.start(0.0)[0] == StartSsh(send_agent=False)
    link.data_to_send()  # written to the first ssh, which the bootstrap ends
    assert feed(link, b"banner\n\nPXKBOOT NEED\n", 0.4) == [ForgetAgent(), KillSsh(), StartSsh(send_agent=True)]
    assert "the agent is no longer cached on btest; sending it" in caplog.messages
    events = remote.hear(link.data_to_send())
    assert [type(e) for e in events] == [wire.Hello, wire.Start]  # the start goes again
    remote.conn.send_ready(READY)
    actions = feed(link, b"\nPXKBOOT GOT\n" + remote.conn.data_to_send(), 0.9)
    assert RememberAgent() in actions and link.ready
    assert "agent sent (8 kB)" in caplog.messages
    link.ssh_exited(255, 5.0)
    assert link.poll(5.0) == [StartSsh(send_agent=False)]  # cached now


def test_a_stale_agent_memo_on_a_reconnect_resends_the_agent_but_no_start() -> None:
    link, remote = make_link(), Remote()
    boot(link, remote)
    link.ssh_exited(255, 5.0)
    link.poll(5.0)
    link.data_to_send()
    assert feed(link, b"\nPXKBOOT NEED\n", 5.2) == [ForgetAgent(), KillSsh(), StartSsh(send_agent=True)]
    before = len(remote.heard)
    actions = attach(link, remote, 5.5)
    assert [type(e) for e in remote.heard[before:]] == [wire.Hello]
    assert state(link) is State.LINKED and Flush() in actions


def test_an_uncacheable_agent_is_sent_every_time(caplog: pytest.LogCaptureFixture) -> None:
    link = make_link(agent_cached=False)
    assert link.start(0.0)[0] == StartSsh(send_agent=True)
    assert feed(link, b"\nPXKBOOT GOT uncached\n", 0.5) == [Flush()]  # no RememberAgent
    assert any("cannot be cached on btest" in m for m in caplog.messages)
    assert link.boot.send_agent


@pytest.mark.parametrize("line, sentence", [
    (b"\nPXKBOOT ERR no-python\n", boot_error(BootReply("ERR", ("no-python",)), HOST, CONFIG.python)),
    (b"\nPXKBOOT ERR missing ipykernel /usr/bin/python3\n",
     "the remote Python /usr/bin/python3 on btest lacks ipykernel: install it there with '/usr/bin/python3 -m "
     "pip install ipykernel'"),
])
def test_a_bootstrap_error_fails_with_its_sentence(line: bytes, sentence: str) -> None:
    link = make_link()
    link.start(0.0)
    assert feed(link, line, 0.5) == [Fail(sentence)]


def test_ssh_failing_before_the_bootstrap_speaks_is_explained() -> None:
    link = make_link()
    link.start(0.0)
    link.note_ssh_line("ssh: Could not resolve hostname btest: Name or service not known")
    [fail] = link.ssh_exited(255, 0.2)
    assert isinstance(fail, Fail) and "cannot resolve the host 'btest'" in fail.sentence


def test_the_agent_stopping_before_ready_and_the_start_timing_out() -> None:
    link = make_link()
    link.start(0.0)
    feed(link, HAVE, 0.3)
    assert link.ssh_exited(1, 0.5) == [Fail("the remote agent on btest stopped before the kernel started "
                                            "(exit code 1); see the lines above")]
    link, remote = make_link(), Remote()
    link.start(0.0)
    assert link.poll(29.9) == []
    assert link.poll(30.0) == [Fail("no kernel on btest after 30 s (ssh is still connecting): check that 'ssh "
                                    "btest true' works quickly, or raise --timeout")]
    assert any(isinstance(e, wire.Shutdown) for e in remote.hear(link.data_to_send()))  # none left behind


def test_a_reconnect_to_an_agent_that_lost_the_kernel_fails() -> None:
    link, remote = make_link(), Remote()
    boot(link, remote)
    link.ssh_exited(255, 5.0)
    link.poll(5.0)
    remote.conn = wire.Connection(wire.Role.AGENT)  # a new agent: the host restarted
    assert attach(link, remote, 5.5) == [RememberAgent(), Fail(
        "the remote agent on btest no longer has this kernel (stopped after --linger, or the host restarted); "
        "restart the kernel")]


def test_kernel_exit_shutdown_and_dropped_output() -> None:
    link, remote = make_link(), Remote()
    boot(link, remote)
    assert link.shutdown(2.0) == [Flush(), Wake(2.0 + SHUTDOWN_GRACE)]
    assert any(isinstance(e, wire.Shutdown) for e in remote.hear(link.data_to_send()))
    assert link.poll(2.0 + SHUTDOWN_GRACE) == [Fail("the remote agent did not confirm the shutdown")]
    link, remote = make_link(), Remote()
    boot(link, remote)
    remote.conn.send_kernel_exited(-9)
    assert feed(link, remote.conn.data_to_send(), 2.0) == [Exit(137)]
    link.ssh_exited(255, 5.0)  # ignored: it is over
    assert link.finished and link.poll(100.0) == []
    link = make_link()
    link.start(0.0)
    assert link.shutdown(1.0) == [Exit(143)]  # no kernel yet: nobody to tell
    assert OutputDropped(3, 10) != OutputDropped(3, 11)


def test_reasons_render_todays_sentences() -> None:
    assert SshExited(255).sentence == "ssh exited with code 255"
    assert SshExited(None).sentence == "ssh exited with code None"
    assert Silent(5.0).sentence == "no reply for 5.0 s"
    assert (SshExited(1).network_dead, Silent(1).network_dead, ConnectTimedOut(1).network_dead) == (False, True, True)


def test_the_boot_line_and_the_stream_split_anywhere() -> None:
    link, remote = make_link(), Remote()
    link.start(0.0)
    remote.hear(link.data_to_send())
    remote.conn.send_ready(READY)
    remote.conn.send_data("iopub", [b"hello"])
    actions = feed(link, b"motd\n" + HAVE + remote.conn.data_to_send(), 1.0, chunk=3)
    assert link.ready and delivered(actions) == [("iopub", [b"hello"])]
