"""vLLM offline backend: one `LLM.chat` call per turn over all conversations.

vLLM renders each conversation with the model's own chat template and schedules the whole batch
itself (continuous batching), so the harness hands it everything at once. Tensor and pipeline
parallelism, GPU memory share and context length pass straight through to `vllm.LLM`. vllm is an
optional extra (`pip install score-eval[vllm]`) imported only when this backend is chosen.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any
from unittest import mock

from harness.engines.base import (
    PROMPT_TOO_LONG,
    Completion,
    Conversation,
    DoneCallback,
    SamplingSettings,
    conversation_seeds,
)
from harness.errors import HarnessError


def import_vllm():
    """The vllm module, or one clear error saying how to get it (callers check before slow work)."""
    try:
        import vllm
    except ImportError as exc:
        raise HarnessError(
            "the vllm backend needs vLLM, which is not installed; run `pip install 'score-eval[vllm]'` on a "
            "CUDA machine, or use the hf backend (run: --backend hf; train: --rollout-backend hf)"
        ) from exc
    return vllm


class VLLMEngine:
    name = "vllm"

    def __init__(self, llm, model_name: str, options: dict):
        self.llm = llm
        self.model_name = model_name
        self.options = options
        self.tokenizer = llm.get_tokenizer()

    @classmethod
    def from_model(
        cls,
        model: str | None,
        tensor_parallel_size: int = 1,
        pipeline_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.9,
        max_model_len: int | None = None,
        seed: int = 0,
        in_process: bool = False,
        dtype: str | None = None,
    ) -> VLLMEngine:
        """`in_process` keeps vLLM's engine core in this process (the trainer's case), so `load_weights`
        hands tensors to the model directly instead of pickling them to a worker process."""
        vllm = import_vllm()
        from harness.models import resolve_model

        display, location = resolve_model(model)
        options = {
            "tensor_parallel_size": tensor_parallel_size,
            "pipeline_parallel_size": pipeline_parallel_size,
            "gpu_memory_utilization": gpu_memory_utilization,
            "max_model_len": max_model_len,
            "seed": seed,
            "dtype": dtype,  # None: vLLM's "auto" (which runs a float32 checkpoint in float16)
        }
        # vLLM reads this while it builds its engine; patch.dict restores the environment afterwards.
        with mock.patch.dict(os.environ, {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"} if in_process else {}):
            llm = vllm.LLM(model=location, **{k: v for k, v in options.items() if v is not None})
        return cls(llm, display, options | {"model_path": location})

    def load_weights(self, weights: Iterable[tuple[str, Any]]) -> None:
        """Load (Hugging Face parameter name, tensor) pairs into the running model, as the trainer does
        after every optimizer step, then drop the prefix cache: its KV entries were computed with the
        old weights. vLLM's model classes map checkpoint names onto their fused layers (qkv, gate-up)
        in `load_weights`; `LLM.apply_model` runs it inside the worker."""
        if not hasattr(self.llm, "apply_model"):
            raise HarnessError(
                "this vLLM has no LLM.apply_model, which loading trained weights needs; upgrade vllm "
                "or use --rollout-backend hf"
            )
        self.llm.apply_model(lambda model: model.load_weights(weights))
        self.llm.reset_prefix_cache()

    def describe(self) -> dict:
        return {"backend": self.name, "model": self.model_name, **self.options}

    def render(self, conversation: Conversation) -> str:
        return self.tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)

    def chat(
        self,
        conversations: Sequence[Conversation],
        settings: SamplingSettings,
        on_done: DoneCallback | None = None,
        seeds: Sequence[int] | None = None,
    ) -> list[list[Completion]]:
        import vllm

        # vLLM rejects a whole call when one prompt exceeds max_model_len, so such prompts are
        # taken out first and reported as PROMPT_TOO_LONG.
        limit = self.llm.llm_engine.model_config.max_model_len
        lengths = [len(self.tokenizer(self.render(c), add_special_tokens=False)["input_ids"]) for c in conversations]
        runnable = [i for i, n in enumerate(lengths) if n < limit]
        results: list[list[Completion]] = [[Completion("", n, 0, PROMPT_TOO_LONG)] * settings.n for n in lengths]
        seeds = conversation_seeds(settings, len(conversations), seeds)
        # One SamplingParams per prompt, each with the conversation's own seed.
        params = [
            vllm.SamplingParams(
                n=settings.n,
                temperature=settings.temperature,
                top_p=settings.top_p,
                max_tokens=settings.max_new_tokens,
                seed=seeds[i],
            )
            for i in runnable
        ]
        outputs = []
        if runnable:
            outputs = self.llm.chat([conversations[i] for i in runnable], sampling_params=params, use_tqdm=False)
        for i, output in zip(runnable, outputs):
            results[i] = [
                Completion(
                    text=o.text,
                    prompt_tokens=len(output.prompt_token_ids or []),
                    completion_tokens=len(o.token_ids),
                    finish_reason=o.finish_reason or "stop",
                    token_ids=tuple(o.token_ids),
                    prompt_token_ids=tuple(output.prompt_token_ids or ()),
                )
                for o in output.outputs
            ]
        if on_done:
            for i, completions in enumerate(results):
                on_done(i, completions)
        return results
