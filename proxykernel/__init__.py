"""proxykernel: Jupyter kernels on remote hosts, over one SSH connection's stdin/stdout."""

__version__ = "0.1.0"

__all__ = ["start_kernel", "async_start_kernel", "KernelStartError"]


def __getattr__(name: str) -> object:
    # Lazy: ``python -m proxykernel`` (the proxy Jupyter starts) need not import the API's modules.
    if name in __all__:
        from proxykernel import api
        return getattr(api, name)
    raise AttributeError("module 'proxykernel' has no attribute %r" % name)
