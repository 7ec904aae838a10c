"""A delaying TCP proxy on 127.0.0.1: emulated WAN latency (this kernel has no netem).

    python -m bench.delay --target-port 2222 [--delay 0.02]
    # prints "PORT <n>" once listening; every byte is held ``delay`` seconds in each direction

Each direction of each connection is a FIFO released by the clock, so order is kept and the round
trip grows by 2 * delay; bandwidth is not limited. The benchmark runs it as a subprocess and stops
it by PID.
"""
from __future__ import annotations

import argparse
import asyncio
import sys
from typing import List, Optional

__all__ = ["main", "serve"]

READ_SIZE = 256 * 1024


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    loop = asyncio.get_running_loop()
    queue: "asyncio.Queue[tuple[float, bytes]]" = asyncio.Queue()

    async def release() -> None:
        while True:
            due, data = await queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            writer.write(data)
            await writer.drain()

    sender = asyncio.ensure_future(release())
    try:
        while True:
            data = await reader.read(READ_SIZE)
            queue.put_nowait((loop.time() + delay, data))
            if not data:
                break
        await sender
    except (ConnectionError, OSError):
        sender.cancel()


async def _handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                  target_port: int, delay: float) -> None:
    try:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target_port)
    except OSError:
        writer.close()
        return
    try:
        await asyncio.gather(_pump(reader, up_writer, delay), _pump(up_reader, writer, delay))
    finally:
        for w in (writer, up_writer):
            w.close()


async def serve(target_port: int, delay: float, port: int = 0) -> None:
    server = await asyncio.start_server(
        lambda r, w: _handle(r, w, target_port, delay), "127.0.0.1", port)
    print("PORT %d" % server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description="a delaying TCP proxy on 127.0.0.1")
    parser.add_argument("--target-port", type=int, required=True)
    parser.add_argument("--delay", type=float, default=0.02, help="seconds, each way (default 0.02)")
    parser.add_argument("--port", type=int, default=0, help="listen port (default: any free one)")
    args = parser.parse_args(argv)
    try:
        asyncio.run(serve(args.target_port, args.delay, args.port))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    sys.exit(main())
