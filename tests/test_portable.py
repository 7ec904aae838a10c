"""The local side's fallbacks for systems other than Linux (macOS: most users' laptops), run here.

Each Linux-only call is chosen by a parameter (the platform, the pipe call, the directories), so
these tests take the other branch on Linux, with the real files and pipes, no mocks.
"""
from __future__ import annotations

import fcntl
import os
import shutil
import stat
import sys
import tempfile
from pathlib import Path
from typing import Iterator, Tuple

import pytest

from proxykernel.config import ProxyConfig, _aes_in_sysctl, _control_name, _cpu_has_aes, kernel_id
from proxykernel.transport import PIPE_SIZE, _widen_pipe
from remote_agent.paths import (MAX_SOCKET_PATH, SOCKET_NAME_ROOM, fits_sockets, private_dir,
                                runtime_path)

F_GETPIPE_SZ = 1032  # Linux's, to read a pipe's size back
SSH_MASTER_SUFFIX = len(".") + 16  # ssh binds its master at ControlPath.<16 random characters>, then renames
# The length of a real macOS $TMPDIR: /var/folders/<2>/<30>/T
MACOS_TMPDIR_LENGTH = len("/var/folders/zz/zyxvpxvq6csfxvn_n0000000000000/T")


def _dir_of_length(root: Path, length: int) -> str:
    """A real directory under ``root`` whose path is ``length`` characters long."""
    path = str(root / ("d" * (length - len(str(root)) - 1)))
    os.makedirs(path)
    assert len(path) == length
    return path


@pytest.fixture
def pipe() -> Iterator[Tuple[int, int]]:
    ends = os.pipe()
    yield ends
    for fd in ends:
        os.close(fd)


@pytest.fixture
def root() -> Iterator[Path]:
    """A directory with a short path (pytest's tmp_path can be longer than a macOS $TMPDIR)."""
    path = tempfile.mkdtemp(prefix="pxk-portable-")
    yield Path(path)
    shutil.rmtree(path)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the size back with Linux's fcntl")
def test_a_pipe_keeps_its_size_where_it_cannot_be_widened(pipe: Tuple[int, int]) -> None:
    before = fcntl.fcntl(pipe[1], F_GETPIPE_SZ)
    assert _widen_pipe(pipe[1], None) is False  # what macOS runs
    assert fcntl.fcntl(pipe[1], F_GETPIPE_SZ) == before
    assert _widen_pipe(pipe[1]) is True  # and on Linux, still widened
    assert fcntl.fcntl(pipe[1], F_GETPIPE_SZ) == PIPE_SIZE


def test_aes_is_read_from_sysctl_on_macos() -> None:
    assert _aes_in_sysctl("1\n")  # Apple silicon (machdep.cpu.features is unknown there)
    assert _aes_in_sysctl("0\nFPU VME DE PSE TSC SSE4.2 AES PCLMULQDQ XSAVE AVX1.0\n")  # Intel
    assert _aes_in_sysctl("FPU VME SSE4.2 AES AVX1.0\n")  # Intel, a macOS without hw.optional.arm64
    assert not _aes_in_sysctl("0\nFPU VME DE PSE TSC SSE4.2 POPCNT\n")
    assert not _aes_in_sysctl("")  # no sysctl, or neither name known
    # The macOS branch runs on Linux too: its sysctl knows neither name, so no preference.
    assert _cpu_has_aes("darwin") is False


def test_the_runtime_dir_under_a_macos_tmpdir_fits_our_sockets(root: Path) -> None:
    # As long as a macOS user's (uid 501, the first account) "$TMPDIR/proxykernel-501" would be.
    temp = _dir_of_length(root, MACOS_TMPDIR_LENGTH + len("501") - len(str(os.getuid())))
    path = private_dir(runtime_path(None, temp))  # no XDG_RUNTIME_DIR, as on macOS
    assert path == os.path.join(temp, "proxykernel-%d" % os.getuid())
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o700
    control = os.path.join(path, _control_name(ProxyConfig(host="a-long-host-alias", python="python3",
                                                           connection_file="/x/kernel-1.json")))
    assert len(control) + SSH_MASTER_SUFFIX <= MAX_SOCKET_PATH
    agent_socket = os.path.join(path, kernel_id("key", "/x/kernel-1.json") + ".sock")
    assert len(agent_socket) <= MAX_SOCKET_PATH


def test_a_temporary_dir_too_long_for_sockets_gives_way_to_a_short_one(root: Path) -> None:
    temp = _dir_of_length(root, MAX_SOCKET_PATH - SOCKET_NAME_ROOM)
    assert not fits_sockets(os.path.join(temp, "proxykernel-%d" % os.getuid()))
    short = _dir_of_length(root / "s", len(str(root)) + 4)
    assert runtime_path(None, temp, last_resort=short) == os.path.join(short, "proxykernel-%d" % os.getuid())


def test_xdg_runtime_dir_is_used_when_set_and_short_else_skipped(root: Path) -> None:
    xdg, temp = _dir_of_length(root, len(str(root)) + 4), str(root)
    fallback = os.path.join(temp, "proxykernel-%d" % os.getuid())
    assert runtime_path(xdg, temp) == os.path.join(xdg, "proxykernel")
    assert runtime_path(_dir_of_length(root, MAX_SOCKET_PATH - SOCKET_NAME_ROOM), temp) == fallback
    assert runtime_path(str(root / "missing"), temp) == fallback
    assert runtime_path("", temp) == fallback
