"""The session key stays secret and the remote kernel opens nothing on the network."""
from __future__ import annotations

import ast
import os
from pathlib import Path
from typing import Any

from tests.kernels import proxy_argv, run_cell, running_kernel

# Run inside the remote kernel: its connection file's modes, and the TCP sockets it listens on.
PROBE = r"""
import ipykernel, os, stat
f = ipykernel.get_connection_file()
inodes = set()
for fd in os.listdir('/proc/self/fd'):
    try:
        link = os.readlink('/proc/self/fd/' + fd)
    except OSError:
        continue
    if link.startswith('socket:['):
        inodes.add(link[8:-1])
listening = []
for table in ('/proc/net/tcp', '/proc/net/tcp6'):
    for line in open(table).read().splitlines()[1:]:
        cols = line.split()
        if cols[3] == '0A' and cols[9] in inodes:
            listening.append(cols[1])
print(repr({'file': f, 'file_mode': stat.S_IMODE(os.stat(f).st_mode),
            'dir_mode': stat.S_IMODE(os.stat(os.path.dirname(f)).st_mode), 'listening': listening}))
"""


def _all_cmdlines() -> bytes:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                found.append(Path("/proc", entry, "cmdline").read_bytes())
            except OSError:
                pass
    return b"\n".join(found)


def test_key_never_on_a_command_line_and_remote_files_private(sshd: Any, tmp_path: Path) -> None:
    with running_kernel(proxy_argv(sshd), tmp_path) as (km, kc):
        key = km.session.key
        assert len(key) >= 16
        assert key not in _all_cmdlines()
        reply, outputs = run_cell(kc, PROBE)
        assert reply["status"] == "ok", outputs
        probe = ast.literal_eval(outputs[0][1]["text"])
        assert probe["file"] != km.connection_file
        assert probe["file_mode"] == 0o600
        assert probe["dir_mode"] & 0o777 == 0o700  # jupyter may add the sticky bit
        # ipykernel's own loopback pipe for subprocess output is the only listener allowed.
        assert len(probe["listening"]) <= 1
        for address in probe["listening"]:
            assert address.startswith("0100007F:")  # 127.0.0.1
