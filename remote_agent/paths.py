"""Where the remote side keeps its sockets and files: one private directory per user.

Imported by ``attach`` (each ssh session), by the daemon (``agent``), and by the local side, which
keeps its ControlMaster sockets, agent memos and bundle zips in the same kind of directory.
Stdlib only: it travels in the agent's bundle.

Portable: Linux sessions have ``$XDG_RUNTIME_DIR``; macOS has none, and its temporary directory
(``$TMPDIR``, under /var/folders) is long, while a unix socket's path must fit in 104 bytes there
(108 on Linux). The directory chosen always leaves room for the longest socket name bound in it.
"""
from __future__ import annotations

import os
import stat
import tempfile
from typing import List, Optional

__all__ = ["runtime_dir", "runtime_path", "private_dir", "fits_sockets", "socket_path", "listed",
           "MAX_SOCKET_PATH", "SOCKET_NAME_ROOM"]

# sun_path is 104 bytes on macOS and the BSDs (108 on Linux), its closing NUL included.
MAX_SOCKET_PATH = 103
# "/" and the longest name bound in the directory: our ControlMaster socket, "cm-" and 16 hex
# digits (config.control_path; ssh's own %C would be 40), plus the ".<16 random characters>" ssh
# appends while it sets the master up. The agent's "<24 hex>.sock" and the kernel's ipc sockets
# ("pxk-XXXXXXXX/k-5") are shorter.
SOCKET_NAME_ROOM = 1 + len("cm-") + 16 + 17
LAST_RESORT = "/tmp"  # short on every unix


def fits_sockets(directory: str) -> bool:
    """Can each socket we bind in ``directory`` be named there, on every system we run on?"""
    return len(directory) + SOCKET_NAME_ROOM <= MAX_SOCKET_PATH


def runtime_path(xdg_runtime_dir: Optional[str], temp: str, last_resort: str = LAST_RESORT) -> str:
    """The path of the per-user directory, not yet made: ``$XDG_RUNTIME_DIR/proxykernel`` (Linux
    sessions), else ``proxykernel-UID`` in the temporary directory (macOS: the per-user
    ``$TMPDIR``), else in ``last_resort``; the first whose sockets fit. ``runtime_dir`` calls it."""
    name = "proxykernel-%d" % os.getuid()
    candidates = [os.path.join(temp, name)]
    base = xdg_runtime_dir or ""
    if base and os.path.isdir(base) and os.access(base, os.W_OK):
        candidates.insert(0, os.path.join(base, "proxykernel"))
    for path in candidates:
        if fits_sockets(path):
            return path
    return os.path.join(last_resort, name)


def private_dir(path: str) -> str:
    """Make ``path`` a 0700 directory of this user, or refuse one someone else controls."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise SystemExit("proxykernel-agent: %s is not a private directory of this user (mode %o); "
                         "remove it and try again" % (path, stat.S_IMODE(info.st_mode)))
    return path


def runtime_dir() -> str:
    """The per-user 0700 directory for daemon sockets and logs (and, locally, ControlMaster sockets,
    agent memos and bundle zips); called by whoever names a file there, each time."""
    return private_dir(runtime_path(os.environ.get("XDG_RUNTIME_DIR"), tempfile.gettempdir()))


def socket_path(kernel_id: str) -> str:
    return os.path.join(runtime_dir(), kernel_id + ".sock")


def listed(directory: str) -> List[str]:
    """The names in ``directory``, sorted; none if it cannot be read. For ``ps``'s readers of the
    status files and the job files."""
    try:
        return sorted(os.listdir(directory))
    except OSError:
        return []
