"""A TCP fault proxy for tests: put it between a Kinwire server and PostgreSQL or Redis and
break the network on purpose.

    proxy = FaultProxy("127.0.0.1", 5432)
    await proxy.start()            # listens on 127.0.0.1:<proxy.port>
    proxy.latency(200)             # every chunk waits 200 ms, in each direction
    proxy.stall()                  # bytes stop moving; connections stay open (a frozen peer)
    proxy.cut(refuse_s=3)          # close every connection; new ones are dropped for 3 s
    proxy.heal()                   # back to normal; bytes held by a stall flow on
    await proxy.close()

Latency delays each chunk from the moment it was read, so a stream keeps its order and its
throughput. A stall holds the bytes it reads (the next `heal` delivers them), and new
connections are accepted and joined to the target but carry nothing, as with a peer that hangs.
While refusing, a new connection is accepted and closed at once, before any byte.
"""

from __future__ import annotations

import asyncio
import contextlib
import time


class FaultProxy:
    def __init__(self, target_host: str, target_port: int, host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.host = host
        self.port = 0
        self.latency_s = 0.0
        self.refuse_until = 0.0
        self.cuts = 0  # a connection being joined when a cut comes is cut too
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self.accepted = 0  # connections seen, for tests that want to know the proxy was used

    async def start(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._accept, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def url(self, template: str) -> str:
        """`template` with {host} and {port} filled in: proxy.url("redis://{host}:{port}/0")."""
        return template.format(host=self.host, port=self.port)

    # --- the controls ---

    def latency(self, ms: float) -> None:
        self.latency_s = ms / 1000

    def stall(self) -> None:
        self._flowing.clear()

    def cut(self, refuse_s: float = 0.0) -> None:
        self.refuse_until = time.monotonic() + refuse_s
        self.cuts += 1
        for link in list(self._links):
            link.close()

    def heal(self) -> None:
        self.latency_s = 0.0
        self.refuse_until = 0.0
        self._flowing.set()

    @property
    def connections(self) -> int:
        return len(self._links)

    async def close(self) -> None:
        self.heal()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for link in list(self._links):
            link.close()
        await asyncio.gather(*(link.done for link in list(self._links)),
                             return_exceptions=True)

    # --- the plumbing ---

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        cuts = self.cuts
        if time.monotonic() < self.refuse_until:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        if self.cuts != cuts:  # cut while this one was being joined: it was in no link
            up_writer.transport.abort()  # yet, and must not outlive the cut
            writer.transport.abort()
            return
        link = _Link(self, (reader, writer), (up_reader, up_writer))
        self._links.add(link)
        try:
            await link.run()
        finally:
            self._links.discard(link)


class _Link:
    """One client connection and its connection to the target: two pumps, each a reader that
    timestamps chunks and a writer that delivers them when due and while the proxy flows."""

    def __init__(self, proxy: FaultProxy, down: tuple, up: tuple) -> None:
        self.proxy = proxy
        self.writers = (down[1], up[1])
        self.pumps = [(down[0], up[1]), (up[0], down[1])]
        self.done: asyncio.Future = asyncio.get_running_loop().create_future()
        self.tasks: list[asyncio.Task] = []

    async def run(self) -> None:
        for source, sink in self.pumps:
            queue: asyncio.Queue = asyncio.Queue()
            self.tasks.append(asyncio.create_task(self._read(source, queue)))
            self.tasks.append(asyncio.create_task(self._write(queue, sink)))
        await asyncio.wait(self.tasks, return_when=asyncio.FIRST_COMPLETED)
        self.close()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if not self.done.done():
            self.done.set_result(None)

    async def _read(self, source: asyncio.StreamReader, queue: asyncio.Queue) -> None:
        while True:
            try:
                chunk = await source.read(65536)
            except (ConnectionError, OSError):
                chunk = b""
            await queue.put((time.monotonic(), chunk))
            if not chunk:
                return

    async def _write(self, queue: asyncio.Queue, sink: asyncio.StreamWriter) -> None:
        """Delivers chunks in order; an empty chunk (end of stream) ends the link, but only
        once everything before it went out, and not during a stall."""
        while True:
            read_at, chunk = await queue.get()
            while True:
                await self.proxy._flowing.wait()
                wait = read_at + self.proxy.latency_s - time.monotonic()
                if wait <= 0:
                    break
                await asyncio.sleep(wait)
            await self.proxy._flowing.wait()
            if not chunk:
                return
            try:
                sink.write(chunk)
                await sink.drain()
            except (ConnectionError, OSError):
                return

    def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        for writer in self.writers:
            with contextlib.suppress(Exception):
                writer.transport.abort()
