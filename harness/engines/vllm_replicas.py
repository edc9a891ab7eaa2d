"""`--data-parallel-size N` for the vllm backend: N independent vLLM engines, one per process, each
seeing only its own `tensor_parallel_size x pipeline_parallel_size` GPUs, with every engine call's
conversations shared out among them.

vLLM's own `LLM(data_parallel_size=N)` is not used: since vLLM 0.11 it refuses single-process use
(vllm-project/vllm#27282, "not supported for single-process usage and may hang") and points to a
launcher of one process per rank, whose ranks also step in lockstep (an expert-parallel feature) and
fail when one finishes early (vllm-project/vllm#23534). A dense model needs no lockstep: replicas that
know nothing of each other are vLLM's "external load balancing" done in-house. Each conversation carries
its own seed, so what it samples does not depend on which replica runs it.
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
from collections.abc import Sequence
from multiprocessing.connection import Connection, wait
from typing import Any
from unittest import mock

from harness.engines.base import Completion, Conversation, DoneCallback, SamplingSettings, conversation_seeds
from harness.errors import HarnessError


def visible_gpus() -> list[str]:
    """The GPUs this process may use, by the ids CUDA_VISIBLE_DEVICES gives them (or 0..n-1)."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [d.strip() for d in listed.split(",") if d.strip()]
    try:
        import torch
    except ImportError:
        return []
    return [str(i) for i in range(torch.cuda.device_count())]


def shares(count: int, replicas: int) -> list[list[int]]:
    """Conversation indices for each replica: every `replicas`-th one, so each replica gets as many
    conversations (give or take one) and the same mix of early and late (often long and short) ones."""
    return [list(range(r, count, replicas)) for r in range(replicas)]


def _replica(conn: Connection, model: str | None, options: dict[str, Any]) -> None:
    """A replica's process: build the engine, report ready (or why not), then answer chat requests
    until told to stop or until the parent goes away."""
    from harness.engines.vllm import VLLMEngine

    try:
        engine = VLLMEngine.from_model(model, **options)
    except BaseException as exc:  # noqa: BLE001 - whatever stopped it, the parent reports it
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", engine.describe()))
    while True:
        try:
            request = conn.recv()
        except EOFError:  # the parent is gone
            return
        if request is None:
            return
        conversations, settings, seeds = request
        try:
            conn.send(("done", engine.chat(conversations, settings, seeds=seeds)))
        except BaseException as exc:  # noqa: BLE001
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


class ReplicatedVLLMEngine:
    name = "vllm"

    def __init__(self, processes: list, connections: list[Connection], devices: list[str]):
        self.processes = processes
        self.connections = connections
        self.devices = devices  # CUDA_VISIBLE_DEVICES of each replica
        self.model_name = ""
        self.facts: dict[str, Any] = {}  # the first replica's describe(), once they are up
        atexit.register(self.close)

    @classmethod
    def start(cls, model: str | None, replicas: int, options: dict[str, Any]) -> ReplicatedVLLMEngine:
        from harness.engines.vllm import import_vllm
        from harness.models import resolve_model

        # One clear line here if vllm or the model is missing, not one per replica.
        import_vllm()
        resolve_model(model)
        per_replica = options.get("tensor_parallel_size", 1) * options.get("pipeline_parallel_size", 1)
        gpus = visible_gpus()
        if len(gpus) < replicas * per_replica:
            raise HarnessError(
                f"--data-parallel-size {replicas} with {per_replica} GPU(s) per replica (tensor x pipeline "
                f"parallel) needs {replicas * per_replica} GPUs, but {len(gpus)} are visible; "
                "lower --data-parallel-size or set CUDA_VISIBLE_DEVICES"
            )
        devices = [",".join(gpus[r * per_replica : (r + 1) * per_replica]) for r in range(replicas)]
        context = multiprocessing.get_context("spawn")  # a fresh interpreter: no CUDA state is inherited
        processes, connections = [], []
        for replica_devices in devices:
            ours, theirs = context.Pipe()
            process = context.Process(target=_replica, args=(theirs, model, options), name="vllm-replica")
            # A spawned child takes the environment of the moment it starts; CUDA reads it on first use.
            with mock.patch.dict(os.environ, {"CUDA_VISIBLE_DEVICES": replica_devices}):
                process.start()
            theirs.close()
            processes.append(process)
            connections.append(ours)
        engine = cls(processes, connections, devices)
        described = engine._collect(range(replicas), "start")
        engine.model_name = described[0]["model"]
        engine.facts = described[0] | {"data_parallel_size": replicas}
        return engine

    def describe(self) -> dict:
        return dict(self.facts)

    def chat(
        self,
        conversations: Sequence[Conversation],
        settings: SamplingSettings,
        on_done: DoneCallback | None = None,
        seeds: Sequence[int] | None = None,
    ) -> list[list[Completion]]:
        seeds = conversation_seeds(settings, len(conversations), seeds)
        parts = shares(len(conversations), len(self.connections))
        busy = [r for r, part in enumerate(parts) if part]
        for r in busy:
            part = parts[r]
            self.connections[r].send(([conversations[i] for i in part], settings, [seeds[i] for i in part]))
        results: list[list[Completion]] = [[] for _ in conversations]

        def done(r: int, completions: list[list[Completion]]) -> None:
            for i, c in zip(parts[r], completions):
                results[i] = c
                if on_done:
                    on_done(i, c)

        self._collect(busy, "generate", done)
        return results

    def _collect(self, replicas, doing: str, on_answer=None) -> list:
        """Each listed replica's answer, handed to `on_answer(replica, answer)` as it comes; a replica
        that fails or dies stops the call with one line naming it and its GPUs."""
        waiting = {self.connections[r]: r for r in replicas}
        answers: dict[int, Any] = {}
        while waiting:
            for conn in wait(list(waiting)):
                r = waiting.pop(conn)
                try:
                    kind, payload = conn.recv()
                except EOFError:
                    kind, payload = "error", f"its process ended (exit code {self.processes[r].exitcode})"
                if kind == "error":
                    self.close()
                    raise HarnessError(
                        f"vLLM replica {r} (GPUs {self.devices[r]}) failed to {doing}: {payload}; "
                        "see its log above, or run with --data-parallel-size 1 to see the error alone"
                    )
                answers[r] = payload
                if on_answer:
                    on_answer(r, payload)
        return [answers[r] for r in sorted(answers)]

    def close(self) -> None:
        """Stop the replicas (also at exit): ask each to stop, then end those that do not."""
        for conn in self.connections:
            try:
                conn.send(None)
            except (OSError, ValueError):
                pass
        for process in self.processes:
            process.join(timeout=30)
            if process.is_alive():
                process.terminate()
                process.join(timeout=10)
        self.processes, self.connections = [], []
