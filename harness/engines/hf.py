"""transformers backend: continuous batching over the KV cache with the tokenizer's chat template.

Completions are queued longest prompt first and generated `batch_size` rows at a time; a row that
finishes is replaced by the next waiting prompt at once (see slots.py), so no row idles until the
slowest of its batch ends; a conversation's next turn joins the queue as soon as its turn is back
(base.FollowUpEngine, engines/jobs.py) and reuses that turn's keys and values, and a
prompt start shared with other prompts is computed once (slots.py); free slots check tokens guessed
from a row's own text (drafts.py). Results are returned in input order; float32 on CPU, bfloat16 on
CUDA.
Decoding applies temperature and top-p only (not the model's generation_config extras, such as a
repetition penalty), like vLLM given explicit sampling parameters.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from harness.engines import gqa_attention
from harness.engines.base import (
    ChatThroughFollowUps,
    Completion,
    Conversation,
    FollowUp,
    SamplingSettings,
)
from harness.engines.packed_linear import PackedLinears

# Used only when a tokenizer ships no chat template (e.g. a base model); a warning says so.
PLAIN_CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] | capitalize }}: {{ m['content'] }}\n\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant: {% endif %}"
)
# Draft tokens per row at most (drafts.py); the batch's free slots usually allow fewer.
DRAFT_TOKENS = 8


class HFEngine(ChatThroughFollowUps):
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
        self.packed_linears = PackedLinears()
        # Most tokens guessed ahead per row and checked in the same forward (slots.py, drafts.py);
        # 0 decodes one token a row at a time.
        self.draft_tokens = DRAFT_TOKENS

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
        from harness.engines.slots import draft_tokens_for

        return {
            "backend": self.name,
            "model": self.model_name,
            "model_path": str(getattr(self.model, "name_or_path", "")),
            "dtype": str(self.model.dtype).removeprefix("torch."),
            "device": str(self.model.device),
            "batch_size": "auto" if self.auto_batch else self.batch_size,
            "packed_linear_layers": len(self.packed_linears.layers(self.model)),
            "draft_tokens": draft_tokens_for(self.model, self.draft_tokens),
        }

    def render(self, conversation: Conversation) -> str:
        """The exact prompt text the model sees for a conversation."""
        return self.tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)

    def chat_with_follow_ups(
        self,
        conversations: Sequence[Conversation],
        settings: SamplingSettings,
        on_done: FollowUp | None,
        seeds: Sequence[int],
    ) -> list[list[Completion]]:
        """See base.FollowUpEngine: follow-ups join the slot decoder's queue as they come."""
        import torch

        from harness.engines.jobs import JobQueue
        from harness.engines.slots import SlotDecoder

        jobs = JobQueue(settings, self.encode, self._completion, self.context_length, on_done)
        jobs.add(conversations, seeds)
        decoder = SlotDecoder(
            self.model, settings, self.stop_ids, self.tokenizer.pad_token_id, jobs.finished, self.draft_tokens
        )
        while True:
            try:
                with self.packed_linears.apply(self.model), gqa_attention.apply(self.model):
                    decoder.run(jobs.queue, self.batch_size)
                return jobs.results
            except torch.OutOfMemoryError:
                # The rows in flight went back to the queue; their random streams restart with them.
                if not self.auto_batch or self.batch_size == 1:
                    raise
                self.batch_size //= 2
                logging.getLogger("score_eval").warning("out of memory; batch size lowered to %d", self.batch_size)
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                jobs.restart_streams()

    def encode(self, conversation: Conversation) -> list[int]:
        """The prompt ids the model is given for a conversation."""
        return self.tokenizer(self.render(conversation), add_special_tokens=False)["input_ids"]

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
