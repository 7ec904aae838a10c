"""A local user whom the test sshd asks for a key AND a password, as two-factor hosts do.

    with PasswordUser() as user, SSHServer(extra_config=user.sshd_config()) as srv:
        alias = srv.allow_user(user.name)    # ssh in BatchMode: "Permission denied (password)."

The account is made with ``useradd -m`` under a name of its own (``pxk2fa-`` and 6 random hex
digits, so that two test sessions at once never share one) and removed with its home and its
proxykernel runtime directory on exit (``userdel -r``; stop the sshd first, which ends the user's
processes). The password is made here at random, given to ``chpasswd`` on its stdin, and kept only in
this object's memory: never on a command line, never in a file. sshd checks it against
/etc/shadow itself (``UsePAM no``).
"""
from __future__ import annotations

import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from typing import Any, Optional

__all__ = ["PasswordUser", "PREFIX"]

PREFIX = "pxk2fa-"


class PasswordUser:
    """A throw-away local account with a random password; the tests of ``proxykernel login``
    (tests/test_login.py) make one per module. Attributes: ``name``, ``password``, ``uid``."""

    def __init__(self) -> None:
        self.name = PREFIX + secrets.token_hex(3)
        self.password = secrets.token_urlsafe(18)
        self.uid: Optional[int] = None

    def __enter__(self) -> PasswordUser:
        subprocess.run(["useradd", "-m", "-s", "/bin/sh", self.name], check=True, stdin=subprocess.DEVNULL)
        try:
            subprocess.run(["chpasswd"], input=("%s:%s\n" % (self.name, self.password)).encode(), check=True,
                           capture_output=True)
        except BaseException:
            self.remove()
            raise
        self.uid = pwd.getpwnam(self.name).pw_uid
        return self

    def sshd_config(self) -> str:
        """The sshd_config lines that ask this user for both a key and a password. This user may
        forward TCP (as a bastion's users do, for ProxyJump); the others still may not."""
        return ("Match User %s\n"
                "    PasswordAuthentication yes\n"
                "    AuthenticationMethods publickey,password\n"
                "    AllowTcpForwarding local\n" % self.name)

    def remove(self) -> None:
        """``userdel -r`` and the user's agent directory (/tmp/proxykernel-UID); idempotent."""
        subprocess.run(["userdel", "-r", self.name], stdin=subprocess.DEVNULL, capture_output=True)
        if self.uid is not None:
            shutil.rmtree(os.path.join(tempfile.gettempdir(), "proxykernel-%d" % self.uid), ignore_errors=True)

    def __exit__(self, *exc: Any) -> None:
        self.remove()
