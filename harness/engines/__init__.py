"""Inference engines behind one interface (see base.py). Import an engine only when it is chosen."""

from __future__ import annotations

from typing import Any

from harness.engines.base import Completion, Engine, Message, SamplingSettings
from harness.errors import HarnessError

BACKENDS = ("hf", "vllm", "openai", "llamacpp")


def make_engine(backend: str, model: str | None, options: dict[str, Any]) -> Engine:
    """Build the engine for `backend` from the run's engine options; heavy imports happen here."""
    if backend == "hf":
        from harness.engines.hf import HFEngine

        return HFEngine.from_model(model, batch_size=options["batch_size"], dtype=options["dtype"])
    if backend == "vllm":
        from harness.engines.vllm import VLLMEngine

        vllm_options = dict(
            tensor_parallel_size=options["tensor_parallel_size"],
            pipeline_parallel_size=options["pipeline_parallel_size"],
            gpu_memory_utilization=options["gpu_memory_utilization"],
            max_model_len=options["max_model_len"],
            seed=options["seed"],
            dtype=None if options["dtype"] == "auto" else options["dtype"],
        )
        if options.get("data_parallel_size", 1) > 1:
            from harness.engines.vllm_replicas import ReplicatedVLLMEngine

            return ReplicatedVLLMEngine.start(model, options["data_parallel_size"], vllm_options)
        return VLLMEngine.from_model(model, **vllm_options)
    if backend == "openai":
        from harness.engines.openai import OpenAIEngine

        if not options.get("base_url"):
            raise HarnessError("--backend openai needs --base-url, e.g. http://127.0.0.1:8000/v1 (once per server)")
        return OpenAIEngine.from_server(
            options["base_url"],
            model=model,
            api_key=options.get("api_key"),
            concurrency=options["concurrency"],
            request_timeout=options["request_timeout"],
        )
    if backend == "llamacpp":
        from harness.engines.llamacpp import LlamaCppEngine

        return LlamaCppEngine.from_model(model, parallel=options["parallel"], n_ctx=options["n_ctx"])
    raise HarnessError(f"unknown backend '{backend}'; choose one of: {', '.join(BACKENDS)}")


__all__ = ["BACKENDS", "Completion", "Engine", "Message", "SamplingSettings", "make_engine"]
