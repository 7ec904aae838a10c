"""The local proxy: Jupyter's five sockets on one side, one ssh stream to the remote agent on the other.

Started by ``python -m proxykernel`` (so by Jupyter through kernel.json). Owns the lifecycle: boot the
remote agent, hand it the key inside the stream, relay messages both ways, turn SIGINT into an
interrupt and SIGTERM into a shutdown, and exit with the remote kernel's exit code.
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import time
import uuid
from typing import Any, Dict, List, Optional

import zmq

from proxykernel.bootstrap import NO_AGENT, AgentBundle, BootReader, BootReply, agent_bundle, boot_error
from proxykernel.config import (
    ConnectionFileError,
    ProxyConfig,
    agent_memo_path,
    kernel_id,
    load_connection_file,
    ssh_command,
    stop_master_command,
)
from proxykernel.frontend import Frontend
from proxykernel.ssh import explain_ssh_failure
from proxykernel.transport import SSHTransport
from remote_agent import wire

__all__ = ["ProxyConfig", "Proxy", "kernel_id"]

log = logging.getLogger("proxykernel")

BACKOFF = (0.0, 0.5, 1.0, 2.0, 4.0, 5.0)  # seconds before each reconnect attempt; then the last
TICK = 0.25  # how often the heartbeat and the reconnect deadline are checked
SSH_EXIT_GRACE = 5.0  # after EOF, how long the agent may take to stop its kernel and clean up
SHUTDOWN_GRACE = 8.0  # the agent's SIGTERM-then-SIGKILL takes up to 3 s; then we stop waiting


def _drop_notice(frames: int, nbytes: int, cap: int) -> str:
    return ("[proxykernel] %d output messages (%.1f MB) produced while the connection was down were "
            "dropped: they overflowed the %d MB replay buffer (--buffer-size)\n"
            % (frames, nbytes / 1e6, cap // (1024 * 1024)))


class Proxy:
    """One proxied kernel. ``run()`` returns the exit code for the process.

    States: booting the first link (until the agent reports the kernel ready), linked, and
    reconnecting (a new ssh every backoff step, while Jupyter's heartbeat is answered here and
    what frontends send waits in the replay buffer); it ends when the kernel exits or on failure.
    """

    def __init__(self, config: ProxyConfig, first_ssh: "Optional[subprocess.Popen[bytes]]" = None,
                 control: Optional[str] = None) -> None:
        """Called by ``cli.main`` with the ssh it started before the heavy imports (if any), and
        our ControlMaster socket path (None: no connection sharing of ours)."""
        self.config = config
        self.first_ssh = first_ssh
        self.control = control
        self.context = zmq.Context()
        self.conn = wire.Connection(wire.Role.PROXY, session=uuid.uuid4().hex, max_buffer=config.buffer_size)
        self.bundle: AgentBundle = agent_bundle(config.agent_source)
        self.agent_memo = agent_memo_path(config)
        self.boot_buffer = memoryview(bytearray(64 * 1024))  # ssh's output until the agent speaks
        self.send_agent = False  # this link's stream starts with the agent (else with NO_AGENT)
        self.frontend: Optional[Frontend] = None
        self.argv: List[str] = []
        self.ssh: Optional[SSHTransport] = None
        self.boot: Optional[BootReader] = None
        self.ssh_lines: List[str] = []
        self.heartbeat: Optional[wire.Heartbeat] = None
        self.ready = False
        self.started_at = time.monotonic()
        self.lost_at: Optional[float] = None  # when the current outage began
        self.attempts = 0
        self.drop_notice: Optional[str] = None
        self.done: "asyncio.Future[int]" = asyncio.get_running_loop().create_future()
        self._flush_scheduled = False
        self.ticker_handle: Optional[asyncio.TimerHandle] = None
        self.link_started = self.started_at
        self.start_config: Dict[str, Any] = {}

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        try:
            info = load_connection_file(self.config.connection_file)
            self.frontend = Frontend(info, self.from_frontend, self.context)
        except (ConnectionFileError, zmq.ZMQError) as error:
            log.error("%s", error)
            if self.first_ssh is not None:
                self.first_ssh.kill()
                self.first_ssh.wait()
            return 1
        self.start_config = {"key": str(info["key"]), "env": self.config.env,
                             "signature_scheme": info.get("signature_scheme", "hmac-sha256"),
                             "kernel_name": info.get("kernel_name", ""),
                             "transport": self.config.transport}
        self.argv = ssh_command(self.config, str(info["key"]), self.control)
        log.info("connecting to %s", self.config.host)
        self.connect()
        timer = loop.call_later(self.config.timeout, self.startup_timeout)
        self.ticker_handle = loop.call_later(TICK, self.tick)
        loop.add_signal_handler(signal.SIGINT, self.interrupt)
        loop.add_signal_handler(signal.SIGTERM, self.shutdown)
        loop.add_signal_handler(signal.SIGHUP, self.shutdown)
        try:
            code = await self.done
        finally:
            timer.cancel()
            self.ticker_handle.cancel()
            for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                loop.remove_signal_handler(signum)
            await self.close()
        return code

    # -- links -------------------------------------------------------------------------------
    def connect(self) -> None:
        """Start one ssh: the first link sends the kernel's start, later ones only resume."""
        self.boot = BootReader()
        self.ssh_lines = []
        self.heartbeat = None
        self.conn.new_link()
        self.conn.send_hello()
        if not self.ready and self.attempts == 0:
            self.conn.send_start(self.start_config)
            # A first link starts a new session: the agent has received nothing, so what frontends
            # sent can follow at once instead of a round trip later, after the agent's hello.
            self.conn.resume(0)
        self.attempts += 1
        self.send_agent = self.send_agent or not os.path.exists(self.agent_memo)
        transport = SSHTransport(self.argv, self.ssh_buffer, self.on_ssh_data, self.on_ssh_stderr,
                                 self.on_ssh_exit)
        self.ssh = transport
        self.link_started = time.monotonic()
        asyncio.ensure_future(self._start(transport))

    async def _start(self, transport: SSHTransport) -> None:
        popen, self.first_ssh = self.first_ssh, None
        try:
            await transport.start(popen)
        except OSError as error:
            self.fail("cannot run %r: %s" % (self.config.ssh.ssh, error))
            return
        # Everything at once, no round trip: the agent (unless the remote cache is known to have
        # it), then our stream; the bootstrap reads the first part, the agent the rest.
        transport.write(self.bundle.framed() if self.send_agent else NO_AGENT)
        self.flush()

    def link_lost(self, why: str, dead: bool = False) -> None:
        """The current ssh is gone (``dead``: silent, its network likely broken): before the kernel
        was ready that is fatal, after it we reconnect, keeping the kernel alive in Jupyter's eyes."""
        if self.done.done():
            return
        if not self.ready:
            self.fail(why)
            return
        old, self.ssh = self.ssh, None
        if old is not None:
            old.kill()
        self.heartbeat = None
        self.conn.new_link()
        now = time.monotonic()
        if self.lost_at is None:
            self.lost_at = now
            self.attempts = 0
            log.warning("connection to %s lost (%s); reconnecting", self.config.host, why)
        delay = BACKOFF[min(self.attempts, len(BACKOFF) - 1)]
        if dead and self.control:
            # The shared master's connection is as dead as ours: new sessions through it would hang.
            asyncio.ensure_future(self.stop_master())
        asyncio.get_running_loop().call_later(delay, self.reconnect)

    async def stop_master(self) -> None:
        """``ssh -O exit`` for our ControlMaster; quick, local (a unix socket), and bounded."""
        assert self.control is not None
        try:
            process = await asyncio.create_subprocess_exec(
                *stop_master_command(self.config, self.control), stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        except OSError:
            return
        try:
            await asyncio.wait_for(process.wait(), 3.0)
        except asyncio.TimeoutError:
            process.kill()
            await process.wait()

    def reconnect(self) -> None:
        if self.done.done() or self.ssh is not None:
            return
        assert self.lost_at is not None
        if time.monotonic() - self.lost_at > self.config.reconnect_timeout:
            self.give_up()
            return
        log.info("reconnecting to %s (attempt %d)", self.config.host, self.attempts + 1)
        self.connect()

    def give_up(self) -> None:
        self.fail("lost the connection to %s and could not reconnect within %.0f s "
                  "(--reconnect-timeout); the remote kernel stops after --linger"
                  % (self.config.host, self.config.reconnect_timeout))

    def tick(self) -> None:
        """Every TICK: heartbeat on a live link, deadlines on a connecting one."""
        loop = asyncio.get_running_loop()
        self.ticker_handle = loop.call_later(TICK, self.tick)
        now = time.monotonic()
        if self.heartbeat is not None:
            action = self.heartbeat.poll(now)
            if action is wire.Beat.PING:
                self.conn.send_ping(time.time())
                self.schedule_flush()
            elif action is wire.Beat.DEAD:
                self.link_lost("no reply for %.1f s" % self.heartbeat.timeout, dead=True)
        elif self.ready and self.ssh is not None and now - self.link_started > self.config.timeout:
            self.link_lost("ssh did not connect within %.0f s" % self.config.timeout, dead=True)
        if self.lost_at is not None and now - self.lost_at > self.config.reconnect_timeout:
            self.give_up()

    # -- the stream from the remote ----------------------------------------------------------
    def ssh_buffer(self, transport: SSHTransport) -> memoryview:
        """Where the next read from ssh goes: the stream's own buffers once the agent speaks."""
        if self.boot is None and transport is self.ssh and not self.done.done():
            return self.conn.read_buffer()
        return self.boot_buffer

    def on_ssh_data(self, transport: SSHTransport, count: int) -> None:
        if self.done.done() or transport is not self.ssh:
            return
        if self.heartbeat is not None:
            self.heartbeat.heard(time.monotonic())
        rest: Optional[bytes] = None  # what followed the bootstrap's line in the same read
        if self.boot is not None:
            try:
                result = self.boot.feed(bytes(self.boot_buffer[:count]))
            except ValueError as error:
                self.fail(str(error))
                return
            if result is None:
                return
            reply, rest = result
            self.boot = None
            if not self.booted(reply):
                return
        try:
            events = self.conn.receive_data(rest) if rest is not None else self.conn.received_into(count)
            for event in events:
                self.handle(event)
        except wire.ProtocolError as error:
            self.fail(str(error))
            return
        self.schedule_flush()

    def booted(self, reply: BootReply) -> bool:
        """The bootstrap's verdict; False if this link ends here."""
        if reply.status == "NEED" and not self.send_agent:
            # Our memo was stale (the remote cache was emptied): start this link again, with the agent.
            log.info("the agent is no longer cached on %s; sending it", self.config.host)
            self._forget_agent_memo()
            self.send_agent = True
            old, self.ssh = self.ssh, None
            assert old is not None
            old.kill()
            if not self.ready:
                self.attempts = 0  # still the first link: it must carry the start again
            self.connect()
            return False
        if reply.status not in ("HAVE", "GOT"):
            self.fail(boot_error(reply, self.config.host, self.config.python))
            return False
        if reply.status == "GOT":
            log.info("agent sent (%d kB)", len(self.bundle.data) // 1024)
        else:
            log.info("agent cached on %s", self.config.host)
        if "uncached" in reply.words:
            log.warning("the agent cannot be cached on %s (its ~/.cache is not writable): every start "
                        "sends it again", self.config.host)
            return True  # no marker: the next start sends the agent along again, no retry
        try:
            with open(self.agent_memo, "w"):
                pass
        except OSError:
            pass  # the next start sends the agent along again: slower, no worse
        self.send_agent = False
        return True

    def _forget_agent_memo(self) -> None:
        try:
            os.unlink(self.agent_memo)
        except OSError:
            pass

    def handle(self, event: wire.Event) -> None:
        if isinstance(event, wire.ChannelData):
            self.to_frontend(event)
        elif isinstance(event, wire.Hello):
            self.linked(event)
        elif isinstance(event, wire.Ready):
            self.ready = True
            info = event.info
            log.info("kernel ready in %.2f s: ipykernel %s, Python %s on %s (pid %s)",
                     time.monotonic() - self.started_at, info.get("ipykernel"), info.get("python"),
                     info.get("hostname"), info.get("pid"))
        elif isinstance(event, wire.Pong) and self.heartbeat is not None:
            self.heartbeat.pong(event.timestamp, time.time())
        elif isinstance(event, wire.LogLine):
            log.info("%s", event.text)
        elif isinstance(event, wire.Skipped):
            self.drop_notice = _drop_notice(event.frames, event.nbytes, self.config.buffer_size)
            log.warning("%s", self.drop_notice.strip())
        elif isinstance(event, wire.KernelExited):
            log.info("the remote kernel exited with code %d", event.code)
            self.finish(event.code if 0 <= event.code < 256 else 128 + abs(event.code) % 128)
        elif isinstance(event, wire.ErrorReport):
            self.fail("the remote agent on %s reported: %s" % (self.config.host, event.sentence))
        elif isinstance(event, wire.Noise):
            log.debug("skipped %d bytes the remote printed before the agent started", len(event.data))

    def linked(self, hello: wire.Hello) -> None:
        if self.ready and "resumed" not in hello.capabilities:
            self.fail("the remote agent on %s no longer has this kernel (stopped after --linger, or "
                      "the host restarted); restart the kernel" % self.config.host)
            return
        replay = sum(1 for seq, _, _ in self.conn.unacked if seq > hello.received)
        if not self.conn.linked:  # (a first link went ahead already: everything is on its way)
            self.conn.resume(hello.received)
        self.heartbeat = wire.Heartbeat(self.config.heartbeat_interval, self.config.heartbeat_timeout,
                                        time.monotonic())
        if self.lost_at is not None:
            log.warning("reconnected to %s after %.1f s (attempt %d); resent %d messages",
                        self.config.host, time.monotonic() - self.lost_at, self.attempts, replay)
            self.lost_at = None
            self.attempts = 0

    def to_frontend(self, event: wire.ChannelData) -> None:
        if self.frontend is None:
            return
        if self.drop_notice is not None and event.channel == "iopub":
            # Shown in the cell the next output belongs to, so the user sees what went missing.
            self.frontend.publish_stream(self.drop_notice, event.frames)
            self.drop_notice = None
        self.frontend.send(event.channel, event.frames)

    def on_ssh_stderr(self, transport: SSHTransport, line: str) -> None:
        if transport is not self.ssh or self.boot is not None:
            self.ssh_lines.append(line)  # summarized in one sentence if the start fails
            log.debug("ssh: %s", line)
        else:
            log.info("%s", line)

    def on_ssh_exit(self, transport: SSHTransport, code: Optional[int]) -> None:
        if self.done.done() or transport is not self.ssh:
            return
        if self.boot is not None and not self.ready:
            self.fail(explain_ssh_failure(self.config.host, self.ssh_lines, code))
        elif not self.ready:
            self.fail("the remote agent on %s stopped before the kernel started (exit code %s); "
                      "see the lines above" % (self.config.host, code))
        else:
            self.link_lost("ssh exited with code %s" % code)

    # -- the frontends -----------------------------------------------------------------------
    def from_frontend(self, channel: str, frames: List[bytes]) -> None:
        self.conn.send_data(channel, frames)
        self.schedule_flush()

    def schedule_flush(self) -> None:
        # Batches every message that arrived in this loop iteration into one pipe write.
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        self._flush_scheduled = False
        if self.ssh is not None and self.ssh.started:
            self.ssh.write(self.conn.data_to_send())

    # -- lifecycle ---------------------------------------------------------------------------
    def interrupt(self) -> None:
        log.info("interrupt: sending SIGINT to the remote kernel")
        self.conn.send_interrupt()
        self.schedule_flush()

    def shutdown(self) -> None:
        if not self.ready or not self.conn.linked:
            # Nobody to tell: the agent stops the kernel after --linger, or sees the stream end.
            self.finish(143)
            return
        log.info("shutdown requested: stopping the remote kernel")
        self.conn.send_shutdown()
        self.schedule_flush()
        asyncio.get_running_loop().call_later(SHUTDOWN_GRACE, self.fail,
                                              "the remote agent did not confirm the shutdown")

    def startup_timeout(self) -> None:
        if self.ready or self.done.done():
            return
        stage = "ssh is still connecting" if self.boot is not None else "the agent did not report a kernel"
        self.fail("no kernel on %s after %.0f s (%s): check that 'ssh %s true' works quickly, or raise "
                  "--timeout" % (self.config.host, self.config.timeout, stage, self.config.host))

    def fail(self, sentence: str) -> None:
        if not self.done.done():
            log.error("%s", sentence)
            if not self.ready and self.conn.linked:
                self.conn.send_shutdown()  # a start that failed half-way leaves no kernel behind
            self.finish(1)

    def finish(self, code: int) -> None:
        if self.frontend is not None:
            self.frontend.answer_heartbeat = False
        if not self.done.done():
            self.done.set_result(code)

    async def close(self) -> None:
        if self.ssh is not None:
            if self.conn.linked:
                # Deliver the last frames, then EOF: the remote side of this session ends and ssh
                # exits by itself (the agent has already stopped, or lingers by design).
                self.flush()
                self.ssh.close_input()
                await self.ssh.wait(SSH_EXIT_GRACE)
            self.ssh.kill()
        if self.frontend is not None:
            self.frontend.close()
        self.context.term()
