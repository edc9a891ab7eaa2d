"""Continuous batching over a transformers model: a fixed number of slots, refilled as rows finish.

A static batch keeps computing rows that have already stopped until its longest row ends; here a
finished row leaves the batch at once and the next waiting prompt takes its place. All rows share
one left-padded `DynamicCache`: each row's tokens sit at the right end of the cache, the columns
to their left are padding hidden by the attention mask, and positions count only a row's own
tokens, so every row computes what it would compute alone. Admitted prompts are prefilled in
groups of similar length (see prefill_groups), each in a cache of its own; these are padded to the
width of the running cache and appended to it along the batch dimension in one copy; leading
columns that are padding in every row are dropped as rows leave, so the cache stays as wide as its
longest live row.
"""

from __future__ import annotations

import inspect
from collections import deque
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from harness.engines.base import SamplingSettings
from harness.engines.sampling import Finished, Job, choose
from harness.errors import HarnessError


@dataclass
class _Row:
    job: Job
    tokens: list[int] = field(default_factory=list)  # sampled so far; the last is not yet in the cache

    @property
    def cached(self) -> int:
        """Tokens of this row held in the cache: its prompt and all sampled tokens but the last."""
        return len(self.job.prompt) + len(self.tokens) - 1


# A prompt shorter than this share of its prefill group's longest starts a group of its own.
PREFILL_MIN_FILL = 0.8


class SlotDecoder:
    """Generates every queued job with at most `slots` rows in flight."""

    def __init__(self, model, settings: SamplingSettings, stop_ids: set[int], pad_id: int, on_finished: Finished):
        self.model, self.settings, self.stop_ids, self.pad_id = model, settings, stop_ids, pad_id
        self.on_finished = on_finished
        self.device = model.device
        # transformers 5 renamed the forward's `past_key_values` to `cache` (the old name warns). A
        # wrapper (a peft model) passes either through, so ask the model it wraps.
        inner = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.cache_kwarg = "cache" if "cache" in inspect.signature(inner.forward).parameters else "past_key_values"
        self.rows: list[_Row] = []
        self.admitting: list[Job] = []  # taken from the queue, not yet rows
        self.cache: DynamicCache | None = None

    def run(self, queue: deque[Job], slots: int) -> None:
        """Generate until `queue` is empty. On an exception (e.g. out of memory) the jobs in flight
        go back to the front of the queue, in order, so a retry loses and repeats nothing."""
        try:
            with torch.inference_mode():
                while queue or self.rows:
                    while queue and len(self.rows) < slots:
                        self.admitting = [queue.popleft() for _ in range(min(slots - len(self.rows), len(queue)))]
                        self._admit()
                    if self.rows:
                        self._step()
        except BaseException:
            queue.extendleft(reversed([row.job for row in self.rows] + self.admitting))
            self.rows, self.cache, self.admitting = [], None, []
            raise

    def _admit(self) -> None:
        """Prefill the admitted jobs in groups of similar prompt length (left-padded within a group),
        take their first tokens, and join them to the batch."""
        caches, new_rows = [], []
        for group in prefill_groups([len(job.prompt) for job in self.admitting]):
            jobs = [self.admitting[i] for i in group]
            width = len(jobs[0].prompt)
            ids = torch.full((len(jobs), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(jobs), width), dtype=torch.long)
            for r, job in enumerate(jobs):
                ids[r, width - len(job.prompt) :] = torch.tensor(job.prompt)
                mask[r, width - len(job.prompt) :] = 1
            positions = (mask.cumsum(-1) - 1).clamp_(min=0)
            cache = DynamicCache()
            logits = self._forward(ids, mask, positions, cache)
            _check_cache(cache, width)
            rows = [_Row(job) for job in jobs]
            self._take(rows, logits)
            caches.append(cache)
            new_rows += rows
        self.cache = _join_rows(([self.cache] if self.cache is not None else []) + caches)
        self.rows, self.admitting = self.rows + new_rows, []
        self._retire()

    def _step(self) -> None:
        """Feed every row its last sampled token and sample the next."""
        width = self.cache.get_seq_length()
        cached = torch.tensor([row.cached for row in self.rows])
        ids = torch.tensor([[row.tokens[-1]] for row in self.rows])
        mask = (torch.arange(width + 1) >= (width - cached).unsqueeze(1)).long()
        logits = self._forward(ids, mask, cached.unsqueeze(1), self.cache)
        self._take(self.rows, logits)
        self._retire()

    def _forward(self, ids, mask, positions, cache) -> torch.Tensor:
        out = self.model(
            input_ids=ids.to(self.device),
            attention_mask=mask.to(self.device),
            position_ids=positions.to(self.device),
            use_cache=True,
            logits_to_keep=1,
            **{self.cache_kwarg: cache},
        )
        return out.logits[:, -1, :]

    def _take(self, rows: list[_Row], logits: torch.Tensor) -> None:
        for row, token in zip(rows, choose(logits, self.settings, [row.job.generator for row in rows])):
            row.tokens.append(token)

    def _retire(self) -> None:
        """Hand back rows that stopped or reached max_new_tokens and drop them from the cache."""
        keep = []
        for index, row in enumerate(self.rows):
            stopped = row.tokens[-1] in self.stop_ids
            if stopped or len(row.tokens) >= self.settings.max_new_tokens:
                self.on_finished(row.job, row.tokens, stopped)
            else:
                keep.append(index)
        if len(keep) == len(self.rows):
            return
        self.rows = [self.rows[i] for i in keep]
        if not self.rows:
            self.cache = None
            return
        # Columns left of the longest remaining row are padding in every row: drop them.
        drop = self.cache.get_seq_length() - max(row.cached for row in self.rows)
        index = torch.tensor(keep, device=self.device)
        for layer in self.cache.layers:
            layer.keys = layer.keys[index, :, drop:]
            layer.values = layer.values[index, :, drop:]


def _check_cache(cache: DynamicCache, width: int) -> None:
    """Slot refill reshapes plain key/value tensors that hold every prompt token; a model with
    another cache (e.g. a recurrent or quantised one), or one that ran without its cache, cannot be
    batched this way."""
    kinds = sorted({type(layer).__name__ for layer in cache.layers})
    if kinds != [DynamicLayer.__name__] or cache.get_seq_length() != width:
        raise HarnessError(
            f"the hf engine needs a model that fills a plain key/value cache; this one left {kinds or 'none'}"
        )


def _join_rows(caches: list[DynamicCache]) -> DynamicCache:
    """One cache holding every row of `caches` in order, each left-padded to the widest; a single
    copy of each layer, however many caches join."""
    if len(caches) == 1:
        return caches[0]
    width = max(cache.get_seq_length() for cache in caches)
    joined = caches[0]
    for index, layer in enumerate(joined.layers):
        layer.keys = torch.cat([_left_pad(cache.layers[index].keys, width) for cache in caches])
        layer.values = torch.cat([_left_pad(cache.layers[index].values, width) for cache in caches])
    return joined


def _left_pad(states: torch.Tensor, width: int) -> torch.Tensor:
    missing = width - states.shape[-2]
    if missing == 0:
        return states
    return torch.nn.functional.pad(states, (0, 0, missing, 0))


def prefill_groups(lengths: list[int], min_fill: float = PREFILL_MIN_FILL) -> list[list[int]]:
    """Split prompts, longest first, into groups prefilled together: a prompt joins the current
    group while it is at least `min_fill` of the group's width (its first, longest prompt), so no
    row of a prefill is more than 1 - min_fill padding. Batching similar prompts keeps the large
    matrix products of a joint prefill; one padded batch of 501- and 176-token prompts spends
    half its work on padding. Returns indices into `lengths`."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    groups: list[list[int]] = []
    for i in order:
        if groups and lengths[i] >= min_fill * lengths[groups[-1][0]]:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups
