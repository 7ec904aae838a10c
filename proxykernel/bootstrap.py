"""What runs first on the remote host: a one-line shell script and a stdlib-only Python bootstrap.

The bootstrap checks the remote Python and its packages, looks for the agent in the user's cache
(a directory named by the SHA-256 of the agent's zip, renamed into place only once complete, where
Python keeps the compiled bytecode for the next start), takes it from the stream when it is not
there, verifies and unpacks it, and runs it. Only non-secret values appear on the command line: the
session key travels later, inside the stream. Nothing waits for an answer: the stream starts with
the agent (or a zero length, when the proxy believes the cache has it), and the agent's own stream
follows at once; a cache that lacks the agent after all answers NEED and exits, and the proxy
starts again with the agent.
"""
from __future__ import annotations

import hashlib
import os
import shlex
import time
from dataclasses import dataclass
from functools import lru_cache
from types import ModuleType
from typing import Iterator, List, Optional, Sequence, Tuple

from proxykernel import remote_bootstrap, remote_checks
from proxykernel.remote_bootstrap import CACHE_ONLY, LENGTH_DIGITS
from proxykernel.scheduler import job_error
from remote_agent.paths import runtime_dir  # the per-user 0700 directory, on this side too

__all__ = ["boot_error", "AgentBundle", "agent_bundle", "remote_program", "remote_command", "remote_python_command",
           "BootReply", "BootReader", "BOOT_MARK", "CACHE_ONLY", "NO_AGENT"]

BOOT_MARK = remote_checks.MARK.encode()
# Noise allowed before the bootstrap's line (banners, .bashrc output) before we call it broken.
MAX_BOOT_NOISE = 64 * 1024


@dataclass(frozen=True)
class AgentBundle:
    """The agent package as the zip the remote runs, and its hash (the cache key)."""
    data: bytes
    sha256: str

    def framed(self) -> bytes:
        """The start of the stream when the agent is sent along: a 12-digit length, then the zip."""
        return b"%0*d" % (LENGTH_DIGITS, len(self.data)) + self.data


# The start of the stream when the remote cache is believed to have the agent already.
NO_AGENT = b"%0*d" % (LENGTH_DIGITS, 0)


# The line of each remote program that imports the shared checks: the checks precede the program
# in the text sent, so the line goes (on the remote, proxykernel is not there to import).
_CHECKS_IMPORT = "from proxykernel.remote_checks import "


@lru_cache(maxsize=None)
def remote_program(program: ModuleType) -> str:
    """The text that ``python -c`` runs on the remote for ``program`` (remote_bootstrap,
    remote_probe, remote_discover): remote_checks.py, then the program without its import of them.

    Read from the files once per process: the proxy's start calls it (through remote_command) before
    it spawns ssh, and so do ``proxykernel check``, ``deploy`` and ``discover`` (probe.py).
    Docstrings, comments and blank lines are left out: the text is on ssh's command line, and
    compiled anew by every session. The remote modules keep triple quotes for docstrings only.
    """
    lines: List[str] = []
    for module in (remote_checks, program):
        assert module.__file__ is not None
        with open(module.__file__, encoding="utf-8") as source:
            lines += source.read().splitlines()
    kept = [line for line in lines if not line.startswith(_CHECKS_IMPORT)]
    if len(kept) != len(lines) - 1:
        raise RuntimeError("%s must import remote_checks in exactly one line" % program.__name__)
    return "".join(line + "\n" for line in _code_lines(kept))


def _code_lines(lines: Sequence[str]) -> Iterator[str]:
    """``lines`` without blank lines, comment lines and docstrings (lines from one opening triple
    quote to the closing one); tests/test_remote_programs.py checks that the code is the same."""
    in_docstring = False
    for line in lines:
        text = line.strip()
        if in_docstring:
            in_docstring = not text.endswith('"""')
        elif text.startswith('"""'):
            in_docstring = len(text) < 6 or not text.endswith('"""')
        elif text and not text.startswith("#"):
            yield line


@lru_cache(maxsize=None)
def agent_bundle(source: Optional[str] = None) -> AgentBundle:
    """The agent's zip, made deterministically (fixed timestamps, so equal code gives an equal
    hash) and kept in the runtime directory under a name taken from the sources' sizes and times:
    a start then only reads it, without zipping anything."""
    package = source or os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                     "remote_agent")
    names = sorted(n for n in os.listdir(package) if n.endswith(".py"))
    stamps = [(name, os.stat(os.path.join(package, name))) for name in names]
    key = repr([os.path.abspath(package)] + [(n, st.st_size, st.st_mtime_ns) for n, st in stamps])
    made = os.path.join(runtime_dir(), "bundle-%s.zip" % hashlib.sha256(key.encode()).hexdigest()[:16])
    try:
        with open(made, "rb") as handle:
            data = handle.read()
    except OSError:
        data = _zip_package(package, names)
        _forget_old_bundles(os.path.dirname(made))
        partial = made + ".%d" % os.getpid()
        try:
            with open(partial, "wb") as handle:
                handle.write(data)
            os.replace(partial, made)
        except OSError:
            pass  # zipped again next time
    return AgentBundle(data, hashlib.sha256(data).hexdigest())


def _forget_old_bundles(directory: str, max_age: float = 86400.0) -> None:
    """Zips of agents made over a day ago (an upgrade leaves the old one): remade if ever needed."""
    now = time.time()
    for name in os.listdir(directory):
        path = os.path.join(directory, name)
        try:
            if name.startswith("bundle-") and now - os.stat(path).st_mtime > max_age:
                os.unlink(path)
        except OSError:
            pass


def _zip_package(package: str, names: Sequence[str]) -> bytes:
    import io
    import zipfile
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in names:
            info = zipfile.ZipInfo("remote_agent/" + name, date_time=(2020, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with open(os.path.join(package, name), "rb") as source_file:
                archive.writestr(info, source_file.read())
    return buffer.getvalue()


def remote_command(python: str, bundle: AgentBundle, sudo: bool = False,
                   agent_args: Sequence[str] = (), pre_command: Optional[str] = None,
                   workdir: Optional[str] = None) -> str:
    """The command line ssh hands to the remote login shell to boot the agent (the proxy's start)."""
    return remote_python_command(python, remote_program(remote_bootstrap), [bundle.sha256, *agent_args], sudo,
                                 pre_command, workdir)


def remote_python_command(python: str, code: str, args: Sequence[str] = (), sudo: bool = False,
                          pre_command: Optional[str] = None, workdir: Optional[str] = None) -> str:
    """A remote login-shell command that runs ``code`` on the user's remote Python.

    One line of POSIX sh, itself quoted, so it means the same under bash, zsh, csh or fish login
    shells. ``python`` may be an interpreter, a name on PATH, or an environment prefix. The
    remote environment options apply in order: ``cd`` to ``workdir`` (a leading ``~/`` is the
    remote home), run ``pre_command`` in this shell (its output goes to stderr, the log), then
    resolve ``python``, so a pre-command may put it on PATH. Every value is a quoted word: it
    reaches the remote shell verbatim and runs nothing except the pre-command itself.
    Used by the proxy's start and by ``proxykernel check``/``deploy`` (proxykernel/probe.py).
    """
    steps = []
    if workdir:
        home, rest = ('"$HOME"/', workdir[2:]) if workdir.startswith("~/") else ("", workdir)
        steps.append("cd -- %s%s || { printf '\\nPXKBOOT ERR the --workdir is not a directory there\\n'; exit 2; }"
                     % (home, shlex.quote(rest)))
    if pre_command:
        # eval in this shell (a { } group is no subshell), so exports and activations reach Python.
        steps.append("pxk_pre=%s; { eval \"$pxk_pre\"; } >&2 || { pxk_rc=$?; "
                     "printf '\\nPXKBOOT ERR the --pre-command exited with status %%s\\n' \"$pxk_rc\"; "
                     "exit 2; }" % shlex.quote(pre_command))
    run = ('exec sudo -n -- "$p"' if sudo else 'exec "$p"')
    steps.append(
        "p=%s; if [ -d \"$p\" ]; then p=\"$p/bin/python\"; fi; "
        "case \"$p\" in */*) ;; *) p=$(command -v \"$p\") || p=;; esac; "
        "if [ -z \"$p\" ] || [ ! -x \"$p\" ]; then printf '\\nPXKBOOT ERR no-python\\n'; exit 127; fi; "
        "%s -c %s %s" % (shlex.quote(python), run, shlex.quote(code),
                         " ".join(shlex.quote(arg) for arg in args)))
    return "sh -c " + shlex.quote("; ".join(steps))


@dataclass(frozen=True)
class BootReply:
    """The bootstrap's verdict: ``HAVE`` (cached), ``GOT`` (stored now; ``GOT uncached``: in a temporary
    directory, the cache being unwritable), ``NEED`` or ``ERR`` and its words."""
    status: str
    words: Tuple[str, ...]


class BootReader:
    """Sans-IO reader of the remote's stdout up to the bootstrap's line.

    ``feed`` returns the reply once its line is complete, with the noise before it and the bytes
    after it (the start of the agent's stream); before that it returns None.
    """

    def __init__(self) -> None:
        self._buffer = b"\n"  # so a mark at the very start is found like any other
        self.noise = b""

    def feed(self, data: bytes) -> Optional[Tuple[BootReply, bytes]]:
        self._buffer += data
        at = self._buffer.find(BOOT_MARK)
        end = self._buffer.find(b"\n", at + len(BOOT_MARK)) if at >= 0 else -1
        if end < 0:
            if len(self._buffer) > MAX_BOOT_NOISE:
                raise ValueError("the remote printed %d bytes without starting the proxykernel "
                                 "bootstrap" % len(self._buffer))
            return None
        self.noise = self._buffer[1:at]
        words: List[str] = self._buffer[at + len(BOOT_MARK):end].decode("utf-8", "replace").split()
        rest = self._buffer[end + 1:]
        self._buffer = b""
        return BootReply(words[0] if words else "", tuple(words[1:])), rest


def boot_error(reply: BootReply, host: str, python: str) -> str:
    """The sentence for a bootstrap's ``ERR`` line; called by the proxy's start and by ``probe``."""
    words = reply.words
    what = words[0] if words else ""
    exe = words[-1] if len(words) > 1 else python
    if what == "no-python":
        return ("the remote Python %r does not exist on %s: pass --python the path of an interpreter "
                "(or environment prefix) that has ipykernel" % (python, host))
    if what == "missing":
        return ("the remote Python %s on %s lacks %s: install it there with '%s -m pip install "
                "ipykernel'" % (exe, host, words[1].replace(",", ", "), exe))
    if what == "old-python":
        return ("the remote Python %s on %s is version %s; proxykernel needs Python 3.8 or newer "
                "there" % (exe, host, words[1]))
    if what.startswith("job-"):  # the login host's part of a kernel in a batch job (remote_batch)
        sentence = job_error(what, words, host)
        if sentence is not None:
            return sentence
    if what == "corrupt-agent":
        return "the agent sent to %s arrived damaged; check that the connection is 8-bit clean" % host
    return "the remote bootstrap on %s failed: %s" % (host, " ".join(words))
