"""The proxy's local sockets (``proxykernel.frontend.Frontend``) against real ZMQ clients on 127.0.0.1.

The lost wake-up (issue 9): libzmq's ``ZMQ_FD`` is edge-triggered, and a send processes the socket's
pending commands. A request that arrives while the loop is busy, followed by a reply sent on the same
socket before the loop polls again, used to consume the only wake-up: the request then sat unread
until something unrelated woke the socket. These tests make exactly that order happen, without races:
the loop does not run between the request's arrival and the reply's send.
"""
from __future__ import annotations

import asyncio
import json
import socket
import time
from typing import Any, Callable, Dict, Iterator, List, Tuple

import pytest
import zmq

from proxykernel.frontend import BindError, Frontend

ARRIVAL = 0.2  # seconds for a message to cross loopback and reach the peer socket's queue (generous)


def free_ports(count: int) -> List[int]:
    """Ports picked as jupyter_client picks them: bind to port 0, then release it (synchronously)."""
    socks = [socket.socket() for _ in range(count)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


Received = List[Tuple[str, List[bytes]]]


@pytest.fixture
def frontend() -> Iterator[Tuple[Frontend, Dict[str, Any], Received, zmq.Context[Any], asyncio.AbstractEventLoop]]:
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    context: zmq.Context[Any] = zmq.Context()
    ports = free_ports(5)
    info: Dict[str, Any] = {"transport": "tcp", "ip": "127.0.0.1", "key": "secret",
                            "signature_scheme": "hmac-sha256"}
    for channel, port in zip(("shell", "control", "stdin", "iopub", "hb"), ports):
        info["%s_port" % channel] = port
    received: Received = []
    made: List[Frontend] = []

    async def make() -> None:  # the Frontend binds from within the running loop, as in the proxy
        made.append(Frontend(info, lambda channel, frames: received.append((channel, frames)), context))
    loop.run_until_complete(make())
    yield made[0], info, received, context, loop
    made[0].close()
    loop.run_until_complete(asyncio.sleep(0))
    loop.close()
    asyncio.set_event_loop(None)
    context.term()


def run_until(loop: asyncio.AbstractEventLoop, done: Callable[[], bool], seconds: float) -> bool:
    """Run the loop until ``done()`` or ``seconds`` pass; bounded in time and count."""
    deadline = time.monotonic() + seconds
    for _ in range(int(seconds / 0.005) + 1):
        if done() or time.monotonic() > deadline:
            break
        loop.run_until_complete(asyncio.sleep(0.005))
    return done()


def client(context: zmq.Context[Any], kind: int, url: str) -> zmq.Socket[Any]:
    sock = context.socket(kind)
    sock.linger = 0
    sock.rcvtimeo = 2000
    sock.connect(url)
    return sock


def msg_type(frames: List[bytes]) -> str:
    return str(json.loads(frames[frames.index(b"<IDS|MSG>") + 2]).get("msg_type"))


def test_a_request_that_arrives_just_before_a_reply_is_read(frontend: Any) -> None:
    """Two requests, the first reply, the client's next request, then the second reply from the same
    loop iteration: the next request must still reach the proxy."""
    proxy, info, received, context, loop = frontend
    dealer = client(context, zmq.DEALER, "tcp://127.0.0.1:%d" % info["shell_port"])
    try:
        for round_ in range(20):
            received.clear()
            dealer.send_multipart([b"request-a-%d" % round_])
            dealer.send_multipart([b"request-b-%d" % round_])
            assert run_until(loop, lambda: len(received) == 2, 5.0), received
            identity = received[0][1][0]
            proxy.send("shell", [identity, b"reply-a"])
            assert dealer.recv_multipart() == [b"reply-a"]
            dealer.send_multipart([b"request-c-%d" % round_])
            time.sleep(ARRIVAL)  # request c is queued at the proxy's socket; the loop has not polled
            proxy.send("shell", [identity, b"reply-b"])
            assert dealer.recv_multipart() == [b"reply-b"]
            assert run_until(loop, lambda: len(received) == 3, 2.0), "round %d: request c never read" % round_
            assert received[2] == ("shell", [identity, b"request-c-%d" % round_])
    finally:
        dealer.close()


def test_a_subscription_that_arrives_just_before_output_is_welcomed(frontend: Any) -> None:
    """The IOPub XPUB: a late subscriber still gets its ``iopub_welcome`` when output is published
    in the same loop iteration that its subscription arrived in."""
    proxy, info, received, context, loop = frontend
    url = "tcp://127.0.0.1:%d" % info["iopub_port"]
    first = client(context, zmq.SUB, url)
    first.setsockopt(zmq.SUBSCRIBE, b"")
    late = client(context, zmq.SUB, url)
    try:
        assert run_until(loop, lambda: bool(first.poll(0)), 5.0)  # welcomed while the loop runs
        assert msg_type(first.recv_multipart()) == "iopub_welcome"
        late.setsockopt(zmq.SUBSCRIBE, b"")
        time.sleep(ARRIVAL)  # the late subscription is queued at the XPUB; the loop has not polled
        proxy.send("iopub", [b"stream", b"<IDS|MSG>", b"", b"{}", b"{}", b"{}", b"{}"])
        headers: List[str] = []

        def read_late() -> bool:
            while late.poll(0):
                headers.append(msg_type(late.recv_multipart()))
            return "iopub_welcome" in headers
        run_until(loop, read_late, 2.0)
        assert "iopub_welcome" in headers, headers
    finally:
        first.close()
        late.close()


def test_heartbeats_are_echoed_until_the_kernel_has_died(frontend: Any) -> None:
    proxy, info, received, context, loop = frontend
    beat = client(context, zmq.REQ, "tcp://127.0.0.1:%d" % info["hb_port"])
    try:
        for _ in range(3):
            beat.send(b"ping")
            assert run_until(loop, lambda: bool(beat.poll(0)), 5.0)
            assert beat.recv() == b"ping"
        proxy.answer_heartbeat = False
        beat.send(b"ping")
        assert not run_until(loop, lambda: bool(beat.poll(0)), 0.5)
    finally:
        beat.close()


def test_a_port_taken_since_jupyter_chose_it_gets_one_sentence() -> None:
    """With kernels started concurrently by several processes, a port that jupyter_client picked can
    be taken before the proxy binds it (bench.stress saw it 3 times in 1000 starts with 4 workers)."""
    taker = socket.socket()
    taker.bind(("127.0.0.1", 0))
    taker.listen(1)
    context: zmq.Context[Any] = zmq.Context()
    info: Dict[str, Any] = {"transport": "tcp", "ip": "127.0.0.1", "key": "k", "signature_scheme": "hmac-sha256"}
    for channel, port in zip(("shell", "control", "stdin", "iopub"), free_ports(4)):
        info["%s_port" % channel] = port
    info["hb_port"] = taker.getsockname()[1]

    async def make() -> None:
        Frontend(info, lambda channel, frames: None, context)
    try:
        with pytest.raises(BindError, match=r"^cannot listen on tcp://127\.0\.0\.1:%d, the hb port Jupyter chose "
                                            r"for this kernel: Address already in use" % info["hb_port"]):
            asyncio.run(make())
    finally:
        taker.close()
        context.term()  # hangs if the four sockets bound before the failure were left open
