"""transformers backend: batched generation with left padding and the tokenizer's chat template.

Conversations are sorted by prompt length before batching so each batch pads little; results are
returned in input order. Generation uses the model's KV cache; float32 on CPU, bfloat16 on CUDA.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from harness.engines.base import PROMPT_TOO_LONG, Completion, Conversation, DoneCallback, SamplingSettings

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
        """See Engine.chat. Per-conversation `seeds` are not honoured: transformers samples a
        whole batch from one random stream, seeded per batch from `settings.seed`, so the same
        call repeats exactly but a conversation's samples depend on its batch."""
        import torch

        n = settings.n
        encoded = [self.tokenizer(self.render(c), add_special_tokens=False)["input_ids"] for c in conversations]
        results: list[list[Completion]] = [[] for _ in conversations]

        def finish(conv: int, completion: Completion) -> None:
            results[conv].append(completion)
            if len(results[conv]) == n and on_done:
                on_done(conv, results[conv])

        context = self.context_length
        runnable = []
        for conv, ids in enumerate(encoded):
            if context is not None and len(ids) >= context:
                for _ in range(n):
                    finish(conv, Completion("", len(ids), 0, PROMPT_TOO_LONG))
            else:
                runnable += [conv] * n
        # Longest prompts first, so each batch holds prompts of similar length and pads little.
        runnable.sort(key=lambda conv: -len(encoded[conv]))
        start = batch_no = 0
        while start < len(runnable):
            batch = runnable[start : start + self.batch_size]
            # One seed per batch: the same command on the same machine repeats its samples exactly.
            torch.manual_seed(settings.seed + batch_no)
            try:
                completions = self._generate([encoded[c] for c in batch], settings)
            except torch.OutOfMemoryError:
                if not self.auto_batch or self.batch_size == 1:
                    raise
                self.batch_size //= 2
                logging.getLogger("score_eval").warning("out of memory; batch size lowered to %d", self.batch_size)
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                continue
            for conv, completion in zip(batch, completions):
                finish(conv, completion)
            start, batch_no = start + len(batch), batch_no + 1
        return results

    @property
    def context_length(self) -> int | None:
        return getattr(self.model.config, "max_position_embeddings", None)

    def _generate(self, batch: list[list[int]], settings: SamplingSettings) -> list[Completion]:
        import torch

        padded = self.tokenizer.pad({"input_ids": batch}, return_tensors="pt").to(self.model.device)
        sampling = {"do_sample": False}
        if not settings.greedy:
            sampling = {"do_sample": True, "temperature": settings.temperature, "top_p": settings.top_p, "top_k": 0}
        with torch.inference_mode():
            out = self.model.generate(
                **padded,
                max_new_tokens=settings.max_new_tokens,
                pad_token_id=self.tokenizer.pad_token_id,
                **sampling,
            )
        new_tokens = out[:, padded["input_ids"].shape[1] :]
        stop_ids = stop_token_ids(self.model, self.tokenizer)
        completions = []
        for row, prompt in zip(new_tokens.tolist(), batch):
            end = next((j for j, t in enumerate(row) if t in stop_ids), None)
            kept = row if end is None else row[:end]
            sampled = row if end is None else row[: end + 1]
            completions.append(
                Completion(
                    text=self.tokenizer.decode(kept, skip_special_tokens=True),
                    prompt_tokens=len(prompt),
                    completion_tokens=len(sampled),
                    finish_reason="length" if end is None else "stop",
                    token_ids=tuple(sampled),
                    prompt_token_ids=tuple(prompt),
                )
            )
        return completions


def stop_token_ids(model, tokenizer) -> set[int]:
    """The ids that end an attempt: the model's generation eos id(s) and the tokenizer's eos.
    The trainer's token masks use this too, so both agree on where an attempt ends."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = set(eos if isinstance(eos, list) else [eos])
    ids.add(tokenizer.eos_token_id)
    return {i for i in ids if i is not None}
