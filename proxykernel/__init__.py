"""proxykernel: Jupyter kernels on remote hosts, over one SSH connection's stdin/stdout."""

__version__ = "0.1.0"
