"""vLLM offline backend: the k-turn loop's whole run through vLLM's engine, or one `LLM.chat` call.

vLLM schedules what it is given itself (continuous batching), so the harness hands it everything at
once. The k-turn loop submits every conversation to `LLM.llm_engine` (add_request, then step, as
`LLM.chat` does inside) and submits each episode's next turn as soon as its turn is back, so no turn
waits for the slowest answer of the one before (chat_with_follow_ups; the trainer's rollouts are
such runs too); a plain `chat` call is one `LLM.chat` call, which renders each conversation with the
model's chat template. Both send the same prompt ids. Tensor and pipeline
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
    FollowUp,
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
        # vLLM rejects a whole call when one prompt exceeds max_model_len, so such prompts are
        # taken out first and reported as PROMPT_TOO_LONG.
        limit = self.llm.llm_engine.model_config.max_model_len
        lengths = [len(self.prompt_ids(c)) for c in conversations]
        runnable = [i for i, n in enumerate(lengths) if n < limit]
        results: list[list[Completion]] = [[Completion("", n, 0, PROMPT_TOO_LONG)] * settings.n for n in lengths]
        seeds = conversation_seeds(settings, len(conversations), seeds)
        # One SamplingParams per prompt, each with the conversation's own seed.
        params = [self._params(settings, seeds[i]) for i in runnable]
        outputs = []
        if runnable:
            outputs = self.llm.chat([conversations[i] for i in runnable], sampling_params=params, use_tqdm=False)
        for i, output in zip(runnable, outputs):
            results[i] = _completions(output)
        if on_done:
            for i, completions in enumerate(results):
                on_done(i, completions)
        return results

    def chat_with_follow_ups(
        self,
        conversations: Sequence[Conversation],
        settings: SamplingSettings,
        on_done: FollowUp | None,
        seeds: Sequence[int],
    ) -> list[list[Completion]]:
        """See base.FollowUpEngine. Every conversation goes to vLLM's engine as a request of its own
        (`LLM.llm_engine.add_request` with the prompt ids `LLM.chat` would send), the engine is
        stepped until nothing is left, and each next turn `on_done` answers with is added as soon
        as its turn finishes, in whatever order vLLM finishes them."""
        engine = self.llm.llm_engine
        limit = engine.model_config.max_model_len
        results: list[list[Completion] | None] = []
        too_long: list[tuple[int, int]] = []
        asked: set[str] = set()  # requests in the engine, not yet finished

        def submit(conversation: Conversation, seed: int) -> None:
            index, ids = len(results), self.prompt_ids(conversation)
            results.append(None)
            if len(ids) >= limit:
                too_long.append((index, len(ids)))
            else:
                engine.add_request(str(index), {"prompt_token_ids": ids}, self._params(settings, seed))
                asked.add(str(index))

        def finish(index: int, completions: list[Completion]) -> None:
            results[index] = completions
            follow_up = on_done(index, completions) if on_done else None
            if follow_up is not None:
                submit(*follow_up)

        try:
            # Every conversation is entered before any is reported, as a report can add more.
            for conversation, seed in zip(conversations, seeds):
                submit(conversation, seed)
            while too_long or engine.has_unfinished_requests():
                while too_long:
                    index, length = too_long.pop(0)
                    finish(index, [Completion("", length, 0, PROMPT_TOO_LONG)] * settings.n)
                if engine.has_unfinished_requests():
                    for output in engine.step():
                        if output.finished:
                            asked.discard(output.request_id)
                            finish(int(output.request_id), _completions(output))
        except BaseException:
            # An error or Ctrl-C must not leave requests in the engine for its next call to return.
            if asked:
                engine.abort_request(sorted(asked))
            raise
        return results

    def prompt_ids(self, conversation: Conversation) -> list[int]:
        """The ids `LLM.chat` sends for a conversation: its chat template rendered, then tokenised
        with no special tokens added (the template has them)."""
        return self.tokenizer(self.render(conversation), add_special_tokens=False)["input_ids"]

    @staticmethod
    def _params(settings: SamplingSettings, seed: int):
        import vllm

        params = vllm.SamplingParams(
            n=settings.n,
            temperature=settings.temperature,
            top_p=settings.top_p,
            max_tokens=settings.max_new_tokens,
            seed=seed,
        )
        try:  # the final output only, as LLM.chat asks of the engine (older vLLM: every step's)
            from vllm.sampling_params import RequestOutputKind

            params.output_kind = RequestOutputKind.FINAL_ONLY
        except ImportError:
            pass
        return params


def _completions(output) -> list[Completion]:
    """A finished vLLM RequestOutput as the harness's completions."""
    return [
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
