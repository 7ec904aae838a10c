"""The local proxy: Jupyter's five sockets on one side, one ssh stream to the remote agent on the other.

Started by ``python -m proxykernel`` (so by Jupyter through kernel.json). Owns the lifecycle: boot the
remote agent, hand it the key inside the stream, relay messages both ways, turn SIGINT into an
interrupt and SIGTERM into a shutdown, and exit with the remote kernel's exit code.
"""
from __future__ import annotations

import asyncio
import logging
import signal
import time
import uuid
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import zmq

from proxykernel.bootstrap import AgentBundle, BootReader, BootReply, agent_bundle, remote_command
from proxykernel.frontend import ConnectionFileError, Frontend, load_connection_file
from proxykernel.transport import SSHOptions, SSHTransport, explain_ssh_failure, ssh_argv
from remote_agent import wire

__all__ = ["ProxyConfig", "Proxy", "StartupError"]

log = logging.getLogger("proxykernel")

SSH_EXIT_GRACE = 5.0  # after EOF, how long the agent may take to stop its kernel and clean up
SHUTDOWN_GRACE = 8.0  # the agent's SIGTERM-then-SIGKILL takes up to 3 s; then we stop waiting


class StartupError(Exception):
    """The kernel could not be started; ``str(error)`` is the one sentence the user sees."""


@dataclass(frozen=True)
class ProxyConfig:
    host: str
    python: str
    connection_file: str
    timeout: float = 30.0
    env: Dict[str, str] = field(default_factory=dict)
    sudo: bool = False
    ssh: SSHOptions = field(default_factory=lambda: SSHOptions(host=""))
    transport: str = "ipc"  # how the remote kernel's own sockets are bound: ipc, or tcp on 127.0.0.1
    agent_source: Optional[str] = None  # a remote_agent directory to ship instead of ours (tests)


def _boot_error(reply: BootReply, config: ProxyConfig) -> str:
    """The sentence for a bootstrap's ``ERR`` line."""
    words = reply.words
    what = words[0] if words else ""
    exe = words[-1] if len(words) > 1 else config.python
    if what == "no-python":
        return ("the remote Python %r does not exist on %s: pass --python the path of an interpreter "
                "(or environment prefix) that has ipykernel" % (config.python, config.host))
    if what == "missing":
        return ("the remote Python %s on %s lacks %s: install it there with '%s -m pip install "
                "ipykernel'" % (exe, config.host, words[1].replace(",", ", "), exe))
    if what == "old-python":
        return ("the remote Python %s on %s is version %s; proxykernel needs Python 3.8 or newer "
                "there" % (exe, config.host, words[1]))
    if what == "corrupt-agent":
        return "the agent sent to %s arrived damaged; check that the connection is 8-bit clean" % config.host
    return "the remote bootstrap on %s failed: %s" % (config.host, " ".join(words))


class Proxy:
    """One proxied kernel. ``run()`` returns the exit code for the process."""

    def __init__(self, config: ProxyConfig) -> None:
        self.config = config
        self.context = zmq.Context()
        self.conn = wire.Connection("proxy", session=uuid.uuid4().hex)
        self.boot: Optional[BootReader] = BootReader()
        self.bundle: AgentBundle = agent_bundle(config.agent_source)
        self.frontend: Optional[Frontend] = None
        self.ssh: Optional[SSHTransport] = None
        self.ssh_lines: List[str] = []
        self.ready = False
        self.started_at = time.monotonic()
        self.done: "asyncio.Future[int]" = asyncio.get_running_loop().create_future()
        self._flush_scheduled = False

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        try:
            info = load_connection_file(self.config.connection_file)
            self.frontend = Frontend(info, self.from_frontend, self.context)
        except (ConnectionFileError, zmq.ZMQError) as error:
            log.error("%s", error)
            return 1
        self.conn.send_hello()
        self.conn.send_start({"key": str(info["key"]), "env": self.config.env,
                              "signature_scheme": info.get("signature_scheme", "hmac-sha256"),
                              "kernel_name": info.get("kernel_name", ""),
                              "transport": self.config.transport})
        command = remote_command(self.config.python, self.bundle, self.config.sudo)
        self.ssh = SSHTransport(ssh_argv(self.config.ssh, command), self.on_ssh_data,
                                self.on_ssh_stderr, self.on_ssh_exit)
        log.info("connecting to %s", self.config.host)
        try:
            await self.ssh.start()
        except OSError as error:
            self.fail("cannot run %r: %s" % (self.config.ssh.ssh, error))
        timer = loop.call_later(self.config.timeout, self.startup_timeout)
        loop.add_signal_handler(signal.SIGINT, self.interrupt)
        loop.add_signal_handler(signal.SIGTERM, self.shutdown)
        try:
            code = await self.done
        finally:
            timer.cancel()
            loop.remove_signal_handler(signal.SIGINT)
            loop.remove_signal_handler(signal.SIGTERM)
            await self.close()
        return code

    # -- the stream from the remote ----------------------------------------------------------
    def on_ssh_data(self, data: bytes) -> None:
        if self.done.done():
            return
        if self.boot is not None:
            try:
                result = self.boot.feed(data)
            except ValueError as error:
                self.fail(str(error))
                return
            if result is None:
                return
            reply, data = result
            self.boot = None
            self.booted(reply)
        try:
            events = self.conn.receive_data(data)
        except wire.ProtocolError as error:
            self.fail(str(error))
            return
        for event in events:
            self.handle(event)
        if self.conn.ack_due:
            self.conn.send_ack()
        self.schedule_flush()

    def booted(self, reply: BootReply) -> None:
        if reply.status == "ERR":
            self.fail(_boot_error(reply, self.config))
            return
        assert self.ssh is not None
        if reply.status == "NEED":
            log.info("agent sent (%d kB)", len(self.bundle.data) // 1024)
            self.ssh.write(self.bundle.framed())
        else:
            log.info("agent cached on %s", self.config.host)
        self.ssh.write(self.conn.data_to_send())

    def handle(self, event: wire.Event) -> None:
        if isinstance(event, wire.ChannelData):
            if self.frontend is not None:
                self.frontend.send(event.channel, event.frames)
        elif isinstance(event, wire.Ready):
            self.ready = True
            info = event.info
            log.info("kernel ready in %.2f s: ipykernel %s, Python %s on %s (pid %s)",
                     time.monotonic() - self.started_at, info.get("ipykernel"), info.get("python"),
                     info.get("hostname"), info.get("pid"))
        elif isinstance(event, wire.Ping):
            self.conn.send_pong(event.timestamp)
        elif isinstance(event, wire.KernelExited):
            log.info("the remote kernel exited with code %d", event.code)
            self.finish(event.code if 0 <= event.code < 256 else 128 + abs(event.code) % 128)
        elif isinstance(event, wire.ErrorReport):
            self.fail("the remote agent on %s reported: %s" % (self.config.host, event.sentence))
        elif isinstance(event, wire.Noise):
            log.debug("skipped %d bytes the remote printed before the agent started", len(event.data))

    def on_ssh_stderr(self, line: str) -> None:
        if self.boot is not None:
            self.ssh_lines.append(line)  # summarized in one sentence if the start fails
            log.debug("ssh: %s", line)
        else:
            log.info("%s", line)

    def on_ssh_exit(self, code: Optional[int]) -> None:
        if self.done.done():
            return
        if self.boot is not None:
            self.fail(explain_ssh_failure(self.config.host, self.ssh_lines, code))
        elif not self.ready:
            self.fail("the remote agent on %s stopped before the kernel started (exit code %s); "
                      "see the lines above" % (self.config.host, code))
        else:
            self.fail("the ssh connection to %s was lost (exit code %s)" % (self.config.host, code))

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
        if self.boot is None and self.ssh is not None:
            self.ssh.write(self.conn.data_to_send())

    # -- lifecycle ---------------------------------------------------------------------------
    def interrupt(self) -> None:
        log.info("interrupt: sending SIGINT to the remote kernel")
        self.conn.send_interrupt()
        self.schedule_flush()

    def shutdown(self) -> None:
        if not self.ready:
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
            self.finish(1)

    def finish(self, code: int) -> None:
        if self.frontend is not None:
            self.frontend.answer_heartbeat = False
        if not self.done.done():
            self.done.set_result(code)

    async def close(self) -> None:
        if self.ssh is not None:
            self.flush()
            # EOF first: the agent then stops its kernel and removes its files, and ssh exits.
            self.ssh.close_input()
            await self.ssh.wait(SSH_EXIT_GRACE)
            self.ssh.kill()
        if self.frontend is not None:
            self.frontend.close()
        self.context.term()
