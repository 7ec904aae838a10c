"""A proxied kernel behaves like a local ipykernel: real sshd on loopback, real ipykernel, real clients."""
from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import pytest
from jupyter_client import BlockingKernelClient, KernelManager

from tests.kernels import (Output, alive, kernel_manager, live_descendants, proxy_argv, run_cell,
                           running_kernel, shell_reply)

Kernel = Tuple[KernelManager, BlockingKernelClient]


@pytest.fixture(scope="module")
def proxied(sshd: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kernel]:
    with running_kernel(proxy_argv(sshd), tmp_path_factory.mktemp("spec")) as kernel:
        yield kernel


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kernel]:
    with running_kernel(None, tmp_path_factory.mktemp("spec")) as kernel:
        yield kernel


def _normal(outputs: List[Output]) -> List[Output]:
    """Outputs with what legitimately differs between two kernels (tracebacks' temp paths) removed."""
    return [(kind, {k: v for k, v in content.items() if k != "traceback"}) for kind, content in outputs]


CELLS = [
    "print('to stdout'); import sys; print('to stderr', file=sys.stderr)",
    "6 * 7",
    "from IPython.display import display, HTML; display(HTML('<b>hi</b>'), metadata={'m': 1})",
    "1 / 0",
    "x = 5\nx",
]


@pytest.mark.parametrize("code", CELLS)
def test_execute_matches_a_local_kernel(proxied: Kernel, local: Kernel, code: str) -> None:
    remote_reply, remote_out = run_cell(proxied[1], code)
    local_reply, local_out = run_cell(local[1], code)
    assert remote_reply["status"] == local_reply["status"]
    assert remote_out, "the cell produced no output through the proxy"
    assert _normal(remote_out) == _normal(local_out)


def _shell(kc: BlockingKernelClient, method: str, *args: Any, **kwargs: Any) -> Dict[str, Any]:
    reply = shell_reply(kc, getattr(kc, method)(*args, **kwargs))
    content: Dict[str, Any] = reply["content"]
    return content


@pytest.mark.parametrize("method, args, kwargs", [
    ("complete", ("import o",), {}),
    ("inspect", ("len",), {}),
    ("is_complete", ("for i in range(3):",), {}),
    ("history", (), {"hist_access_type": "tail", "n": 2}),
    ("kernel_info", (), {}),
])
def test_shell_requests_match_a_local_kernel(proxied: Kernel, local: Kernel, method: str,
                                             args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> None:
    remote, here = _shell(proxied[1], method, *args, **kwargs), _shell(local[1], method, *args, **kwargs)
    assert remote["status"] == ("incomplete" if method == "is_complete" else "ok")
    if method == "history":
        # Each kernel's history is its own sessions'; the shape must match.
        assert isinstance(remote["history"], list) and isinstance(here["history"], list)
    else:
        assert _untimed(remote) == _untimed(here)


def _untimed(content: Dict[str, Any]) -> Dict[str, Any]:
    """A reply without what the kernel computes against a clock: IPython gives up on a completion's
    type after ``jedi_compute_type_timeout`` (400 ms) and says "<unknown>", which a loaded machine
    makes the answer for one kernel and not the other."""
    types = content.get("metadata", {}).get("_jupyter_types_experimental")
    if types is None:
        return content
    untyped = [{key: value for key, value in entry.items() if key != "type"} for entry in types]
    return dict(content, metadata=dict(content["metadata"], _jupyter_types_experimental=untyped))


def test_stdin_input_round_trip(proxied: Kernel) -> None:
    reply, outputs = run_cell(proxied[1], "answer = input('name? '); print('got', answer)",
                              stdin_reply="Ada")
    assert reply["status"] == "ok"
    assert ("input_request", {"prompt": "name? ", "password": False}) in outputs
    assert ("stream", {"name": "stdout", "text": "got Ada\n"}) in outputs


def test_comm_round_trip(proxied: Kernel) -> None:
    kc = proxied[1]
    run_cell(kc, "def _target(comm, msg):\n"
                 "    comm.on_msg(lambda m: comm.send({'echo': m['content']['data']}))\n"
                 "get_ipython().kernel.comm_manager.register_target('echo', _target)")
    comm_open = kc.session.msg("comm_open", {"comm_id": "c1", "target_name": "echo", "data": {}})
    kc.shell_channel.send(comm_open)
    comm_msg = kc.session.msg("comm_msg", {"comm_id": "c1", "data": {"n": 42}})
    kc.shell_channel.send(comm_msg)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        msg = kc.get_iopub_msg(timeout=20)
        if msg["msg_type"] == "comm_msg":
            assert msg["content"] == {"comm_id": "c1", "data": {"echo": {"n": 42}}}
            return
    pytest.fail("no comm_msg echo arrived")


def test_two_clients_get_their_own_replies_and_both_iopub(proxied: Kernel) -> None:
    km, first = proxied
    second = BlockingKernelClient()  # its own session and identity, like `jupyter console --existing`
    second.load_connection_file(km.connection_file)
    second.start_channels()
    try:
        second.wait_for_ready(timeout=20)
        first_id = first.execute("print('from first')")
        second_id = second.execute("print('from second')")
        assert shell_reply(first, first_id)["parent_header"]["msg_id"] == first_id
        assert shell_reply(second, second_id)["parent_header"]["msg_id"] == second_id
        for client in (first, second):
            seen = set()
            deadline = time.monotonic() + 20
            while seen != {first_id, second_id} and time.monotonic() < deadline:
                msg = client.get_iopub_msg(timeout=20)
                if msg["msg_type"] == "stream":
                    seen.add(msg["parent_header"]["msg_id"])
            assert seen == {first_id, second_id}
    finally:
        second.stop_channels()


def test_large_outputs_arrive_complete_and_in_order(proxied: Kernel) -> None:
    kc = proxied[1]
    code = ("import sys, hashlib\n"
            "chunk = ''.join('%07d\\n' % i for i in range(131072))  # 1 MiB\n"
            "for n in range(50):\n"
            "    sys.stdout.write(str(n) + chunk)\n"
            "sys.stdout.flush()\n"
            "from IPython.display import display\n"
            "blob = 'ab' * (10 * 1024 * 1024)\n"
            "display({'text/plain': blob}, raw=True)\n"
            "print(hashlib.sha256(''.join(str(n) + chunk for n in range(50)).encode()).hexdigest())")
    reply, outputs = run_cell(kc, code, timeout=120)
    assert reply["status"] == "ok"
    text = "".join(c["text"] for kind, c in outputs if kind == "stream")
    printed, expected_hash = text[:-65], text[-65:-1]
    assert len(printed) >= 50 * 1024 * 1024
    assert hashlib.sha256(printed.encode()).hexdigest() == expected_hash
    blobs = [c["data"]["text/plain"] for kind, c in outputs if kind == "display_data"]
    assert len(blobs) == 1
    assert hashlib.sha256(blobs[0].encode()).digest() == hashlib.sha256(b"ab" * (10 * 1024 * 1024)).digest()


def test_a_large_cell_reaches_the_kernel_intact(proxied: Kernel) -> None:
    # The other way: a 6 MB request crosses the agent's read into a buffer of its own size.
    blob = hashlib.sha256(b"seed").hexdigest() * (6 * 1024 * 1024 // 64)
    code = "import hashlib\nprint(hashlib.sha256(%r.encode()).hexdigest())" % blob
    reply, outputs = run_cell(proxied[1], code, timeout=60)
    assert reply["status"] == "ok"
    assert outputs == [("stream", {"name": "stdout", "text": hashlib.sha256(blob.encode()).hexdigest() + "\n"})]


@pytest.mark.parametrize("mode", ["signal", "message"])
def test_interrupt_during_sleep(sshd: Any, tmp_path: Path, mode: str) -> None:
    with running_kernel(proxy_argv(sshd), tmp_path, interrupt_mode=mode) as (km, kc):
        msg_id = kc.execute("import time; time.sleep(60)")
        time.sleep(1.0)  # let the cell start sleeping
        started = time.monotonic()
        km.interrupt_kernel()
        reply = shell_reply(kc, msg_id, timeout=10)
        assert time.monotonic() - started < 2.0
        assert reply["content"]["status"] == "error"
        assert reply["content"]["ename"] == "KeyboardInterrupt"
        answer, outputs = run_cell(kc, "1 + 1")
        if answer["status"] == "aborted":  # ipykernel aborts what comes just after an error, by its own clock
            answer, outputs = run_cell(kc, "1 + 1")
        assert [(kind, out["data"]) for kind, out in outputs] == [("execute_result", {"text/plain": "2"})]


def test_restart_gives_fresh_kernel_and_shutdown_leaves_nothing(sshd: Any, tmp_path: Path) -> None:
    remote_before = set(live_descendants(sshd.pid))  # the listener, and other tests' kernels
    with running_kernel(proxy_argv(sshd), tmp_path) as (km, kc):
        run_cell(kc, "marker = 1")
        first_proxy = km.provisioner.pid  # type: ignore[union-attr]
        first_children = live_descendants(first_proxy)
        assert first_children, "the proxy runs no ssh"
        km.restart_kernel(now=False)
        kc.wait_for_ready(timeout=60)
        reply = run_cell(kc, "marker")[0]
        assert reply["status"] == "error" and reply["ename"] == "NameError"
        assert not any(alive(pid) for pid in first_children + [first_proxy])
        outputs = run_cell(kc, "import ipykernel, os; print(os.path.dirname(ipykernel.get_connection_file()))")[1]
        remote_dir = outputs[0][1]["text"].strip()
        assert os.path.isdir(remote_dir)
        proxy = km.provisioner.pid  # type: ignore[union-attr]
        local_side = [proxy] + live_descendants(proxy)
        remote_side = set(live_descendants(sshd.pid)) - remote_before
        assert remote_side, "no remote processes were seen under the test sshd"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(alive(p) for p in local_side + sorted(remote_side)):
        time.sleep(0.05)
    assert [p for p in local_side if alive(p)] == []
    assert [p for p in remote_side if alive(p)] == []
    assert set(live_descendants(sshd.pid)) - remote_before == set()
    assert not os.path.exists(remote_dir)
    # (The ssh ControlMaster a host's kernels share exits by itself: tests/test_sharing.py.)


@pytest.mark.parametrize("attempt", range(3))
def test_first_cell_right_after_kernel_info_reply_loses_no_output(sshd: Any, tmp_path: Path,
                                                                  attempt: int) -> None:
    # No wait_for_ready (which also waits for IOPub): a client that runs a cell as soon as the
    # kernel answers must still see its output, so the agent must listen before the kernel runs it.
    km = kernel_manager(proxy_argv(sshd), tmp_path)
    km.start_kernel()
    kc = km.client()
    kc.start_channels()
    try:
        msg_id = kc.kernel_info()
        assert shell_reply(kc, msg_id, timeout=60)["msg_type"] == "kernel_info_reply"
        assert run_cell(kc, "print('first')", timeout=20)[1] == [("stream", {"name": "stdout", "text": "first\n"})]
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=False)
        km.cleanup_resources()
