"""The remote side of proxykernel: stdlib, pyzmq and jupyter_client only; Python >= 3.8."""
