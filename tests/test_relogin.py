"""Hosts that ask for a password or a one-time code, without sockets or clocks: ssh's words and the
sentence, the link saying once per outage that a new login is needed, the cell a notice goes to, and
the small parts of ``proxykernel login`` (tests/test_login.py runs it against a real sshd)."""
from __future__ import annotations

import json
import logging
import time
from typing import Any, Dict, List, Tuple

import pytest

from proxykernel.login import LoginState, parse_duration
from proxykernel.notices import MAX_TRACKED, Cells
from proxykernel.relogin import NeedsLogin
from proxykernel.ssh import SSHOptions, explain_ssh_failure, login_sentence, needs_login, ssh_argv
from tests.test_link import BACKOFF, CONFIG, HOST, KillSsh, Remote, StartSsh, Wake, attach, boot, make_link

# The sentence of issue 12, word for word.
ISSUE_SENTENCE = ("btest asks for a password or one-time code: run 'proxykernel login btest' in a terminal, "
                  "then start the kernel again")


@pytest.mark.parametrize("line", [
    "alice@btest: Permission denied (password).",
    "alice@btest: Permission denied (publickey,password).",
    "alice@btest: Permission denied (keyboard-interactive).",
    "alice@btest: Permission denied (publickey,gssapi-with-mic,keyboard-interactive).",
])
def test_a_host_that_asks_for_a_password_or_code_gets_the_login_sentence(line: str) -> None:
    assert needs_login(["Warning: something else", line])
    assert explain_ssh_failure("btest", [line], 255) == ISSUE_SENTENCE


def test_a_key_refused_by_a_key_only_host_keeps_its_own_sentence() -> None:
    line = "alice@btest: Permission denied (publickey)."
    assert not needs_login([line])
    assert "ssh authentication to 'btest' was refused" in explain_ssh_failure("btest", [line], 255)


def test_the_sentence_names_the_ssh_settings_that_name_the_connection() -> None:
    opts = SSHOptions(host="btest", config_file="/home/a b/cfg", options=("Port=2222",))
    line = "Permission denied (password)."
    assert explain_ssh_failure("btest", [line], 255, opts) == (
        "btest asks for a password or one-time code: run 'proxykernel login -F '/home/a b/cfg' -o Port=2222 "
        "btest' in a terminal, then start the kernel again")
    assert login_sentence(SSHOptions(host="btest")) == ISSUE_SENTENCE


def test_kernels_ssh_never_prompts_and_the_users_own_option_still_wins() -> None:
    argv = ssh_argv(SSHOptions(host="btest"), "true")
    assert argv[argv.index("BatchMode=yes") - 1] == "-o"
    mine = ssh_argv(SSHOptions(host="btest", options=("BatchMode=no",)), "true")
    assert mine.index("BatchMode=no") < mine.index("BatchMode=yes")  # ssh takes the first value


def _lose_and_fail_retries(link: Any, now: float, retries: int) -> Tuple[List[NeedsLogin], float]:
    """The link drops at ``now``; each of ``retries`` reconnects is refused for want of a password.
    Returns the notices the link asked for, and when it tries next."""
    actions: List[Any] = list(link.ssh_exited(255, now))
    notices: List[NeedsLogin] = []
    for _ in range(retries):
        [wake] = [a for a in actions if isinstance(a, Wake)]
        now = wake.at
        assert link.poll(now) == [StartSsh(send_agent=False)]
        link.note_ssh_line("%s: Permission denied (password)." % HOST)
        actions = link.ssh_exited(255, now)
        notices += [a for a in actions if isinstance(a, NeedsLogin)]
    [wake] = [a for a in actions if isinstance(a, Wake)]
    return notices, wake.at


def test_a_reconnect_that_needs_a_login_says_so_once_per_outage(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="proxykernel")
    link, remote = make_link(), Remote()
    boot(link, remote)
    sentence = ("btest asks for a password or one-time code: run 'proxykernel login btest' in a terminal; the "
                "kernel waits until then (at most --reconnect-timeout) and goes on where it was")
    notices, retry = _lose_and_fail_retries(link, 10.0, retries=7)
    assert notices == [NeedsLogin(sentence)]  # seven refusals, one notice
    assert [m for m in caplog.messages if "asks for a password" in m] == [sentence]
    assert link.lost_at == 10.0 and link.attempts == 7  # still waiting, with the usual backoff
    assert retry - 10.0 == sum(BACKOFF) + 2 * BACKOFF[-1]  # the schedule of any outage: 0, 0.5 ... 5, 5, 5
    assert link.poll(retry) == [StartSsh(send_agent=False)]  # the user logged in meanwhile
    attach(link, remote, 30.0)
    assert link.lost_at is None and link.linked
    # A later outage that needs a login is told again.
    assert _lose_and_fail_retries(link, 100.0, retries=2)[0] == [NeedsLogin(sentence)]


def test_a_plain_drop_and_a_start_refused_are_not_told_as_a_new_login() -> None:
    link, remote = make_link(), Remote()
    boot(link, remote)
    assert link.ssh_exited(255, 10.0) == [KillSsh(), Wake(10.0 + BACKOFF[0])]  # no notice: not a refusal
    start = make_link()
    start.start(0.0)
    start.note_ssh_line("btest: Permission denied (publickey,password).")
    [fail] = start.ssh_exited(255, 0.2)
    assert fail.sentence == ISSUE_SENTENCE  # type: ignore[union-attr]


def _message(msg_type: str, msg_id: str, parent: Dict[str, Any]) -> List[bytes]:
    header = {"msg_id": msg_id, "msg_type": msg_type, "session": "s"}
    return [b"client-1", b"<IDS|MSG>", b"sig"] + [json.dumps(part).encode() for part in (header, parent, {}, {})]


def test_a_notice_goes_to_the_running_cell_else_to_the_next_one() -> None:
    cells = Cells()
    assert cells.notice("held\n") is None  # no cell runs: held
    [(text, parent)] = cells.request(_message("execute_request", "a", {}))
    assert (text, parent["msg_id"]) == ("held\n", "a")  # shown in the cell that is run next
    assert cells.request(_message("execute_request", "b", {})) == []  # queued behind "a"
    assert cells.request(_message("kernel_info_request", "k", {})) == []
    assert cells.notice("now\n")["msg_id"] == "a"  # type: ignore[index]
    cells.reply(_message("execute_reply", "r1", {"msg_id": "a"}))
    assert cells.notice("now\n")["msg_id"] == "b"  # type: ignore[index]
    cells.reply(_message("execute_reply", "r2", {"msg_id": "b"}))
    assert cells.notice("later\n") is None and cells.held == ["later\n"]
    for n in range(MAX_TRACKED + 10):  # replies never seen: the oldest requests are forgotten
        cells.request(_message("execute_request", str(n), {}))
    assert len(cells.waiting) == MAX_TRACKED


def test_persist_durations_and_the_login_state_sentence() -> None:
    assert [parse_duration(t) for t in ("12h", "90m", "3600", "45s", "1d", "1.5h")] == [
        43200, 5400, 3600, 45, 86400, 5400]
    for bad in ("", "h", "-1h", "0", "12 hours"):
        with pytest.raises(ValueError, match="--persist expects a duration"):
            parse_duration(bad)
    now = time.mktime((2025, 3, 4, 9, 0, 0, 0, 0, -1))
    assert LoginState(42, now + 12 * 3600 + 40 * 60).describe(now) == "logged in until 21:40 (pid 42)"
    assert LoginState(42, now + 86400).describe(now).startswith("logged in until Wed 09:00")
    assert LoginState(42, now - 1).describe(now) == "logged in (pid 42); kept open while kernels use it"
    assert LoginState(42, None).describe(now) == "a shared connection is open (pid 42)"
    assert CONFIG.host == HOST
