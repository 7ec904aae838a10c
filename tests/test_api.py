"""``proxykernel.start_kernel`` and its async twin, used from a user's script (a subprocess)."""
from __future__ import annotations

import ast
import sys
from pathlib import Path
from typing import Any

from tests.kernels import alive
from tests.userland import run, user_env

SCRIPT = r'''
import asyncio, sys
import proxykernel

host, config = sys.argv[1], sys.argv[2]
seen = {}

def keep(name):
    return lambda msg: msg["msg_type"] == "stream" and seen.setdefault(name, msg["content"]["text"])

with proxykernel.start_kernel(host, python=sys.executable, ssh_config=config, env={"PXK_A": "x y"}) as (km, kc):
    kc.execute_interactive("import os; print(os.environ['PXK_A'])", output_hook=keep("sync"))
    seen["proxy_pid"] = km.provisioner.pid

async def main():
    async with await proxykernel.async_start_kernel(host, python=sys.executable, ssh_config=config) as (km, kc):
        await kc.execute_interactive("print(6 * 7)", output_hook=keep("async"))
        seen["async_proxy_pid"] = km.provisioner.pid
asyncio.run(main())
try:
    proxykernel.start_kernel(host, python="/no/such/python", ssh_config=config, timeout=15)
except proxykernel.KernelStartError as error:
    seen["error"] = str(error)
print(repr(seen))
'''


def test_start_kernel_sync_async_and_failure(sshd: Any, tmp_path: Path) -> None:
    result = run([sys.executable, "-c", SCRIPT, sshd.alias, str(sshd.config_path)], user_env(tmp_path))
    assert result.returncode == 0, result.stderr
    seen = ast.literal_eval(result.stdout.strip().splitlines()[-1])
    assert seen["sync"] == "x y\n"
    assert seen["async"] == "42\n"
    assert "'/no/such/python' does not exist on %s" % sshd.alias in seen["error"]
    # Leaving the with-blocks stopped the proxies.
    assert not alive(seen["proxy_pid"]) and not alive(seen["async_proxy_pid"])
    assert "kernel ready in" in result.stderr  # the proxy's log still reaches the user
