"""Side-by-side benchmarks of proxykernel (issue 5).

From the repository root::

    python -m bench                      # full run, ~3 minutes on 2 cores
    python -m bench --quick              # fewer repetitions, under a minute
    python -m bench --wan                # also the emulated-WAN figures (20 ms each way)
    python -m bench --json out.json --baseline bench/results/baseline.json

See bench/README.md for what is measured and how.
"""
