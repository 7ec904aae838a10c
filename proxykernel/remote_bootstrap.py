"""The bootstrap: the program every ssh session of a kernel runs on the remote Python.

Sent as text after remote_checks.py (``bootstrap.remote_command``), run as
``python -c TEXT SHA256 [--cache-only | AGENT ARGS...]``; the same rules hold: Python 2.7 syntax
and only os and sys imported before ``require_python``. It checks the Python and its packages,
reads the start of the stream (a 12-digit length, then the agent zip or nothing), answers with one
line: HAVE (cached), GOT (stored now; GOT uncached: in a temporary directory), NEED (not cached
and not sent: exit 5) or ERR, and then runs the agent on the rest of the stream. It waits for no
answer from the proxy.
"""
import os
import sys

from proxykernel.remote_checks import agent_cache, require_packages, require_python, say

__all__ = ["main", "CACHE_ONLY", "LENGTH_DIGITS"]

# The argument of ``proxykernel deploy``: cache the agent, then exit without running it.
CACHE_ONLY = "--cache-only"
# The stream starts with the length of the agent zip that follows, in this many ASCII digits.
LENGTH_DIGITS = 12


def read_exactly(size):
    # type: (int) -> bytes
    """``size`` bytes of the stream (fd 0), unbuffered: the agent reads the rest of it. An early
    end of the stream (the proxy went away) exits with status 4."""
    chunks = []
    got = 0
    while got < size:
        chunk = os.read(0, size - got)
        if not chunk:
            sys.exit(4)
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def store(data, sha256, directory, target):
    # type: (bytes, str, str, str) -> str
    """Verify the agent zip and unpack it into ``target``, renamed into place only once complete
    (a concurrent start may win the rename: its copy is as good). Returns where it is: ``target``,
    or a temporary directory when the cache cannot be written. ERR corrupt-agent exits with 4."""
    import hashlib
    import io
    import shutil
    import tempfile
    import zipfile
    if hashlib.sha256(data).hexdigest() != sha256:
        say("ERR corrupt-agent")
        sys.exit(4)
    try:
        os.makedirs(directory, 0o700, exist_ok=True)
        unpacked = tempfile.mkdtemp(dir=directory)
    except OSError:
        target = unpacked = tempfile.mkdtemp()
    zipfile.ZipFile(io.BytesIO(data)).extractall(unpacked)
    if unpacked != target:
        try:
            os.rename(unpacked, target)
        except OSError:
            shutil.rmtree(unpacked, True)
    return target


def main(argv):
    # type: (list[str]) -> None
    """Run by ``python -c``: ``argv`` is sys.argv, the agent hash at 1, the agent arguments after."""
    require_python()
    require_packages()
    sha256 = argv[1]
    directory, cached = agent_cache(sha256)
    size = int(read_exactly(LENGTH_DIGITS))
    data = read_exactly(size) if size else b""
    if os.path.isdir(cached):
        say("HAVE")
    elif not data:
        say("NEED")
        sys.exit(5)
    else:
        found = store(data, sha256, directory, cached)
        say("GOT" if found == cached else "GOT uncached")
        cached = found
    if argv[2:] == [CACHE_ONLY]:
        sys.exit(0)
    sys.path.insert(0, cached)
    import remote_agent.attach
    remote_agent.attach.main(argv[2:])


if __name__ == "__main__":
    main(sys.argv)
