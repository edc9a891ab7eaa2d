"""OpenAI-compatible servers (vLLM serve, SGLang, TGI, llama.cpp's server, ...) over /v1/chat/completions.

Requests go out concurrently (`concurrency` at a time per server) through the official `openai`
client, which retries 408/409/429/5xx answers and connection errors with exponential backoff and
enforces the per-request timeout. Given several servers of one model, requests are spread over them
and a server that stops answering is left out (server_pool.py); a request that failed there is sent
again elsewhere, and only a request that succeeded counts, so nothing is lost or doubled. The
server renders the chat template. Each request carries the conversation's seed, so sampled answers
repeat on servers that honour `seed`, also after a resume.
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import Future, as_completed

from harness.engines.base import (
    PROMPT_TOO_LONG,
    Completion,
    Conversation,
    DoneCallback,
    SamplingSettings,
    conversation_seeds,
)
from harness.engines.server_pool import Server, ServerPool
from harness.errors import HarnessError

log = logging.getLogger("score_eval")


class OpenAIEngine:
    name = "openai"

    def __init__(self, pool: ServerPool, model_name: str):
        self.pool = pool
        self.model_name = model_name
        # Requests in flight at once over all servers (the thread count); --concurrency is per server.
        self.concurrency = pool.slots

    @classmethod
    def from_server(
        cls,
        base_url: str | Sequence[str],
        model: str | None = None,
        api_key: str | None = None,
        concurrency: int = 8,
        request_timeout: float = 600.0,
        max_retries: int = 6,
    ) -> OpenAIEngine:
        """One server, or several serving the same model (`concurrency` requests at a time each)."""
        import openai

        urls = [base_url] if isinstance(base_url, str) else list(base_url)
        servers = [
            Server(
                url,
                openai.OpenAI(
                    base_url=url, api_key=api_key or "EMPTY", timeout=request_timeout, max_retries=max_retries
                ),
            )
            for url in urls
        ]
        served = {s.url: _served_models(s, model, request_timeout) for s in servers}
        if model is None:
            first = servers[0].url
            if len(served[first]) != 1:
                raise HarnessError(
                    f"the server at {first} serves {len(served[first])} models "
                    f"({', '.join(served[first]) or 'none'}); pick one with --model"
                )
            model = served[first][0]
            for url, models in served.items():
                if model not in models:
                    raise HarnessError(
                        f"the server at {url} serves {', '.join(models) or 'no model'}, not {model} as {first} does; "
                        "every --base-url must serve the same model (or name it with --model)"
                    )
        return cls(ServerPool(servers, concurrency), model)

    def describe(self) -> dict:
        # The API key is deliberately absent: nothing the harness writes may hold it.
        return {
            "backend": self.name,
            "model": self.model_name,
            "servers": self.pool.urls,
            "concurrency": self.pool.concurrency,  # per server
        }

    def chat(
        self,
        conversations: Sequence[Conversation],
        settings: SamplingSettings,
        on_done: DoneCallback | None = None,
        seeds: Sequence[int] | None = None,
    ) -> list[list[Completion]]:
        seeds = conversation_seeds(settings, len(conversations), seeds)
        results: list[list[Completion]] = [[] for _ in conversations]
        futures = {self.submit(conv, settings, seed): i for i, (conv, seed) in enumerate(zip(conversations, seeds))}
        try:
            for future in as_completed(futures):
                i = futures[future]
                results[i] = future.result()
                if on_done:
                    on_done(i, results[i])
        finally:  # a failed call sends no more of its requests (those in flight finish)
            for future in futures:
                future.cancel()
        return results

    def submit(self, conversation: Conversation, settings: SamplingSettings, seed: int) -> Future[list[Completion]]:
        """One conversation's completions, requested as soon as one of `concurrency` threads is free
        (base.RequestEngine): the k-turn loop sends an episode's next turn as soon as it has this one,
        and `chat` sends a whole call's conversations through the same threads."""
        return self._requests.submit(self._complete, conversation, settings, seed)

    @functools.cached_property
    def _requests(self) -> RequestThreads:
        # Made at the first `submit`, lives as long as the engine; idle threads cost nothing.
        return RequestThreads(self.concurrency, "openai-submit")

    def _complete(self, conversation: Conversation, settings: SamplingSettings, seed: int) -> list[Completion]:
        """All `settings.n` completions of one conversation; asks again where a server returns fewer."""
        import openai

        completions: list[Completion] = []
        while len(completions) < settings.n:
            want = settings.n - len(completions)
            with self.pool.lease() as server:
                request = dict(
                    model=self.model_name,
                    messages=conversation,
                    n=want,
                    max_tokens=settings.max_new_tokens,
                    temperature=settings.temperature,
                    top_p=settings.top_p,
                    seed=seed + len(completions),
                )
                try:
                    response = self._send(server, request)
                except openai.APIConnectionError as exc:  # timeouts too: the server is gone or hung
                    self.pool.take_out(server, exc)
                    continue  # on another server, or HarnessError when none is left
                except openai.BadRequestError as exc:
                    if "context" in str(exc).lower():
                        return [Completion("", 0, 0, PROMPT_TOO_LONG)] * settings.n
                    raise HarnessError(f"the server at {server.url} rejected a request: {exc}") from exc
                except openai.APIError as exc:
                    raise HarnessError(
                        f"the server at {server.url} failed after retries: {exc}; check that it is up"
                    ) from exc
            usage = response.usage
            choices = response.choices[:want]
            # Usage is per request; with several choices the completion tokens are shared out evenly.
            per_choice = (usage.completion_tokens // len(choices)) if usage and choices else 0
            completions += [
                Completion(
                    text=choice.message.content or "",
                    prompt_tokens=usage.prompt_tokens if usage else 0,
                    completion_tokens=per_choice,
                    finish_reason=choice.finish_reason or "stop",
                )
                for choice in choices
            ]
            if not choices:
                raise HarnessError(f"the server at {server.url} returned no choices; check the server's log")
        return completions

    def _send(self, server: Server, request: dict):
        """One chat request to `server`. While another server is live, a connection failure goes
        to the caller at once, with no retries: the client's backoff on a dead server (0.5 s doubling
        to 8 s, about 23 s over its 6 retries) held every request in flight there, where another
        server can answer now. The answers the client retries because a live server is busy or
        failing (408, 409, 429, 5xx) are still retried on this server, with the client's backoff."""
        import openai

        if not self.pool.others_live(server):
            return server.client.chat.completions.create(**request)
        try:
            return server.client.with_options(max_retries=0).chat.completions.create(**request)
        except openai.APIStatusError as exc:
            if exc.status_code in (408, 409, 429) or exc.status_code >= 500:
                return server.client.chat.completions.create(**request)
            raise


class RequestThreads:
    """Up to `count` daemon threads that run submitted calls, each into its own Future.

    Not concurrent.futures.ThreadPoolExecutor: the interpreter joins that pool's threads at exit, so
    after a Ctrl-C an interrupted run waited for every request in flight (a server 30 s from
    answering held it 25 s; a long generation holds it up to the request timeout). An interrupted
    run needs none of those answers (it resumes from what is saved), so these threads do not hold
    the exit. A thread starts with each of the first `count` calls, and all stop when the pool is
    garbage collected."""

    def __init__(self, count: int, name: str):
        if count < 1:  # no thread would ever run a submitted call: the run would wait forever
            raise ValueError(f"concurrency must be at least 1 request at a time (got {count} threads)")
        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        self._count, self._name, self._started = count, name, []
        self._lock = threading.Lock()
        calls, started = self._calls, self._started  # not self: the finalizer must not keep the pool alive
        weakref.finalize(self, lambda: [calls.put(None) for _ in started])

    def submit(self, call: Callable, *args) -> Future:
        future: Future = Future()
        self._calls.put((future, call, args))
        with self._lock:
            if len(self._started) < self._count:
                thread = threading.Thread(
                    target=_serve, args=(self._calls,), name=f"{self._name}_{len(self._started)}", daemon=True
                )
                thread.start()
                self._started.append(thread.name)
        return future


def _serve(calls: queue.SimpleQueue) -> None:
    """A request thread: run calls until told to stop (None); a cancelled call is skipped."""
    while (item := calls.get()) is not None:
        future, call, args = item
        del item
        if future.set_running_or_notify_cancel():
            try:
                future.set_result(call(*args))
            except BaseException as exc:  # noqa: BLE001 - handed to whoever waits on the future
                future.set_exception(exc)
        del future, call, args


def _served_models(server: Server, model: str | None, request_timeout: float) -> list[str]:
    """The models `server` lists. Asked even when --model names one: an unreachable server must stop
    the run here, before a run directory exists, not after retries at the first request."""
    import openai

    try:
        quick = server.client.with_options(max_retries=1, timeout=min(request_timeout, 30))
        return [m.id for m in quick.models.list()]
    except (openai.APIConnectionError, openai.APITimeoutError) as exc:
        raise HarnessError(f"cannot reach the server at {server.url} ({exc}); start it, or check --base-url") from exc
    except openai.APIError as exc:
        if model is None:
            raise HarnessError(
                f"cannot list the models of the server at {server.url} ({exc}); check --base-url"
            ) from exc
        return [model]  # a server without /models still serves the model it was given
