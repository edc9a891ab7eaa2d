"""Inference engines behind one interface (see base.py). Import an engine only when it is chosen."""

from __future__ import annotations

from harness.engines.base import Completion, Engine, Message, SamplingSettings
from harness.errors import HarnessError

BACKENDS = ("hf",)


def make_engine(backend: str, model: str | None, **options) -> Engine:
    """Build the engine for `backend`; heavy imports happen here, not at package import."""
    if backend == "hf":
        from harness.engines.hf import HFEngine

        return HFEngine.from_model(model, **options)
    raise HarnessError(f"unknown backend '{backend}'; choose one of: {', '.join(BACKENDS)}")


__all__ = ["BACKENDS", "Completion", "Engine", "Message", "SamplingSettings", "make_engine"]
