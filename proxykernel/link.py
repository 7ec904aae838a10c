"""The link to the remote agent, sans-IO: boot, hello/resume, heartbeat, reconnection with backoff.

No event loop, subprocess, socket or clock of its own: ``proxy.Proxy`` reads the loop's time, passes
it in, and runs the *actions* the link returns (start or kill an ssh, flush, deliver a message to the
frontends, end...). Unit tests drive it with a fake clock and fake bytes (tests/test_link.py).

One ssh at a time carries the link; each boots (the bootstrap's one line, HAVE/GOT/NEED/ERR, comes
before the agent's stream). After the kernel is ready, a lost ssh is replaced after a backoff step
until ``--reconnect-timeout`` has passed; the new link resumes, each side replaying what the other lacks.
"""
from __future__ import annotations

import enum
import logging
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from proxykernel.bootstrap import BootReader, BootReply, boot_error
from proxykernel.config import ProxyConfig
from proxykernel.relogin import LoginWait, NeedsLogin
from proxykernel.session import ready_sentence
from proxykernel.ssh import explain_ssh_failure
from remote_agent import wire

__all__ = ["BACKOFF", "SHUTDOWN_GRACE", "Link", "State", "AgentBoot", "LostReason", "SshExited", "Silent",
           "ConnectTimedOut", "Action", "StartSsh", "KillSsh", "StopMaster", "Flush", "Wake", "Deliver",
           "OutputDropped", "RememberAgent", "ForgetAgent", "Exit", "Fail"]

log = logging.getLogger("proxykernel")

BACKOFF = (0.0, 0.5, 1.0, 2.0, 4.0, 5.0)  # seconds before each reconnect attempt; then the last
SHUTDOWN_GRACE = 8.0  # the agent's SIGTERM-then-SIGKILL takes up to 3 s; then we stop waiting
BOOT_BUFFER = 64 * 1024  # ssh's output is read here until the agent speaks


# -- why a link was lost --------------------------------------------------------------------------
@dataclass(frozen=True)
class SshExited:
    """The ssh carrying the link exited (killed, its connection reset, the remote session ended)."""
    code: Optional[int]
    network_dead = False  # (a class constant, not a field): a shared master is as dead

    @property
    def sentence(self) -> str:
        return "ssh exited with code %s" % self.code


@dataclass(frozen=True)
class Silent:
    """Nothing heard from the agent for the heartbeat timeout: the network is likely broken."""
    seconds: float
    network_dead = True

    @property
    def sentence(self) -> str:
        return "no reply for %.1f s" % self.seconds


@dataclass(frozen=True)
class ConnectTimedOut:
    """A reconnecting ssh did not reach the agent within ``--timeout``."""
    seconds: float
    network_dead = True

    @property
    def sentence(self) -> str:
        return "ssh did not connect within %.0f s" % self.seconds


LostReason = Union[SshExited, Silent, ConnectTimedOut]


# -- what the link asks of its owner ----------------------------------------------------------------
@dataclass(frozen=True)
class StartSsh:
    """Start a new ssh; its stdin opens with the agent's bundle (``send_agent``) or ``NO_AGENT``."""
    send_agent: bool


@dataclass(frozen=True)
class KillSsh:
    """Kill the current ssh and forget it: what it still reports belongs to no link."""


@dataclass(frozen=True)
class StopMaster:
    """``ssh -O exit`` for our ControlMaster: its connection is as dead as the link's."""


@dataclass(frozen=True)
class Flush:
    """Write ``data_to_send()`` to the current ssh (soon: batching a loop iteration is fine)."""


@dataclass(frozen=True)
class Wake:
    """Call ``poll`` at ``at`` (a deadline finer than the owner's regular tick)."""
    at: float


@dataclass(frozen=True)
class Deliver:
    """A kernel message for the frontends (``frames[0]`` is the identity on routed channels)."""
    channel: str
    frames: Tuple[wire.Buffer, ...]


@dataclass(frozen=True)
class OutputDropped:
    """The agent's replay buffer overflowed during an outage: this much output is gone."""
    frames: int
    nbytes: int


@dataclass(frozen=True)
class RememberAgent:
    """The remote cache has the agent: later starts may skip sending it (the agent memo)."""


@dataclass(frozen=True)
class ForgetAgent:
    """The remote cache lost the agent: the memo is stale."""


@dataclass(frozen=True)
class Exit:
    """The proxy ends with this exit code (the remote kernel's, or 143 on SIGTERM)."""
    code: int


@dataclass(frozen=True)
class Fail:
    """The proxy ends with exit code 1, after logging ``sentence`` as its one error."""
    sentence: str


Action = Union[StartSsh, KillSsh, StopMaster, Flush, Wake, Deliver, OutputDropped, RememberAgent,
               ForgetAgent, Exit, Fail, NeedsLogin]
_FLUSH = Flush()


class State(enum.Enum):
    """Where the link is; ``Link.ready`` (the kernel reported ready once) is kept apart."""
    IDLE = "idle"  # before ``start``
    CONNECTING = "connecting"  # an ssh runs; the agent's hello has not arrived (``booting`` before its line)
    LINKED = "linked"  # the agent's hello arrived: heartbeat on
    WAITING = "waiting"  # no ssh: the next one starts at ``reconnect_at``
    DONE = "done"  # an Exit or a Fail was returned: nothing more happens


class AgentBoot:
    """The boot phase of each link: what its stream starts with (the agent, or ``NO_AGENT`` when the
    memo says the remote cache has it), the bootstrap's one-line reply, and ssh's stderr until then.
    Owned by ``Link``: ``begin`` for every new ssh, ``feed`` for what it prints, ``verdict`` once."""

    def __init__(self, host: str, python: str, agent_cached: bool, agent_size: int) -> None:
        self.host = host
        self.python = python
        self.send_agent = not agent_cached  # this link's stream starts with the agent
        self.agent_size = agent_size
        self.reader: Optional[BootReader] = None  # until the bootstrap's line is read
        self.buffer = memoryview(bytearray(BOOT_BUFFER))
        self.ssh_lines: List[str] = []  # ssh's stderr while booting, for the failure's sentence

    def begin(self) -> StartSsh:
        """A new ssh: what its stream starts with."""
        self.reader = BootReader()
        self.ssh_lines = []
        return StartSsh(self.send_agent)

    def feed(self, count: int) -> Optional[Tuple[BootReply, bytes]]:
        """``count`` bytes read into ``buffer``: the reply and the bytes after it, once complete
        (ValueError, with the sentence, if the remote prints too much before it)."""
        assert self.reader is not None
        result = self.reader.feed(bytes(self.buffer[:count]))
        if result is not None:
            self.reader = None
        return result

    def verdict(self, reply: BootReply) -> Union[str, List[Action]]:
        """The sentence if the start cannot go on, else the actions; with ``ForgetAgent`` among them
        the memo was stale (the remote cache was emptied): this link starts again, with the agent."""
        if reply.status == "NEED" and not self.send_agent:
            log.info("the agent is no longer cached on %s; sending it", self.host)
            self.send_agent = True
            return [ForgetAgent(), KillSsh()]
        if reply.status not in ("HAVE", "GOT"):
            return boot_error(reply, self.host, self.python)
        if reply.status == "GOT":
            log.info("agent sent (%d kB)", self.agent_size // 1024)
        else:
            log.info("agent cached on %s", self.host)
        if "uncached" in reply.words:
            log.warning("the agent cannot be cached on %s (its ~/.cache is not writable): every start "
                        "sends it again", self.host)
            return []  # no memo: the next start sends the agent along again, no retry
        self.send_agent = False
        return [RememberAgent()]


class Link:
    """The proxy's link to its remote agent, one ssh after another, with time as a parameter.

    Made by ``Proxy.run`` once the connection file is read. Entry points, each returning actions for
    the proxy to run in order: ``start`` once; ``received`` when the current ssh's stdout filled
    ``read_buffer``; ``ssh_exited``; ``send``/``interrupt``/``shutdown`` for frontends and signals;
    ``poll`` on the proxy's tick and at each ``Wake``; ``fail`` for the proxy's own fatal errors.
    """

    def __init__(self, config: ProxyConfig, start_config: Dict[str, Any], session: str, *,
                 agent_cached: bool, agent_size: int, shared_master: bool, started_at: float) -> None:
        """``agent_cached``: the memo says the remote cache has the agent; ``agent_size``: the bundle's
        bytes (for the log); ``shared_master``: the ssh runs through our ControlMaster;
        ``started_at``: when the proxy started (``--timeout`` and "kernel ready in" count from it)."""
        self.config = config
        self.start_config = start_config
        self.conn = wire.Connection(wire.Role.PROXY, session=session, max_buffer=config.buffer_size)
        self.boot = AgentBoot(config.host, config.python, agent_cached, agent_size)
        self.login_wait = LoginWait(config)  # a reconnect that needs the user's login says so once
        self.shared_master = shared_master
        self.started_at = started_at
        self.state = State.IDLE
        self.ready = False  # the kernel reported ready (once; reconnects keep it)
        self.heartbeat: Optional[wire.Heartbeat] = None
        self.link_started = started_at
        self.lost_at: Optional[float] = None  # when the current outage began
        self.reconnect_at = 0.0
        self.attempts = 0
        self.shutdown_deadline: Optional[float] = None

    @property
    def booting(self) -> bool:
        """The current ssh has not yet printed the bootstrap's line."""
        return self.boot.reader is not None

    @property
    def linked(self) -> bool:
        """Frames sent now go out on this link (not only into the replay buffer)."""
        return self.conn.linked

    @property
    def finished(self) -> bool:
        return self.state is State.DONE

    # -- entry points ---------------------------------------------------------------------------
    def start(self, now: float) -> List[Action]:
        """The first ssh; called once by ``Proxy.run``. The start fails at ``--timeout`` if no kernel."""
        return [self._connect(now), Wake(self.started_at + self.config.timeout)]

    def read_buffer(self) -> memoryview:
        """Where the next read from the current ssh's stdout goes (then ``received``)."""
        return self.boot.buffer if self.booting else self.conn.read_buffer()

    def received(self, count: int, now: float) -> List[Action]:
        """``count`` bytes from the current ssh landed in ``read_buffer()``."""
        if self.finished:
            return []
        if self.heartbeat is not None:
            self.heartbeat.heard(now)
        actions: List[Action] = []
        rest: Optional[bytes] = None  # what followed the bootstrap's line in the same read
        if self.booting:
            try:
                result = self.boot.feed(count)
            except ValueError as error:
                return self.fail(str(error))
            if result is None:
                return []
            reply, rest = result
            verdict = self.boot.verdict(reply)
            if isinstance(verdict, str):
                return self.fail(verdict)
            if any(isinstance(action, ForgetAgent) for action in verdict):
                if not self.ready:
                    self.attempts = 0  # still the first link: it must carry the start again
                return verdict + [self._connect(now)]
            actions = verdict
        try:
            events = self.conn.receive_data(rest) if rest is not None else self.conn.received_into(count)
            for event in events:
                actions += self._handle(event, now)
                if self.finished:
                    return actions
        except wire.ProtocolError as error:
            return actions + self.fail(str(error))
        actions.append(_FLUSH)  # acks, pongs, a resume's replay
        return actions

    def ssh_exited(self, code: Optional[int], now: float) -> List[Action]:
        """The current ssh exited with ``code`` (None: unknown)."""
        if self.finished:
            return []
        if self.booting and not self.ready:
            return self.fail(explain_ssh_failure(self.config.host, self.boot.ssh_lines, code, self.config.ssh))
        if not self.ready:
            return self.fail("the remote agent on %s stopped before the kernel started (exit code %s); "
                             "see the lines above" % (self.config.host, code))
        return self.lost(SshExited(code), now) + self.login_wait.check(self.boot.ssh_lines, self.lost_at)

    def note_ssh_line(self, line: str) -> None:
        """A line ssh printed that is not the agent's log: summarized if the start fails."""
        self.boot.ssh_lines.append(line)

    def send(self, channel: str, frames: Sequence[wire.Buffer]) -> List[Action]:
        """A frontend's message for the kernel: sent now, or replayed once the link resumes."""
        self.conn.send_data(channel, frames)
        return [_FLUSH]

    def interrupt(self) -> List[Action]:
        """SIGINT to the remote kernel (the proxy got SIGINT)."""
        self.conn.send_interrupt()
        return [_FLUSH]

    def shutdown(self, now: float) -> List[Action]:
        """Stop the remote kernel (the proxy got SIGTERM or SIGHUP), and end when it has exited."""
        if self.finished:
            return []
        if not self.ready or not self.conn.linked:
            # Nobody to tell: the agent stops the kernel after --linger, or sees the stream end.
            self.state = State.DONE
            return [Exit(143)]
        log.info("shutdown requested: stopping the remote kernel")
        self.conn.send_shutdown()
        if self.shutdown_deadline is None:
            self.shutdown_deadline = now + SHUTDOWN_GRACE
        return [_FLUSH, Wake(self.shutdown_deadline)]

    def poll(self, now: float) -> List[Action]:
        """Deadlines: the heartbeat, the start's and a reconnect's timeouts, the next reconnect, the
        give-up. Called on the proxy's tick (a fraction of a second) and at each ``Wake``."""
        if self.finished:
            return []
        config = self.config
        if not self.ready and now - self.started_at >= config.timeout:
            stage = "ssh is still connecting" if self.booting else "the agent did not report a kernel"
            return self.fail("no kernel on %s after %.0f s (%s): check that 'ssh %s true' works quickly, or "
                             "raise --timeout" % (config.host, config.timeout, stage, config.host))
        if self.shutdown_deadline is not None and now >= self.shutdown_deadline:
            return self.fail("the remote agent did not confirm the shutdown")
        actions: List[Action] = []
        waiting = self.state is State.WAITING
        if self.heartbeat is not None:
            beat = self.heartbeat.poll(now)
            if beat is wire.Beat.PING:
                self.conn.send_ping(now)
                actions.append(_FLUSH)
            elif beat is wire.Beat.DEAD:
                actions += self.lost(Silent(self.heartbeat.timeout), now)
        elif self.ready and self.state is State.CONNECTING and now - self.link_started > config.timeout:
            actions += self.lost(ConnectTimedOut(config.timeout), now)
        if self.lost_at is not None and now - self.lost_at > config.reconnect_timeout:
            return actions + self.fail("lost the connection to %s and could not reconnect within %.0f s "
                                       "(--reconnect-timeout); the remote kernel stops after --linger"
                                       % (config.host, config.reconnect_timeout))
        if waiting and now >= self.reconnect_at:  # (a link lost in this poll waits for the next)
            log.info("reconnecting to %s (attempt %d)", config.host, self.attempts + 1)
            actions.append(self._connect(now))
        return actions

    def lost(self, reason: LostReason, now: float) -> List[Action]:
        """The current ssh is gone: before the kernel was ready that is fatal, after it the next ssh
        starts after a backoff step, the kernel staying alive in Jupyter's eyes meanwhile."""
        if self.finished:
            return []
        if not self.ready:
            return self.fail(reason.sentence)
        actions: List[Action] = [KillSsh()]
        self.heartbeat = None
        self.boot.reader = None
        self.conn.new_link()
        if self.lost_at is None:
            self.lost_at, self.attempts = now, 0
            log.warning("connection to %s lost (%s); reconnecting", self.config.host, reason.sentence)
        if reason.network_dead and self.shared_master:
            # The shared master's connection is as dead as ours: new sessions through it would hang.
            actions.append(StopMaster())
        self.state = State.WAITING
        self.reconnect_at = now + BACKOFF[min(self.attempts, len(BACKOFF) - 1)]
        actions.append(Wake(self.reconnect_at))
        return actions

    def fail(self, sentence: str) -> List[Action]:
        """End with ``sentence`` as the one error: called here and by the proxy for its own failures."""
        if self.finished:
            return []
        self.state = State.DONE
        if not self.ready and self.conn.linked:
            self.conn.send_shutdown()  # a start that failed half-way leaves no kernel behind
        return [Fail(sentence)]

    def data_to_send(self) -> bytes:
        """The bytes for the current ssh's stdin, when a ``Flush`` is run."""
        return self.conn.data_to_send()

    # -- inside ---------------------------------------------------------------------------------
    def _connect(self, now: float) -> StartSsh:
        """One ssh: the first link sends the kernel's start, later ones only resume."""
        self.state = State.CONNECTING
        self.conn.new_link()
        self.conn.send_hello()
        if not self.ready and self.attempts == 0:
            self.conn.send_start(self.start_config)
            # A first link starts a new session: the agent has received nothing, so what frontends
            # sent can follow at once instead of a round trip later, after the agent's hello.
            self.conn.resume(0)
        self.attempts += 1
        self.link_started = now
        return self.boot.begin()

    def _handle(self, event: wire.Event, now: float) -> List[Action]:
        if isinstance(event, wire.ChannelData):
            return [Deliver(event.channel, event.frames)]
        if isinstance(event, wire.Hello):
            return self._hello(event, now)
        if isinstance(event, wire.Ready):
            self.ready = True
            log.info("%s", ready_sentence(event.info, now - self.started_at))
        elif isinstance(event, wire.Pong) and self.heartbeat is not None:
            self.heartbeat.pong(event.timestamp, now)
        elif isinstance(event, wire.LogLine):
            log.info("%s", event.text)
        elif isinstance(event, wire.Skipped):
            return [OutputDropped(event.frames, event.nbytes)]
        elif isinstance(event, wire.KernelExited):
            log.info("the remote kernel exited with code %d", event.code)
            self.state = State.DONE
            return [Exit(event.code if 0 <= event.code < 256 else 128 + abs(event.code) % 128)]
        elif isinstance(event, wire.ErrorReport):
            return self.fail("the remote agent on %s reported: %s" % (self.config.host, event.sentence))
        elif isinstance(event, wire.Noise):
            log.debug("skipped %d bytes the remote printed before the agent started", len(event.data))
        return []

    def _hello(self, hello: wire.Hello, now: float) -> List[Action]:
        if self.ready and "resumed" not in hello.capabilities:
            return self.fail("the remote agent on %s no longer has this kernel (stopped after --linger, "
                             "or the host restarted); restart the kernel" % self.config.host)
        replay = sum(1 for seq, _, _ in self.conn.unacked if seq > hello.received)
        if not self.conn.linked:  # (a first link went ahead already: everything is on its way)
            self.conn.resume(hello.received)
        self.state = State.LINKED
        self.heartbeat = wire.Heartbeat(self.config.heartbeat_interval, self.config.heartbeat_timeout, now)
        if self.lost_at is not None:
            log.warning("reconnected to %s after %.1f s (attempt %d); resent %d messages",
                        self.config.host, now - self.lost_at, self.attempts, replay)
            self.lost_at, self.attempts = None, 0
        return []
