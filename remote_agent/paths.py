"""Where the remote side keeps its sockets and files: one private directory per user.

Imported by ``attach`` (each ssh session), by the daemon (``agent``), and by the local side, which
keeps its ControlMaster sockets, agent memos and bundle zips in the same kind of directory.
Stdlib only: it travels in the agent's bundle.
"""
from __future__ import annotations

import os
import stat
import tempfile

__all__ = ["runtime_dir", "socket_path"]


def runtime_dir() -> str:
    """The per-user 0700 directory for daemon sockets and logs; refuses one someone else controls."""
    base = os.environ.get("XDG_RUNTIME_DIR") or ""
    if base and os.path.isdir(base) and os.access(base, os.W_OK) and len(base) < 60:
        path = os.path.join(base, "proxykernel")
    else:
        path = os.path.join(tempfile.gettempdir(), "proxykernel-%d" % os.getuid())
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise SystemExit("proxykernel-agent: %s is not a private directory of this user (mode %o); "
                         "remove it and try again" % (path, stat.S_IMODE(info.st_mode)))
    return path


def socket_path(kernel_id: str) -> str:
    return os.path.join(runtime_dir(), kernel_id + ".sock")
