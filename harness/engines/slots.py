"""Continuous batching over a transformers model: a fixed number of slots, refilled as rows finish.

A static batch keeps computing rows that have already stopped until its longest row ends; here a
finished row leaves the batch at once and the next waiting prompt takes its place. All rows share
one `GrowingCache` (kv_cache.py) whose columns are aligned on the right: a row's newest token sits
in the last column, and an attention mask per row (kept beside the cache) hides the columns that
are not the row's own, so every row computes what it would compute alone. Positions count only a
row's own tokens. A finished row's place in the cache is kept when a waiting prompt will take it, and
the new row's keys and values are written there in place (copying the whole cache to remove one row
and again to add one cost 1.3 s of a 17.6 s run). Leading columns that no row uses are dropped (the
cache's views start later), so the cache stays as wide as its longest live row.

Prompts are not prefilled from scratch when their start was computed before (see _Head):
  - prompts admitted together that share a start (the chat template's system prompt and a task's
    instruction: 90 of a MATH prompt's 176 tokens on average) compute it once, and later prompts
    with the same start reuse it;
  - an episode's next turn begins with its previous turn's prompt and answer, whose keys and values
    are in the cache when that turn ends: they are kept for the follow-up, which goes to the front
    of the queue and then prefills only the correction prompt (see _keep_for_follow_ups). Queued
    behind the waiting first turns instead, most follow-ups of a long run found what was kept
    spent (capped at the running cache's size) and prefilled their whole prompt. On 160 MATH-500
    problems x 2 turns (embedded model, 2-core CPU, two pairs alternating, the same completions)
    prefill took 39.2/38.4 s that way against 27.9/28.6 s, and whole runs 101.4/103.9 s against
    95.0/94.4 s; decoding took ~4 s longer, as rows on different turns share the batch and the
    cache is as wide as its longest row (499 columns a step on average against 436);
  - jobs with the same prompt (the samples of one conversation) admitted together prefill it once
    and copy its keys and values.
Only the rest of each prompt (its suffix) is prefilled, in groups of similar suffix length (see
prefill_groups), each in a cache of its own that starts with its rows' heads; a group is written
into finished rows' places, or, where there are too few or it is wider than the running cache,
joined to it along the batch dimension in one copy. Reused keys and values are the same
numbers a full prefill computes up to rounding (logits within ~3e-5 on the embedded model, the
size of the differences between batch shapes that the engine has anyway).

When the batch has free slots (rows finished and nothing waits, or fewer prompts than slots), a
decode step also feeds each row a draft (drafts.py: tokens that followed its last few tokens earlier
in its own text) and takes, in order, the drafted tokens the row's own choice agrees with, then that
choice: several tokens a row for one forward, the same tokens as one at a time (see _step). A step
never feeds more tokens than the batch has slots. A draft's columns that a row does not take stay
in the cache, masked, until the row leaves.
"""

from __future__ import annotations

import inspect
from collections import deque
from dataclasses import dataclass, field

import torch

from harness.engines.base import SamplingSettings, common_prefix_length
from harness.engines.drafts import PromptLookup
from harness.engines.kv_cache import GrowingCache, GrowingLayer
from harness.engines.sampling import Finished, Job, choose
from harness.errors import HarnessError

# A prompt shorter than this share of its prefill group's longest starts a group of its own.
PREFILL_MIN_FILL = 0.8
# Shared starts shorter than this are prefilled with the rest of the prompt (not worth a copy).
MIN_SHARED_TOKENS = 16


@dataclass
class _Row:
    job: Job
    tokens: list[int] = field(default_factory=list)  # sampled so far; the last is not yet in the cache
    reported: bool = False  # handed back, though still in the batch until _retire drops it
    lookup: PromptLookup | None = None  # its prompt and tokens, for drafts (made at its first step)

    @property
    def cached(self) -> int:
        """Tokens of this row held in the cache: its prompt and all sampled tokens but the last."""
        return len(self.job.prompt) + len(self.tokens) - 1


@dataclass
class _Head:
    """Token ids and their keys and values (per layer, [1, kv heads, tokens, head dim]), computed
    once; a prompt that starts with the first c of these ids starts from their first c columns."""

    ids: list[int]
    keys: list[torch.Tensor]
    values: list[torch.Tensor]

    def shared_with(self, prompt: list[int]) -> int:
        """How many leading tokens of `prompt` this head holds, leaving at least one to prefill (the
        last prompt token's logits give the first sampled token)."""
        return common_prefix_length([self.ids, prompt[:-1]])


class SlotDecoder:
    """Generates every queued job with at most `slots` rows in flight."""

    def __init__(
        self,
        model,
        settings: SamplingSettings,
        stop_ids: set[int],
        pad_id: int,
        on_finished: Finished,
        draft_tokens: int = 0,
    ):
        self.model, self.settings, self.stop_ids, self.pad_id = model, settings, stop_ids, pad_id
        self.on_finished = on_finished
        # A sliding window counts cache columns, so a row's columns must hold only its own tokens,
        # side by side: no drafts (a rejected draft's masked columns would take room in the row's
        # window), and prefill groups only of suffixes of one length (see _admit).
        self.slides = slides(model)
        self.draft_tokens = draft_tokens_for(model, draft_tokens)  # most a row is given at a step (_step)
        self.device = model.device
        # transformers 5 renamed the forward's `past_key_values` to `cache` (the old name warns). A
        # wrapper (a peft model) passes either through, so ask the model it wraps.
        inner = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.cache_kwarg = "cache" if "cache" in inspect.signature(inner.forward).parameters else "past_key_values"
        self.queue: deque[Job] = deque()
        self.slots = 0
        # The batch's rows in cache order; None marks a finished row's place, kept for the next
        # admission to fill in place (see _retire), never present at a decode step.
        self.rows: list[_Row | None] = []
        self.admitting: list[Job] = []  # taken from the queue, not yet rows
        self.cache: GrowingCache | None = None
        self.mask: torch.Tensor | None = None  # [rows, cache width]: 1 where a column is the row's own
        self.shared: _Head | None = None  # the last start computed once for prompts admitted together
        self.continued: dict[int, _Head] = {}  # job key -> the finished turn its prompt continues

    def run(self, queue: deque[Job], slots: int) -> None:
        """Generate until `queue` is empty. On an exception (e.g. out of memory) the jobs in flight
        go back to the front of the queue, in order, so a retry loses and repeats nothing."""
        self.queue, self.slots = queue, slots
        try:
            with torch.inference_mode():
                while queue or self.rows:
                    while queue and self._busy() < slots:
                        self.admitting = [queue.popleft() for _ in range(min(slots - self._busy(), len(queue)))]
                        self._admit()
                    if self.rows:
                        self._step()
        except BaseException:
            queue.extendleft(reversed([row.job for row in self.rows if row and not row.reported] + self.admitting))
            self.rows, self.cache, self.mask, self.admitting = [], None, None, []
            self.shared, self.continued = None, {}
            raise

    def _busy(self) -> int:
        return sum(row is not None for row in self.rows)

    def _admit(self) -> None:
        """Prefill the admitted jobs' suffixes in groups of similar length (left-padded within a
        group, after their heads), take their first tokens, and put them in the batch: in the places
        of finished rows where they fit, else joined to it. Jobs with the same prompt and head (the
        samples of one conversation) are prefilled once and copied."""
        jobs = self.admitting
        heads = self._heads(jobs)
        suffixes = [job.prompt[shared:] for job, (_, shared) in zip(jobs, heads)]
        parts, new_rows = [], []
        # Within a group, a shorter suffix is left-padded after its head: masked columns inside its
        # row, which a sliding window would count.
        for group in prefill_groups([len(suffix) for suffix in suffixes], 1.0 if self.slides else PREFILL_MIN_FILL):
            firsts: dict[tuple, int] = {}  # (prompt, head) -> its row in this prefill
            keys = [(tuple(jobs[i].prompt), id(heads[i][0])) for i in group]
            copy_of = [firsts.setdefault(key, len(firsts)) for key in keys]
            computed = [group[copy_of.index(r)] for r in range(len(firsts))]
            cache, head_mask = _cache_from_heads([heads[i] for i in computed], self.device)
            width = len(suffixes[computed[0]])
            ids = torch.full((len(computed), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(computed), width), dtype=torch.long)
            for r, i in enumerate(computed):
                ids[r, width - len(suffixes[i]) :] = torch.tensor(suffixes[i])
                mask[r, width - len(suffixes[i]) :] = 1
            start = torch.tensor([[heads[i][1]] for i in computed])
            positions = (mask.cumsum(-1) - 1).clamp_(min=0) + start
            mask = torch.cat([head_mask, mask], dim=1)
            logits = self._forward(ids, mask, positions, cache)
            _check_cache(cache, mask.shape[1])
            if len(computed) < len(group):
                index = torch.tensor(copy_of)
                logits, mask = logits[index.to(logits.device)], mask[index]
                for layer in cache.layers:
                    layer.keys = layer.keys[index.to(self.device)]
                    layer.values = layer.values[index.to(self.device)]
            rows = [_Row(jobs[i]) for i in group]
            self._take(rows, logits)
            if self._fill_places(rows, cache, mask):
                # Rows now; on an error the run puts a job back once, as a row or as admitting.
                self.admitting = [job for job in self.admitting if all(job is not row.job for row in rows)]
            else:
                parts.append((cache, mask))
                new_rows += rows
        self._remove([i for i, row in enumerate(self.rows) if row is None])
        if self.cache is not None:
            parts.insert(0, (self.cache, self.mask))
        if parts:
            self.cache, self.mask = _join_rows(parts)
        self.rows, self.admitting = self.rows + new_rows, []
        self._retire()

    def _fill_places(self, rows: list[_Row], cache: GrowingCache, mask: torch.Tensor) -> bool:
        """Write a prefilled group into the places of finished rows, if there are enough and the
        group is no wider than the running cache; a join would copy the whole cache instead."""
        places = [i for i, row in enumerate(self.rows) if row is None][: len(rows)]
        if len(places) < len(rows) or mask.shape[1] > self.mask.shape[1]:
            return False
        index = torch.tensor(places, device=self.device)
        for layer, new in zip(self.cache.layers, cache.layers):
            layer.write_rows(index, new.keys, new.values)
        self.mask[places] = torch.nn.functional.pad(mask, (self.mask.shape[1] - mask.shape[1], 0))
        for place, row in zip(places, rows):
            self.rows[place] = row
        return True

    def _heads(self, jobs: list[Job]) -> list[tuple[_Head | None, int]]:
        """Each job's head and how many of its prompt tokens it holds: the finished turn the job
        continues, or the shared start, whichever holds more; jobs with neither share a new start
        computed once, when two or more have one."""
        heads: list[tuple[_Head | None, int]] = []
        for job in jobs:
            candidates = [head for head in (self.continued.pop(job.key, None), self.shared) if head is not None]
            best = max(((head, head.shared_with(job.prompt)) for head in candidates), key=lambda h: h[1], default=None)
            heads.append(best if best is not None and best[1] >= MIN_SHARED_TOKENS else (None, 0))
        bare = [i for i, (head, _) in enumerate(heads) if head is None]
        if len(bare) >= 2:
            shared = common_prefix_length([jobs[i].prompt[:-1] for i in bare])
            if shared >= MIN_SHARED_TOKENS:
                self.shared = self._prefill_head(jobs[bare[0]].prompt[:shared])
                for i in bare:
                    heads[i] = (self.shared, shared)
        return heads

    def _prefill_head(self, ids: list[int]) -> _Head:
        cache = GrowingCache()
        positions = torch.arange(len(ids)).unsqueeze(0)
        self._forward(torch.tensor([ids]), torch.ones_like(positions), positions, cache)
        _check_cache(cache, len(ids))
        return _Head(ids, [layer.keys for layer in cache.layers], [layer.values for layer in cache.layers])

    def _step(self) -> None:
        """Feed every row its last sampled token, and its draft if any (see _drafts), and take the
        tokens the model chooses: one a row, and more where the draft's start is what it chose."""
        drafts = self._drafts()
        width = 1 + max(map(len, drafts))
        ids = torch.full((len(self.rows), width), self.pad_id, dtype=torch.long)
        fed = torch.zeros((len(self.rows), width), dtype=torch.long)
        for r, (row, draft) in enumerate(zip(self.rows, drafts)):
            ids[r, : 1 + len(draft)] = torch.tensor([row.tokens[-1], *draft])
            fed[r, : 1 + len(draft)] = 1
        # Padding after a short draft repeats its row's last fed position: counting on would give a
        # row positions past its own last (past a learned position table near the context length).
        positions = torch.tensor([[row.cached] for row in self.rows]) + fed.cumsum(-1) - 1
        mask = torch.cat([self.mask, fed], dim=1)
        logits = self._forward(ids, mask, positions, self.cache, keep=width)
        taken = self._verify(drafts, logits)
        # A row keeps the columns of the tokens it fed that precede what it took; the others (a
        # rejected draft's, padding) are masked, and those no row keeps are dropped from the end.
        for r, count in enumerate(taken):
            fed[r, count:] = 0
        self.mask = torch.cat([self.mask, fed], dim=1)
        unused = width - max(taken)
        if unused:
            self.mask = self.mask[:, :-unused]
            for layer in self.cache.layers:
                layer.drop_trailing(unused)
        self._retire()

    def _drafts(self) -> list[list[int]]:
        """Each row's draft (drafts.py): tokens guessed from its own prompt and completion, up to
        `draft_tokens` and to what the row may still generate. A step feeds at most as many tokens as
        the batch has slots, so drafts come only when rows are free: there a forward of a few rows
        costs about what one of a full batch does (2-core CPU, embedded model, 400 cached tokens,
        fastest of 7: 4 rows x 4 tokens 43 ms, 16 rows x 1 token 51 ms, 4 rows x 1 token 34 ms).
        Beyond that, more tokens cost more (16 x 2: 82 ms), and on 48 MATH-500 problems feeding up
        to twice the slots was not faster than this on one turn. Greedy and sampled rows alike: a
        draft token is kept only where it is the token the row's own choice would have been."""
        count = min(self.draft_tokens, self.slots // len(self.rows) - 1)
        if count <= 0:
            return [[] for _ in self.rows]
        drafts = []
        for row in self.rows:
            if row.lookup is None:
                row.lookup = PromptLookup(row.job.prompt + row.tokens)
            drafts.append(row.lookup.draft(min(count, self.settings.max_new_tokens - len(row.tokens) - 1)))
        return drafts

    def _verify(self, drafts: list[list[int]], logits: torch.Tensor) -> list[int]:
        """Choose each row's tokens from `logits` [rows, 1 + longest draft, vocab] in order, as
        single steps would: a row's choice at a fed draft token's place stands only while every
        draft token before it was chosen, so each row draws exactly one random number per token it
        takes and samples what it samples without drafts. Returns how many tokens each row took."""
        taken = [0] * len(self.rows)
        going = list(range(len(self.rows)))
        for place in range(logits.shape[1]):
            if not going:
                break
            rows = [self.rows[r] for r in going]
            chosen = choose(logits[going, place], self.settings, [row.job.generator for row in rows])
            still = []
            for r, row, token in zip(going, rows, chosen):
                row.tokens.append(token)
                taken[r] += 1
                if row.lookup is not None:
                    row.lookup.extend([token])
                ended = token in self.stop_ids or len(row.tokens) >= self.settings.max_new_tokens
                if not ended and place < len(drafts[r]) and token == drafts[r][place]:
                    still.append(r)
            going = still
        return taken

    def _forward(self, ids, mask, positions, cache, keep: int | None = None) -> torch.Tensor:
        """The logits of the last token of each row [rows, vocab] (a prefill), or, given `keep`, of
        the last `keep` tokens [rows, keep, vocab] (a decode step)."""
        out = self.model(
            input_ids=ids.to(self.device),
            attention_mask=mask.to(self.device),
            position_ids=positions.to(self.device),
            use_cache=True,
            logits_to_keep=keep or 1,
            **{self.cache_kwarg: cache},
        )
        return out.logits[:, -1, :] if keep is None else out.logits

    def _take(self, rows: list[_Row], logits: torch.Tensor) -> None:
        for row, token in zip(rows, choose(logits, self.settings, [row.job.generator for row in rows])):
            row.tokens.append(token)

    def _retire(self) -> None:
        """Hand back rows that stopped or reached max_new_tokens. As many of their places as the
        queue can fill stay in the cache for the next admission (the run loop admits at once); the
        rest are dropped from it."""
        finished, ahead = [], 0
        for index, row in enumerate(self.rows):
            if row is None:
                continue
            stopped = row.tokens[-1] in self.stop_ids
            if stopped or len(row.tokens) >= self.settings.max_new_tokens:
                waiting = len(self.queue)
                row.reported = True  # an error from here on must not queue it again (see run)
                self.on_finished(row.job, row.tokens, stopped)  # may queue the next turn
                # Next turns go first (after those of rows before), so each is admitted while its
                # previous turn's keys and values are kept; moved before the copy, which may fail.
                follow_ups = [self.queue.pop() for _ in range(len(self.queue) - waiting)][::-1]
                for job in follow_ups:
                    self.queue.insert(ahead, job)
                    ahead += 1
                self._keep_for_follow_ups(index, row, follow_ups)
                finished.append(index)
        if not finished:
            return
        places = finished[: len(self.queue)]
        for index in places:
            self.rows[index] = None
        self.mask[places] = 0
        self._remove(finished[len(places) :])

    def _remove(self, indices: list[int]) -> None:
        """Drop batch rows `indices` from the cache (one copy), then the leading columns no row uses
        (no copy: the cache's views start later)."""
        if not any(row is not None for i, row in enumerate(self.rows) if i not in indices):
            self.rows, self.cache, self.mask = [], None, None
            return
        if indices:
            keep = [i for i in range(len(self.rows)) if i not in indices]
            self.rows = [self.rows[i] for i in keep]
            self.mask = self.mask[keep]
            index = torch.tensor(keep, device=self.device)
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[index], layer.values[index]
        drop = int(self.mask.any(dim=0).int().argmax())
        if drop:
            self.mask = self.mask[:, drop:]
            for layer in self.cache.layers:
                layer.drop_leading(drop)

    def _keep_for_follow_ups(self, index: int, row: _Row, follow_ups: list[Job]) -> None:
        """Keep a finished row's keys and values for the jobs of its next turn that begin with them,
        while all that is kept holds no more tokens than the running cache can. The next turn goes to
        the front of the queue (see _retire), so what is kept is taken at the next admission: only
        the samples of a conversation with more jobs than free places wait with theirs."""
        ids = row.job.prompt + row.tokens[:-1]
        kept = sum(len(head.ids) for head in {id(h): h for h in self.continued.values()}.values())
        if kept + len(ids) > self.slots * self.mask.shape[1]:
            return
        head = None
        for job in follow_ups:
            if common_prefix_length([ids, job.prompt[:-1]]) >= MIN_SHARED_TOKENS:
                if head is None:
                    own = self.mask[index].bool().to(self.device)
                    layers = self.cache.layers
                    keys = [layer.keys[index : index + 1][:, :, own] for layer in layers]
                    head = _Head(ids, keys, [layer.values[index : index + 1][:, :, own] for layer in layers])
                self.continued[job.key] = head


def _cache_from_heads(heads: list[tuple[_Head | None, int]], device) -> tuple[GrowingCache, torch.Tensor]:
    """A cache for one prefill group holding each row's head (its first `shared` columns), left-padded
    to the longest, and the matching attention mask [rows, width]; empty when no row has a head."""
    width = max(shared for _, shared in heads)
    mask = torch.zeros((len(heads), width), dtype=torch.long)
    cache = GrowingCache()
    if width == 0:
        return cache, mask
    model_head = next(head for head, _ in heads if head is not None)
    for layer in range(len(model_head.keys)):
        states = []
        for name in ("keys", "values"):
            like = getattr(model_head, name)[layer]
            joined = like.new_zeros((len(heads), like.shape[1], width, like.shape[3]))
            for r, (head, shared) in enumerate(heads):
                if shared:
                    joined[r, :, width - shared :] = getattr(head, name)[layer][0, :, :shared]
            states.append(joined)
        cache.update(*states, layer)
    for r, (_, shared) in enumerate(heads):
        if shared:
            mask[r, width - shared :] = 1
    return cache, mask


def slides(model) -> bool:
    """Whether some layer of `model` attends over a sliding window (Mistral, Phi-3, Gemma's local layers)."""
    config = model.config.get_text_config()
    layer_types = getattr(config, "layer_types", None) or []
    return getattr(config, "sliding_window", None) is not None or "sliding_attention" in layer_types


def draft_tokens_for(model, wanted: int) -> int:
    """The draft tokens a row of `model` is given at most: `wanted`, or 0 where a sliding window
    counts cache columns (see SlotDecoder.__init__)."""
    return 0 if slides(model) else wanted


def _check_cache(cache: GrowingCache, width: int) -> None:
    """Slot refill reshapes plain key/value tensors that hold every prompt token; a model with
    another cache (e.g. a recurrent or quantised one), or one that ran without its cache, cannot be
    batched this way."""
    kinds = sorted({type(layer).__name__ for layer in cache.layers})
    if kinds != [GrowingLayer.__name__] or cache.get_seq_length() != width:
        raise HarnessError(
            f"the hf engine needs a model that fills a plain key/value cache; this one left {kinds or 'none'}"
        )


def _join_rows(parts: list[tuple[GrowingCache, torch.Tensor]]) -> tuple[GrowingCache, torch.Tensor]:
    """One cache and mask holding every row of `parts` in order, each left-padded to the widest; a
    single copy of each layer, however many caches join."""
    if len(parts) == 1:
        return parts[0]
    width = max(mask.shape[1] for _, mask in parts)
    joined = parts[0][0]
    for index, layer in enumerate(joined.layers):
        layer.keys = torch.cat([_left_pad(cache.layers[index].keys, width) for cache, _ in parts])
        layer.values = torch.cat([_left_pad(cache.layers[index].values, width) for cache, _ in parts])
    mask = torch.cat([torch.nn.functional.pad(mask, (width - mask.shape[1], 0)) for _, mask in parts])
    return joined, mask


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
