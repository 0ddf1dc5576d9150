#!/usr/bin/env python3
"""Forward 127.0.0.1:LISTEN to 127.0.0.1:UPSTREAM, delaying each direction by DELAY_MS.

What `tc qdisc … netem delay` does, in user space, for kernels without sch_netem (this
benchmark machine's VM kernel has no qdisc modules). Data read at time t is written at
t + delay while reading goes on, so the delay adds latency without capping throughput
(within what one Python process can copy: measured by bench/s3.sh at 0 ms too).

    bench/latency-proxy.py LISTEN UPSTREAM DELAY_MS
"""
import asyncio
import sys
import time

CHUNK = 256 * 1024


async def pump(reader, writer, delay):
    queue = asyncio.Queue(maxsize=4096)

    async def deliver():
        while True:
            due, data = await queue.get()
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if data is None:
                try:
                    writer.write_eof()
                except OSError:
                    pass
                return
            writer.write(data)
            await writer.drain()

    sender = asyncio.create_task(deliver())
    try:
        while True:
            data = await reader.read(CHUNK)
            await queue.put((time.monotonic() + delay, data or None))
            if not data:
                break
        await sender
    except (ConnectionError, OSError):
        sender.cancel()
    finally:
        writer.close()


async def main(listen, upstream, delay):
    async def handle(client_reader, client_writer):
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", upstream)
        except OSError:
            client_writer.close()
            return
        for w in (client_writer, up_writer):
            sock = w.get_extra_info("socket")
            if sock is not None:
                import socket

                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await asyncio.gather(
            pump(client_reader, up_writer, delay),
            pump(up_reader, client_writer, delay),
            return_exceptions=True,
        )

    server = await asyncio.start_server(handle, "127.0.0.1", listen, limit=CHUNK)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    listen, upstream, delay_ms = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    asyncio.run(main(listen, upstream, delay_ms / 1000.0))
