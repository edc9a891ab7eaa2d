"""Several OpenAI-compatible servers serving one model, used as one: each request goes to the live
server with the fewest requests in flight, at most `concurrency` at a time per server, and a server
that stops answering is taken out so that its requests go to the others.

A server is taken out when a request to it fails with a connection error or a timeout: at once
while another server is live, after its client's own retries when it is the last (a killed or
unreachable server, a network split; a single dropped connection too, while another serves). It
stays out for the rest of the process: a server that comes back joins the next run (or `--resume`).
Answers that are errors (4xx, 5xx) come from a server that is up, and are the caller's to report.
When the last server is taken out, every waiting and later request fails with one HarnessError
naming each server and why.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from harness.errors import HarnessError

log = logging.getLogger("score_eval")


@dataclass(eq=False)
class Server:
    url: str
    client: Any  # an openai.OpenAI bound to `url`
    in_flight: int = 0
    down: str | None = None  # why it was taken out; None while it serves


class ServerPool:
    def __init__(self, servers: list[Server], concurrency: int):
        if not servers:
            raise ValueError("a server pool needs at least one server")
        self.servers = servers
        self.concurrency = concurrency
        self._changed = threading.Condition()

    @property
    def urls(self) -> list[str]:
        return [s.url for s in self.servers]

    @property
    def slots(self) -> int:
        """Requests the pool takes at once when every server is up: the thread count worth using."""
        return self.concurrency * len(self.servers)

    @contextmanager
    def lease(self) -> Iterator[Server]:
        """A live server with a free slot, held for one request; waits while every live server is
        busy, and raises HarnessError once no server is left."""
        with self._changed:
            while True:
                live = [s for s in self.servers if s.down is None]
                if not live:
                    raise HarnessError(self._none_left())
                free = [s for s in live if s.in_flight < self.concurrency]
                if free:
                    server = min(free, key=lambda s: s.in_flight)  # ties: the first listed
                    break
                self._changed.wait()
            server.in_flight += 1
        try:
            yield server
        finally:
            with self._changed:
                server.in_flight -= 1
                self._changed.notify_all()

    def others_live(self, server: Server) -> bool:
        """Whether a server other than `server` still serves."""
        return any(s is not server and s.down is None for s in self.servers)

    def take_out(self, server: Server, error: BaseException) -> None:
        """Stop sending requests to `server`; the first failure seen gives the reason."""
        with self._changed:
            if server.down is not None:
                return
            server.down = f"{type(error).__name__}: {error}"
            left = [s.url for s in self.servers if s.down is None]
            self._changed.notify_all()
        if left:
            log.warning(
                "the server at %s stopped answering (%s); its requests go to %s",
                server.url,
                server.down,
                ", ".join(left),
            )

    def _none_left(self) -> str:
        if len(self.servers) == 1:
            server = self.servers[0]
            return (
                f"the server at {server.url} stopped answering ({server.down}); "
                "check that it is up, then run the same command again to continue"
            )
        reasons = "; ".join(f"{s.url} ({s.down})" for s in self.servers)
        return f"every server stopped answering: {reasons}; start one, then run the same command again to continue"
