"""Scaffolding for the tests, the benchmark and ``proxykernel demo``: not used by a kernel's start.

``sshd`` runs a throw-away OpenSSH server on 127.0.0.1 (DESIGN.md, "How we test"); ``procs`` reads
the process table from /proc, to find and stop what the tests and the benchmark started;
``jupyterlab`` runs a private JupyterLab server and ``labpage`` drives it in headless Chromium
(tests/test_lab.py).
"""
