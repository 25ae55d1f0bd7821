"""A bare relay: the floor cost of one process between a client and the backend.

Usage: ``python -m bench.relay UPSTREAM_PORT LISTEN_PORT``. It listens on
127.0.0.1:LISTEN_PORT and serves one request per client connection: it reads
the HTTP request head and its ``Content-Length`` body, sends them to
127.0.0.1:UPSTREAM_PORT with ``Connection: close``, copies the upstream's bytes
to the client as they arrive and closes both connections when the upstream
closes. It prints ``ready`` once listening and exits on SIGTERM.

It parses nothing beyond the request head and leaves the response untouched:
``mlx_lm.server`` answers ``HTTP/1.0`` without ``Content-Length`` on streams,
which already tells the client that the body ends when the connection closes
and that the connection is not reused. The gateway benchmark runs it next to
the gateway, so the gateway's cost can be compared with what any relay process
costs on the same machine.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from functools import partial

import uvloop

CHUNK = 65536


def upstream_head(head: bytes) -> tuple[bytes, int]:
    """The request head with ``Connection: close`` in place of any connection
    headers, and the body's length from ``Content-Length`` (0 without one)."""
    lines = head.rstrip(b"\r\n").split(b"\r\n")
    kept = [lines[0]]
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name in (b"connection", b"keep-alive"):
            continue
        if name == b"content-length":
            length = int(value)
        kept.append(line)
    kept.append(b"Connection: close")
    return b"\r\n".join(kept) + b"\r\n\r\n", length


async def relay(
    upstream_port: int, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
) -> None:
    """Serve one request: forward it upstream, copy the answer back, close both."""
    upstream_writer: asyncio.StreamWriter | None = None
    try:
        head, length = upstream_head(await client_reader.readuntil(b"\r\n\r\n"))
        body = await client_reader.readexactly(length) if length else b""
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", upstream_port)
        upstream_writer.write(head + body)
        await upstream_writer.drain()
        while data := await upstream_reader.read(CHUNK):
            client_writer.write(data)
            await client_writer.drain()
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
        pass  # a client or upstream that went away, or a malformed head: just close
    except asyncio.CancelledError:
        pass  # SIGTERM mid-stream (Python 3.11 would log a cancelled handler as an error)
    finally:
        for writer in (upstream_writer, client_writer):
            if writer is not None:
                writer.close()


async def main(upstream_port: int, listen_port: int) -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    server = await asyncio.start_server(
        partial(relay, upstream_port), "127.0.0.1", listen_port, reuse_address=True
    )
    print("ready", flush=True)
    await stop.wait()
    server.close()  # streams still running end with the loop


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: python -m bench.relay UPSTREAM_PORT LISTEN_PORT")
    uvloop.run(main(int(sys.argv[1]), int(sys.argv[2])))
