"""The local proxy: Jupyter's five sockets on one side, one ssh stream to the remote agent on the other.

Started by ``python -m proxykernel`` (so by Jupyter through kernel.json). Owns the lifecycle: boot the
remote agent, hand it the key inside the stream, relay messages both ways, turn SIGINT into an
interrupt and SIGTERM into a shutdown, and exit with the remote kernel's exit code.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
import subprocess
import uuid
from typing import Any, Callable, Dict, List, Mapping, Optional

import zmq

from proxykernel.batch import JobWatch
from proxykernel.bootstrap import NO_AGENT, AgentBundle, agent_bundle
from proxykernel.config import (
    ConnectionFileError,
    ProxyConfig,
    agent_memo_path,
    kernel_id,
    load_connection_file,
    ssh_command,
    stop_master_command,
)
from proxykernel.frontend import BindError, Frontend
from proxykernel.session import age, shutdown_reply
from proxykernel.link import (Action, Deliver, Exit, Fail, Flush, ForgetAgent, KillSsh, Link, OutputDropped,
                              RememberAgent, StartSsh, StopMaster, Wake)
from proxykernel.relogin import NeedsLogin
from proxykernel.transport import SSHTransport, run_briefly

__all__ = ["ProxyConfig", "Proxy", "kernel_id"]

log = logging.getLogger("proxykernel")

TICK = 0.25  # how often the link is polled (heartbeat, deadlines); it asks for finer wake-ups
SSH_EXIT_GRACE = 5.0  # after EOF, how long the agent may take to stop its kernel and clean up


class ParentWatch:
    """Notices that the process which started the proxy (Jupyter) has died, as ipykernel's parent
    poller does. Made by ``Proxy``; ``gone()`` is asked on every tick."""

    def __init__(self, environ: Mapping[str, str] = os.environ) -> None:
        self.ppid = os.getppid()
        try:
            self.parent = int(environ.get("JPY_PARENT_PID", "") or self.ppid)  # jupyter_client sets it
        except ValueError:
            self.parent = self.ppid

    def gone(self) -> bool:
        if os.getppid() != self.ppid:  # reparented: whoever started us has exited (safe from pid reuse)
            return True
        if self.parent in (self.ppid, 1):
            return False
        try:
            os.kill(self.parent, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass  # alive, another user's
        return False


def _drop_notice(frames: int, nbytes: int, cap: int) -> str:
    return ("[proxykernel] %d output messages (%.1f MB) produced while the connection was down were "
            "dropped: they overflowed the %d MB replay buffer (--buffer-size)\n"
            % (frames, nbytes / 1e6, cap // (1024 * 1024)))


def start_config(config: ProxyConfig, info: Dict[str, Any]) -> Dict[str, Any]:
    """What the Start frame asks of the agent, from our options and Jupyter's connection file ``info``."""
    env = dict(config.env)
    if config.session:
        env.setdefault("JPY_SESSION_NAME", config.session)  # as Jupyter gives a local kernel
    return {"key": str(info["key"]), "env": env, "session": config.session, "reattach": config.reattaches,
            "persistent": config.persists, "signature_scheme": info.get("signature_scheme", "hmac-sha256"),
            "kernel_name": info.get("kernel_name", ""), "transport": config.transport}


def _touch(path: str) -> None:
    """The agent memo: the remote cache has this agent (``RememberAgent``)."""
    try:
        with open(path, "w"):
            pass
    except OSError:
        pass  # the next start sends the agent along again: slower, no worse


def _remove(path: str) -> None:
    """The agent memo was wrong (``ForgetAgent``)."""
    try:
        os.unlink(path)
    except OSError:
        pass


class Proxy:
    """One proxied kernel: the glue between the frontends (``Frontend``), the link (``Link``, which
    decides) and the ssh that carries it (``SSHTransport``). ``run()`` returns the exit code.

    Made and run by ``cli.main``. Every callback (a frontend's message, ssh's output, stderr and exit,
    the timer tick, a signal) reads the loop's time, hands it to the link, and runs the actions it
    returns; the link's states are booting, linked and reconnecting (meanwhile Jupyter's heartbeat is
    answered here and what frontends send waits in the replay buffer), until the kernel exits or a
    failure.
    """

    def __init__(self, config: ProxyConfig, first_ssh: "Optional[subprocess.Popen[bytes]]" = None,
                 control: Optional[str] = None) -> None:
        """Called by ``cli.main`` with the ssh it started before the heavy imports (if any), and
        our ControlMaster socket path (None: no connection sharing of ours)."""
        self.config = config
        self.first_ssh = first_ssh
        self.control = control
        self.context = zmq.Context()
        self.loop = asyncio.get_running_loop()
        self.started_at = self.loop.time()
        self.bundle: AgentBundle = agent_bundle(config.agent_source)
        self.agent_memo = agent_memo_path(config)
        self.link: Link  # made by run, once the connection file (and the key) is read
        self.frontend: Optional[Frontend] = None
        self.argv: List[str] = []
        self.ssh: Optional[SSHTransport] = None
        self.discard = memoryview(bytearray(64 * 1024))  # where a replaced ssh's last output goes
        self.drop_notice: Optional[str] = None
        self.done: "asyncio.Future[int]" = self.loop.create_future()
        self._flush_scheduled = False
        self.ticker_handle: Optional[asyncio.TimerHandle] = None
        self.parent = ParentWatch()
        self.job = JobWatch(config.slurm is not None)  # --slurm: the kernel's batch job
        # What runs each action of the link (as asyncssh dispatches packets: one table).
        self.handlers: Dict[type, Callable[[Any], None]] = {
            Deliver: self.to_frontend, Flush: self.schedule_flush, StartSsh: self.start_ssh,
            KillSsh: self.kill_ssh, StopMaster: self.stop_master_soon, Wake: self.wake_at,
            OutputDropped: self.output_dropped, RememberAgent: lambda _: _touch(self.agent_memo),
            ForgetAgent: lambda _: _remove(self.agent_memo), Exit: self.exited, Fail: self.failed,
            NeedsLogin: self.needs_login}

    async def run(self) -> int:
        loop = self.loop
        try:
            info = load_connection_file(self.config.connection_file)
            self.frontend = Frontend(info, self.from_frontend, self.context)
        except (ConnectionFileError, BindError) as error:
            log.error("%s", error)
            if self.first_ssh is not None:
                self.first_ssh.kill()
                self.first_ssh.wait()
            return 1
        self.argv = ssh_command(self.config, str(info["key"]), self.control)
        self.job.reconnect = functools.partial(ssh_command, self.config, str(info["key"]), self.control)
        self.link = Link(self.config, start_config(self.config, info), uuid.uuid4().hex,
                         agent_cached=os.path.exists(self.agent_memo), agent_size=len(self.bundle.data),
                         shared_master=bool(self.control), started_at=self.started_at)
        log.info("connecting to %s", self.config.host)
        self.run_actions(self.link.start(loop.time()))
        self.ticker_handle = loop.call_later(TICK, self.tick)
        loop.add_signal_handler(signal.SIGINT, self.interrupt)
        loop.add_signal_handler(signal.SIGTERM, self.shutdown)
        loop.add_signal_handler(signal.SIGHUP, self.shutdown)
        try:
            code = await self.done
        finally:
            self.ticker_handle.cancel()
            for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                loop.remove_signal_handler(signum)
            await self.close()
        return code

    def run_actions(self, actions: List[Action]) -> None:
        """Do what the link asks, in order."""
        for action in actions:
            self.handlers[type(action)](action)

    # -- time --------------------------------------------------------------------------------
    def tick(self) -> None:
        """Every TICK: the link's heartbeat and deadlines."""
        self.ticker_handle = self.loop.call_later(TICK, self.tick)
        if self.parent.gone():
            self.parent_died()
            return
        self.job.hold(self.link, self.loop.time())  # --timeout counts from when the job runs
        self.run_actions(self.link.poll(self.loop.time()))

    def wake_at(self, action: Wake) -> None:
        self.loop.call_at(action.at, self.wake, action.at)

    def wake(self, at: float) -> None:
        # The loop may run a timer a hair early: the deadline it was set for has come.
        self.run_actions(self.link.poll(max(at, self.loop.time())))

    # -- the ssh -----------------------------------------------------------------------------
    def start_ssh(self, action: StartSsh) -> None:
        """A new ssh for the link (the first one may be running already, started by ``cli.main``)."""
        transport = SSHTransport(self.job.argv(self.argv), self.ssh_buffer, self.on_ssh_data,
                                 self.job.news_from(self.on_ssh_stderr), self.on_ssh_exit)
        self.ssh = transport
        asyncio.ensure_future(self._start(transport, action.send_agent))

    async def _start(self, transport: SSHTransport, send_agent: bool) -> None:
        popen, self.first_ssh = self.first_ssh, None
        try:
            await transport.start(popen)
        except OSError as error:
            self.fail("cannot run %r: %s" % (self.config.ssh.ssh, error))
            return
        # Everything at once, no round trip: the agent (unless the remote cache is known to have
        # it), then our stream; the bootstrap reads the first part, the agent the rest.
        transport.write(self.bundle.framed() if send_agent else NO_AGENT)
        self.flush()

    def kill_ssh(self, _: KillSsh) -> None:
        old, self.ssh = self.ssh, None
        if old is not None:
            old.kill()

    def stop_master_soon(self, _: StopMaster) -> None:
        if self.control:
            asyncio.ensure_future(run_briefly(stop_master_command(self.config, self.control), 3.0))

    def ssh_buffer(self, transport: SSHTransport) -> memoryview:
        """Where the next read from ssh goes: the link's buffers, for the current ssh."""
        if transport is self.ssh and not self.done.done():
            return self.link.read_buffer()
        return self.discard

    def on_ssh_data(self, transport: SSHTransport, count: int) -> None:
        if not self.done.done() and transport is self.ssh:
            self.run_actions(self.link.received(count, self.loop.time()))

    def on_ssh_stderr(self, transport: SSHTransport, line: str) -> None:
        if transport is not self.ssh or self.link.booting:
            self.link.note_ssh_line(line)  # summarized in one sentence if the start fails
            log.debug("ssh: %s", line)
        else:
            log.info("%s", line)  # the agent's log

    def on_ssh_exit(self, transport: SSHTransport, code: Optional[int]) -> None:
        if not self.done.done() and transport is self.ssh:
            self.run_actions(self.link.ssh_exited(code, self.loop.time()))

    # -- the frontends -----------------------------------------------------------------------
    def from_frontend(self, channel: str, frames: List[bytes]) -> None:
        if channel == "control" and self.config.persists and self.detach_on_shutdown(frames):
            return
        self.job.show_in_cell(self.frontend, channel, frames)
        self.run_actions(self.link.send(channel, frames))

    def detach_on_shutdown(self, frames: List[bytes]) -> bool:
        """``--persistent``: a frontend's shutdown (not a restart) is answered here, and the proxy
        detaches: the kernel keeps running for the next start of its session."""
        assert self.frontend is not None
        reply = shutdown_reply(frames, self.frontend.signer)
        if reply is not None:
            self.frontend.send("control", reply)
            self.detach("shutdown requested")
        return reply is not None

    def detach(self, why: str) -> None:
        """Leave the kernel running on the remote (--persistent): end this proxy as a dropped
        connection would, so the next start for the session reattaches."""
        log.info("%s: detaching (--persistent); the kernel of %s keeps running on %s for up to %s "
                 "with no frontend ('proxykernel ps %s' lists it)", why, self.config.session, self.config.host,
                 age(self.config.agent_linger), self.config.host)
        self.finish(0)

    def to_frontend(self, action: Deliver) -> None:
        if self.frontend is None:
            return
        if self.drop_notice is not None and action.channel == "iopub":
            # Shown in the cell the next output belongs to, so the user sees what went missing.
            self.frontend.publish_stream(self.drop_notice, action.frames)
            self.drop_notice = None
        self.frontend.send(action.channel, action.frames)

    def output_dropped(self, action: OutputDropped) -> None:
        self.drop_notice = _drop_notice(action.frames, action.nbytes, self.config.buffer_size)
        log.warning("%s", self.drop_notice.strip())

    def needs_login(self, action: NeedsLogin) -> None:
        if self.frontend is not None:  # (the link has logged it)
            self.frontend.notify("[proxykernel] %s\n" % action.sentence)

    def schedule_flush(self, _: Optional[Flush] = None) -> None:
        # Batches every message that arrived in this loop iteration into one pipe write.
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self._flush_scheduled = False
        if self.ssh is not None and self.ssh.started:
            self.ssh.write(self.link.data_to_send())

    # -- lifecycle ---------------------------------------------------------------------------
    def interrupt(self) -> None:
        log.info("interrupt: sending SIGINT to the remote kernel")
        self.run_actions(self.link.interrupt())

    def parent_died(self) -> None:
        """Jupyter died without stopping us (a crash, the OOM killer): leave as a dropped connection
        does, so that nothing stays here and the remote kernel stops after ``--linger``."""
        log.warning("the process that started this kernel (pid %d) has exited: detaching from the "
                    "remote kernel, which stops after --linger (%.0f s)", self.parent.parent, self.config.linger)
        self.finish(0)

    def shutdown(self) -> None:
        if self.config.persists:
            self.detach("SIGTERM")
        else:
            self.run_actions(self.link.shutdown(self.loop.time()))

    def fail(self, sentence: str) -> None:
        """A failure of the proxy's own (ssh would not run): ended through the link, as its own."""
        self.run_actions(self.link.fail(sentence))

    def exited(self, action: Exit) -> None:
        self.finish(action.code)

    def failed(self, action: Fail) -> None:
        if not self.done.done():
            log.error("%s", action.sentence)
            self.finish(1)

    def finish(self, code: int) -> None:
        if self.frontend is not None:
            self.frontend.answer_heartbeat = False
        if not self.done.done():
            self.done.set_result(code)

    async def close(self) -> None:
        if self.ssh is not None:
            if self.link.linked:
                # Acknowledge all output received (a reattach later resends only what no frontend
                # saw), deliver the last frames, then EOF: the remote side of this session ends and
                # ssh exits by itself (the agent has already stopped, or lingers by design).
                self.link.conn.send_ack()
                self.flush()
                self.ssh.close_input()
                await self.ssh.wait(SSH_EXIT_GRACE)
            self.ssh.kill()
        if self.frontend is not None:
            self.frontend.close()
        self.context.term()
