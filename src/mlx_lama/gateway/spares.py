"""Connections opened ahead of time to the model servers mlx-lama runs.

Why: ``mlx_lm.server`` closes every connection after its answer, so each
token stream needs a new one, and connecting (socket, handshake, a turn of
the event loop) is a good part of what a request costs the gateway before
the backend sees it. At 8 concurrent streams that cost is paid 8 times over
before the backend starts the batch. With a connection ready, a request is
written the moment it is ready.

:class:`Spares` keeps, per ``(host, port)``, up to ``most`` idle connected
sockets. ``RawStream.open`` takes one (a dead one, closed by a server that
stopped, is dropped); each stream that used the pool and got a whole answer
opens one more in the background when it ends, off the request path. So the
pool holds about as many as the streams that last ran at once, and nothing is
left connected after a client that went away or a server that failed. Only for the servers mlx-lama
starts (engines that serve a connection per thread or per task, where an idle
connection costs little): the inference routes decide that. A spare that turns
out dead when used is retried on a fresh connection by ``RawStream.open``.
It never sends anything on a spare; the lifespan closes them all at shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib

from mlx_lama.gateway.wire import Wire, connect

Key = tuple[str, int]  # host, port
# Per server. Streams beyond this many at once connect for themselves; each idle
# spare holds one of mlx_lm.server's threads, blocked reading a request.
MOST_SPARES = 8


class Spares:
    """Idle connections to model servers, by ``(host, port)``. Use from one event loop."""

    def __init__(self, most: int = MOST_SPARES) -> None:
        self.most = most
        self._idle: dict[Key, list[Wire]] = {}
        self._opening: dict[Key, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    def take(self, host: str, port: int) -> Wire | None:
        """A connected, idle connection to ``host:port``, or None."""
        idle = self._idle.get((host, port))
        while idle:
            connection = idle.pop()
            if connection.alive:
                return connection
            _close(connection)
        return None

    def refill(self, host: str, port: int, *, limit: int, timeout: float) -> None:
        """Open one more spare to ``host:port`` in the background, unless there are
        ``most`` already (or being opened): ``limit`` is the Wire's line
        limit, ``timeout`` the seconds the connect may take."""
        key = (host, port)
        self._sweep()
        if self._closed or len(self._idle.get(key, ())) + self._opening.get(key, 0) >= self.most:
            return
        self._opening[key] = self._opening.get(key, 0) + 1
        task = asyncio.get_running_loop().create_task(self._open(key, limit, timeout))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _open(self, key: Key, limit: int, timeout: float) -> None:
        try:
            async with asyncio.timeout(timeout):
                connection = await connect(*key, limit=limit)
        except (OSError, TimeoutError):
            return  # the server is gone or busy: the next request connects itself
        finally:
            self._opening[key] -= 1
        if self._closed:
            _close(connection)
        else:
            self._idle.setdefault(key, []).append(connection)

    def _sweep(self) -> None:
        """Drop the spares whose server closed them (stopped, or restarted elsewhere)."""
        for key, idle in list(self._idle.items()):
            alive = []
            for connection in idle:
                if connection.alive:
                    alive.append(connection)
                else:
                    _close(connection)
            if alive:
                self._idle[key] = alive
            else:
                del self._idle[key]

    async def aclose(self) -> None:
        """Close every spare and stop opening new ones."""
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for idle in self._idle.values():
            for connection in idle:
                _close(connection)
        self._idle.clear()


def _close(connection: Wire) -> None:
    if connection.transport is not None:
        connection.transport.close()
