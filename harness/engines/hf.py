"""transformers backend: continuous batching over the KV cache with the tokenizer's chat template.

Completions are queued longest prompt first and generated `batch_size` rows at a time; a row that
finishes is replaced by the next waiting prompt at once (see slots.py), so no row idles until the
slowest of its batch ends. Results are returned in input order; float32 on CPU, bfloat16 on CUDA.
Decoding applies temperature and top-p only (not the model's generation_config extras, such as a
repetition penalty), like vLLM given explicit sampling parameters.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Sequence

from harness.engines.base import (
    PROMPT_TOO_LONG,
    Collector,
    Completion,
    Conversation,
    DoneCallback,
    SamplingSettings,
    conversation_seeds,
)

# Used only when a tokenizer ships no chat template (e.g. a base model); a warning says so.
PLAIN_CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] | capitalize }}: {{ m['content'] }}\n\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant: {% endif %}"
)


class HFEngine:
    name = "hf"

    def __init__(self, model, tokenizer, model_name: str, batch_size: int | str = 16):
        self.model = model
        self.tokenizer = tokenizer
        self.model_name = model_name
        # "auto" starts large and halves on out-of-memory; a number is used as given.
        self.auto_batch = batch_size == "auto"
        self.batch_size = (64 if str(model.device).startswith("cuda") else 16) if self.auto_batch else int(batch_size)
        tokenizer.padding_side = "left"
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        if not tokenizer.chat_template:
            logging.getLogger("score_eval").warning(
                "%s has no chat template; using a plain 'Role: text' template", model_name
            )
            tokenizer.chat_template = PLAIN_CHAT_TEMPLATE
        # Ids that end a completion; a benchmark empties the set to keep every row busy.
        self.stop_ids = stop_token_ids(model, tokenizer)

    @classmethod
    def from_model(
        cls, model: str | None, batch_size: int | str = 16, device: str | None = None, dtype: str = "auto"
    ) -> HFEngine:
        """Load a checkpoint; dtype "auto" is bfloat16 on CUDA and float32 on CPU."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from harness.models import resolve_model

        display, location = resolve_model(model)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if dtype == "auto":
            dtype = "bfloat16" if device.startswith("cuda") else "float32"
        dtype = getattr(torch, dtype)
        tokenizer = AutoTokenizer.from_pretrained(location)
        loaded = AutoModelForCausalLM.from_pretrained(location, dtype=dtype).to(device).eval()
        return cls(loaded, tokenizer, display, batch_size=batch_size)

    def describe(self) -> dict:
        return {
            "backend": self.name,
            "model": self.model_name,
            "model_path": str(getattr(self.model, "name_or_path", "")),
            "dtype": str(self.model.dtype).removeprefix("torch."),
            "device": str(self.model.device),
            "batch_size": "auto" if self.auto_batch else self.batch_size,
        }

    def render(self, conversation: Conversation) -> str:
        """The exact prompt text the model sees for a conversation."""
        return self.tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)

    def chat(
        self,
        conversations: Sequence[Conversation],
        settings: SamplingSettings,
        on_done: DoneCallback | None = None,
        seeds: Sequence[int] | None = None,
    ) -> list[list[Completion]]:
        """See Engine.chat. Completion j of conversation i samples from its own stream, seeded by
        `seeds[i]` (default `settings.seed + i`) and j, whatever batch or slot it runs in."""
        import torch

        from harness.engines.sampling import row_generator
        from harness.engines.slots import Job, SlotDecoder

        n = settings.n
        seeds = conversation_seeds(settings, len(conversations), seeds)
        encoded = [self.tokenizer(self.render(c), add_special_tokens=False)["input_ids"] for c in conversations]
        collected = Collector(len(conversations), n, on_done)
        finish = collected.add

        def finished(job: Job, tokens: list[int], stopped: bool) -> None:
            conv, sample = divmod(job.key, n)
            finish(conv, sample, self._completion(encoded[conv], tokens, stopped))

        context = self.context_length
        jobs = []
        for conv, ids in enumerate(encoded):
            for sample in range(n):
                if context is not None and len(ids) >= context:
                    finish(conv, sample, Completion("", len(ids), 0, PROMPT_TOO_LONG))
                else:
                    generator = None if settings.greedy else row_generator(seeds[conv], sample)
                    jobs.append(Job(conv * n + sample, ids, generator))
        # Longest prompts first, so rows in flight together have similar lengths and pad little.
        jobs.sort(key=lambda job: -len(job.prompt))
        queue = deque(jobs)
        decoder = SlotDecoder(self.model, settings, self.stop_ids, self.tokenizer.pad_token_id, finished)
        while True:
            try:
                decoder.run(queue, self.batch_size)
                return collected.results
            except torch.OutOfMemoryError:
                # The rows in flight went back to the queue; their random streams restart with them.
                if not self.auto_batch or self.batch_size == 1:
                    raise
                self.batch_size //= 2
                logging.getLogger("score_eval").warning("out of memory; batch size lowered to %d", self.batch_size)
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                for job in queue:
                    if job.generator is not None:
                        job.generator = row_generator(seeds[job.key // n], job.key % n)

    @property
    def context_length(self) -> int | None:
        return getattr(self.model.config, "max_position_embeddings", None)

    def _completion(self, prompt: list[int], tokens: list[int], stopped: bool) -> Completion:
        kept = tokens[:-1] if stopped else tokens
        return Completion(
            text=self.tokenizer.decode(kept, skip_special_tokens=True),
            prompt_tokens=len(prompt),
            completion_tokens=len(tokens),
            finish_reason="stop" if stopped else "length",
            token_ids=tuple(tokens),
            prompt_token_ids=tuple(prompt),
        )


def stop_token_ids(model, tokenizer) -> set[int]:
    """The ids that end an attempt: the model's generation eos id(s) and the tokenizer's eos.
    The trainer's token masks use this too, so both agree on where an attempt ends."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = set(eos if isinstance(eos, list) else [eos])
    ids.add(tokenizer.eos_token_id)
    return {i for i in ids if i is not None}
