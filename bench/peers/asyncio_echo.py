#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""A plain Python asyncio TCP echo server: a peer for bench/compare --peer.

usage: asyncio_echo.py PORT [HOST]   (HOST defaults to 127.0.0.1)

Echoes every byte, honours half-close (EOF from the client: finish writing,
then send FIN) and exits 0 on SIGTERM or SIGINT. This is what a user would
write in a few lines instead of running rebound; it uses the default event
loop and no tricks.
"""

import asyncio
import signal
import sys


async def echo(reader, writer):
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def main(port, host):
    server = await asyncio.start_server(echo, host, port, backlog=1024, reuse_address=True)
    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set_result, None)
    async with server:
        await stop


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3) or not sys.argv[1].isdigit():
        sys.exit("usage: asyncio_echo.py PORT [HOST]")
    asyncio.run(main(int(sys.argv[1]), sys.argv[2] if len(sys.argv) == 3 else "127.0.0.1"))
