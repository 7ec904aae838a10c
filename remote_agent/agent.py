"""The daemon's loop, once zmq is imported: one ``zmq.Poller`` over the daemon's socket, the
attached stream, the kernel's stderr and the kernel's ZMQ sockets; the timers; the dispatch of what
the proxy sends, and what the kernel's exit means for the proxy.

``daemon.daemon_main`` makes the ``Agent`` after it has read the first link's Start frame and
launched the kernel, and runs it until the kernel is done with. The parts it glues: the stream
(``stream``), the kernel's lifecycle (``kernel``), the routing of ZMQ messages (``routing``).
"""
from __future__ import annotations

import argparse
import socket
import sys
import time
from collections import deque
from typing import Any, Deque, Dict, List, Optional

import zmq

from remote_agent import wire
from remote_agent.handoff import log as log_line
from remote_agent.kernel import DRAIN_SECONDS, Kernel, ipykernel_greets
from remote_agent.link import FirstLink
from remote_agent.reattach import carry_over, reattaches, signer
from remote_agent.resign import Resigner
from remote_agent.routing import Router
from remote_agent.status import StatusFile, status_path
from remote_agent.stream import Stream

__all__ = ["Agent", "idle_expired", "POLL_MS", "IDLE_EXIT"]

POLL_MS = 100  # how often timers (heartbeat, linger, kernel exit) are checked when all is quiet
IDLE_EXIT = 30.0  # a daemon with no kernel and no proxy for this long exits (a restart never came)
LOG_BACKLOG = 200  # log lines kept while no proxy is attached
REPORT_WAIT = 5.0  # how long a kernel's exit report may take to reach the stream


def idle_expired(idle: float, linger: float, kernel_alive: bool, exit_unreported: bool) -> bool:
    """Has a daemon with no proxy attached for ``idle`` seconds waited long enough to exit?

    Called by ``Agent.check_timers`` on every loop turn while detached. A kernel waits ``linger``
    (``--linger``) for its proxy; with no kernel the daemon leaves after IDLE_EXIT (a restart that
    never came), unless a kernel's exit is still to be reported: that waits as long as a kernel would.
    """
    if kernel_alive:
        return idle > linger
    return idle > (linger if exit_unreported else min(IDLE_EXIT, linger))


class Agent:
    """The daemon's state: its socket, at most one attached stream, the kernel and its router."""

    def __init__(self, listener: socket.socket, options: argparse.Namespace,
                 conn: Optional[wire.Connection] = None) -> None:
        """Called by ``daemon_main`` with its listening socket, the proxy's options and the
        decoder that has read the first link so far."""
        self.listener = listener
        self.options = options
        self.conn = conn if conn is not None else wire.Connection(wire.Role.AGENT, max_buffer=options.buffer)
        self.poller = zmq.Poller()
        self.poller.register(listener.fileno(), zmq.POLLIN)  # plain fds: Poller.poll returns fds
        self.kernel = Kernel(self.log)
        self.router = Router(self.conn, self.poller, on_restart=self.retire_for_restart)
        self.stream = Stream(self.conn, self.poller, options, self.log, self.handle_events)
        self.logs: Deque[str] = deque(maxlen=LOG_BACKLOG)
        self.exit_code: Optional[int] = None
        self.status = StatusFile(status_path(options.id), options)  # what `proxykernel ps` shows

    def log(self, message: str) -> None:
        """To the proxy (so to Jupyter's log) when attached, and to the daemon's own log file."""
        log_line(message)
        self.logs.append(message)
        self.send_logs()

    def send_logs(self) -> None:
        """Send the log lines kept while no proxy was linked (on each hello, and after each new line)."""
        if self.conn.linked:
            while self.logs:
                self.conn.send_log("proxykernel-agent: " + self.logs.popleft())

    # -- the loop ----------------------------------------------------------------------------
    def run(self, first: Optional[FirstLink] = None) -> int:
        """The daemon's loop, until the kernel is done with; ``first``: what ``daemon_main`` did
        before there was an Agent, taken over before anything else."""
        try:
            if first is not None:
                self.take_over(first)
            while self.exit_code is None:
                self.step(POLL_MS)
        finally:
            self.kernel.discard_ahead()
            self.stop_kernel()
            self.kernel.kill_retired()
            self.router.close()
            self.router.term()
        return self.exit_code

    def step(self, timeout_ms: int) -> None:
        """One turn: wait up to ``timeout_ms`` for I/O, handle it, check the timers, write."""
        polled = self.stream.watch()
        for sock, _ in self.poller.poll(timeout_ms):
            if self.router.relay(sock) or self.stream.on_ready(sock, polled):
                continue
            if sock == self.listener.fileno():
                self.stream.accept(self.listener)
            elif sock == self.kernel.stderr_fd:
                self.read_kernel_stderr()
            # the link's write fd when writable: flushed below
        self.check_timers(time.monotonic())
        process = self.kernel.process
        self.status.update((process.pid, self.kernel.started) if process is not None else None,
                           self.kernel.config, self.stream.link is not None, time.time())  # writes on a change
        self.stream.flush()

    def check_timers(self, now: float) -> None:
        """Every turn, with the loop's time: retired kernels, the kernel's exit, the wait for its
        welcome, the heartbeat, and the linger and idle exits."""
        self.kernel.reap(now)
        code = self.kernel.exit_status()
        if code is not None:
            self.kernel_exited(code)
        self.router.check_welcome(now)
        self.stream.check_heartbeat(now)
        idle = now - self.stream.detached_since
        alive = self.kernel.process is not None
        if self.stream.link is None and idle_expired(idle, self.options.linger, alive,
                                                     self.kernel.exited_code is not None):
            if alive:
                self.log("no proxy attached for %.0f s (--linger): stopping the kernel" % idle)
            self.exit_code = 0

    # -- what the proxy sends ----------------------------------------------------------------
    def take_over(self, first: FirstLink) -> None:
        """Carry on from where ``daemon_main`` stopped reading the first link: handle what it
        parsed, in order, with its kernel as the one the Start frame launches."""
        if first.link is None:
            return
        self.stream.attach(first.link, first.accepted_at)
        self.kernel.launched_ahead, first.launch = first.launch, None
        if first.error is not None:
            self.stream.reject(first.error)
        else:
            self.handle_events(first.events)
        self.kernel.discard_ahead()  # its Start was never handled (an error before it)
        if first.closed is not None:
            self.stream.detach(first.closed)
        self.stream.flush()  # the hello and Ready answer now, not after the loop's first poll times out

    def handle_events(self, events: List[wire.Event]) -> None:
        """What the proxy sent, decoded by the stream; a protocol error drops the link."""
        try:
            for event in events:
                self.handle(event)
        except wire.ProtocolError as error:
            self.stream.reject(error)

    def handle(self, event: wire.Event) -> None:
        """One event from the proxy (the connection has answered pings and acks itself)."""
        if isinstance(event, wire.ChannelData):
            self.router.relay_request(event)
        elif isinstance(event, wire.Hello):
            self.hello(event)
        elif isinstance(event, wire.Start):
            self.start(event.config)
        elif isinstance(event, wire.Pong) and self.stream.heartbeat is not None:
            self.stream.heartbeat.pong(event.timestamp, time.time())
        elif isinstance(event, wire.Interrupt):
            self.kernel.interrupt()
        elif isinstance(event, wire.Shutdown):
            self.log("shutdown requested by the proxy")
            self.stop_kernel()
            self.report_exit()
            self.exit_code = 0

    def hello(self, hello: wire.Hello) -> None:
        """The proxy's hello on a new link: answer, resume the replay, and report an exit it missed."""
        resumed = self.conn.resumed  # the decoder has already reset a new session's state
        self.conn.send_hello(capabilities=["resumed"] if resumed else [])
        self.conn.resume(hello.received)
        self.send_logs()
        if resumed and self.kernel.process is None and self.kernel.exited_code is not None:
            self.report_exit()

    # -- the kernel, as the proxy sees it ----------------------------------------------------
    def start(self, config: Dict[str, Any]) -> None:
        """A new proxy's start: reattach to the kernel of its session, hand over a fresh pre-started
        kernel, or start one."""
        if reattaches(self.kernel.config, config, self.kernel.running):
            self.reattach(config)
            return
        same_kernel = config.get("key") == self.kernel.config.get("key")
        if self.kernel.running and not self.router.used and same_kernel:
            assert self.kernel.process is not None
            self.log("handing over the kernel started for the restart (pid %d)" % self.kernel.process.pid)
        else:
            self.stop_kernel()
            self.launch_kernel(config)
        self.kernel.exited_code = None
        if self.kernel.process is not None:
            self.conn.send_ready(self.kernel.ready_info())

    def reattach(self, config: Dict[str, Any]) -> None:
        """A start for the session of the running kernel, under a new key (``reattach``): keep the
        kernel, re-sign between the keys, and resend the output the previous frontend missed."""
        assert self.kernel.process is not None
        previous, new = signer(self.kernel.config), signer(config)
        self.router.resigner = Resigner(frontend=new, kernel=signer(self.router.info), report=self.log)
        self.kernel.config = config  # a restart from here on starts its kernel with the new key
        info = dict(self.kernel.ready_info(), reattached=time.time() - self.kernel.started)
        self.conn.send_ready(info)
        missed = self.stream.replay_at_attach
        count = carry_over(missed.unacked, self.conn, previous, new, self.log) if missed is not self.conn.replay else 0
        self.log("reattached for %s: resent %d output messages the previous frontend had not received"
                 % (config.get("session"), count))

    def launch_kernel(self, config: Optional[Dict[str, Any]] = None) -> None:
        """Start a kernel for ``config`` (None: the same again, for a restart) and open its sockets."""
        self.router.close()
        error = self.kernel.launch(config)
        if self.kernel.process is None:
            self.conn.send_error(error)
            return
        self.poller.register(self.kernel.stderr_fd, zmq.POLLIN)
        self.router.open(self.kernel.connection_info, ipykernel_greets(), time.monotonic())
        self.log("kernel pid %d started with %s" % (self.kernel.process.pid, sys.executable))

    def read_kernel_stderr(self) -> None:
        """The kernel's stderr (warnings, a crash's traceback) goes to the proxy's log, by lines."""
        fd = self.kernel.stderr_fd
        lines = self.kernel.read_stderr()
        if lines is None:
            self.poller.register(fd, 0)  # its end: 0 unregisters
            return
        self.logs.extend(lines)
        self.send_logs()

    def stop_kernel(self) -> None:
        """On a Shutdown, a Start for another kernel, and when the daemon exits."""
        if self.kernel.process is not None:
            self.kernel.stop()
            self.forget_kernel()

    def forget_kernel(self) -> None:
        """The kernel is done with (exited, stopped, retired): stop polling it and routing to it."""
        fd = self.kernel.stderr_fd
        if fd is not None:
            self.poller.register(fd, 0)  # 0 unregisters, if registered
        self.kernel.forget()
        self.router.kernel_gone()

    def kernel_exited(self, code: int) -> None:
        """The loop saw the kernel's exit: relay its last words, report, and start the next one if
        the exit was a restart's."""
        self.router.drain(DRAIN_SECONDS)
        self.log("kernel exited with code %d" % code)
        self.forget_kernel()
        self.report_exit()
        if self.router.restart_expected:
            # Jupyter will start a new proxy with the same connection file: have its kernel ready.
            self.launch_kernel()
        elif self.stream.link is not None and self.kernel.exited_code is None:
            self.exit_code = code  # reported; nobody will ask for this kernel again

    def report_exit(self) -> None:
        """Tell a linked proxy the kernel's exit code, once; unlinked, it waits for the next hello."""
        if self.kernel.exited_code is not None and self.conn.linked:
            self.conn.send_kernel_exited(self.kernel.exited_code)
            self.stream.flush_blocking(REPORT_WAIT)
            self.kernel.exited_code = None

    def retire_for_restart(self) -> None:
        """The kernel answered a restart's shutdown_request (the router calls this): let the proxy
        go now (Jupyter waits for it to exit before it starts the next one) and start the next
        kernel at once, while the old one finishes exiting on its own."""
        self.conn.send_kernel_exited(0)
        self.stream.flush_blocking(REPORT_WAIT)
        self.kernel.retire(time.monotonic())
        self.forget_kernel()
        self.kernel.exited_code = None  # reported above
        self.launch_kernel()
