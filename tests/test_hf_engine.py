"""The transformers engine on a tiny random-weight Llama with the embedded tokenizer."""

from collections import Counter

import pytest

from harness.engines.base import SamplingSettings

CONVS = [
    [{"role": "user", "content": "What is 1+1?"}],
    [{"role": "user", "content": "A much longer question, so that this prompt needs no padding at all " * 3}],
    [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Again"},
    ],
]


@pytest.fixture
def engine(varied_engine):
    return varied_engine


def test_prompt_is_the_tokenizers_chat_template(engine):
    text = engine.render(CONVS[2])
    assert text.count("<|im_start|>user") == 2 and text.count("<|im_start|>assistant") == 2
    assert text.endswith("<|im_start|>assistant\n")


def test_left_padded_batch_gives_the_same_greedy_text_as_one_at_a_time(engine):
    settings = SamplingSettings(max_new_tokens=12)
    batched = [c[0].text for c in engine.chat(CONVS, settings)]
    engine.batch_size = 1
    try:
        single = [c[0].text for c in engine.chat(CONVS, settings)]
    finally:
        engine.batch_size = 8
    assert batched == single


def test_completions_come_back_in_input_order_with_counts(engine):
    settings = SamplingSettings(max_new_tokens=5, n=2, temperature=1.0, seed=3)
    out = engine.chat(CONVS, settings)
    assert [len(c) for c in out] == [2, 2, 2]
    prompt_lengths = [len(engine.tokenizer(engine.render(c), add_special_tokens=False)["input_ids"]) for c in CONVS]
    assert [c[0].prompt_tokens for c in out] == prompt_lengths
    for completions in out:
        for c in completions:
            assert c.finish_reason in ("stop", "length")
            assert 1 <= c.completion_tokens <= 5
            if c.finish_reason == "length":
                assert c.completion_tokens == 5


def test_sampling_is_repeatable_with_a_seed_and_varies_without(engine):
    def texts(seed):
        return [c.text for cs in engine.chat(CONVS, SamplingSettings(12, temperature=1.0, n=2, seed=seed)) for c in cs]

    assert texts(1) == texts(1)
    assert texts(1) != texts(2)


def test_each_conversation_is_reported_done_once_with_all_its_completions(engine):
    seen = []
    out = engine.chat(CONVS, SamplingSettings(2, n=2), on_done=lambda i, cs: seen.append((i, list(cs))))
    assert sorted(i for i, _ in seen) == [0, 1, 2]
    assert all(cs == out[i] and len(cs) == 2 for i, cs in seen)


def test_prompt_longer_than_the_context_is_not_generated(engine, monkeypatch):
    from harness.engines.base import PROMPT_TOO_LONG

    short, long = CONVS[0], [{"role": "user", "content": "word " * 300}]
    monkeypatch.setattr(engine.model.config, "max_position_embeddings", 100)
    out = engine.chat([short, long], SamplingSettings(4))
    assert out[0][0].finish_reason != PROMPT_TOO_LONG
    assert out[1][0].finish_reason == PROMPT_TOO_LONG and out[1][0].text == ""


# Prompts of many lengths, so rows in flight have different widths and refills pad either side.
MANY = [[{"role": "user", "content": "Tell me about the number " + "seven " * k}] for k in (0, 9, 2, 30, 5, 17, 1, 12)]


def static_batch_token_ids(engine, convs, max_new_tokens, batch_size):
    """The previous hf engine's algorithm, as the reference: longest prompts first, static batches
    of `batch_size` through `model.generate` (greedy, left padding), each row cut after its first
    stop token."""
    import torch

    prompts = [engine.tokenizer(engine.render(c), add_special_tokens=False)["input_ids"] for c in convs]
    order = sorted(range(len(convs)), key=lambda i: -len(prompts[i]))
    out = [None] * len(convs)
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        padded = engine.tokenizer.pad({"input_ids": [prompts[i] for i in batch]}, return_tensors="pt")
        with torch.inference_mode():
            generated = engine.model.generate(
                **padded,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=sorted(engine.stop_ids),
                pad_token_id=engine.tokenizer.pad_token_id,
            )
        for i, row in zip(batch, generated[:, padded["input_ids"].shape[1] :].tolist()):
            end = next((j for j, t in enumerate(row) if t in engine.stop_ids), None)
            out[i] = (tuple(prompts[i]), tuple(row if end is None else row[: end + 1]))
    return out


@pytest.fixture
def stops_early(engine):
    """Stop tokens that this random model emits at different steps, so rows finish at different times."""
    free = engine.chat(MANY, SamplingSettings(max_new_tokens=10))
    saved = engine.stop_ids
    # The tokens a few rows emit at steps 3, 5 and 8 become stop tokens.
    engine.stop_ids = saved | {free[1][0].token_ids[2], free[3][0].token_ids[4], free[6][0].token_ids[7]}
    yield engine
    engine.stop_ids = saved


@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_slot_refill_gives_the_same_greedy_tokens_as_static_batches(stops_early, batch_size, monkeypatch):
    from harness.engines.slots import SlotDecoder

    engine = stops_early
    expected = static_batch_token_ids(engine, MANY, max_new_tokens=10, batch_size=batch_size)
    real_fill, filled = SlotDecoder._fill_places, []

    def fill_places(self, rows, *args):  # records the groups written into finished rows' places
        done = real_fill(self, rows, *args)
        filled.extend([len(rows)] if done else [])
        return done

    monkeypatch.setattr(SlotDecoder, "_fill_places", fill_places)
    engine.batch_size = batch_size
    try:
        out = engine.chat(MANY, SamplingSettings(max_new_tokens=10))
    finally:
        engine.batch_size = 8
    got = [(c[0].prompt_token_ids, c[0].token_ids) for c in out]
    assert got == expected
    # With 3 slots, rows finish while prompts wait, and some new rows take their places in the
    # cache (the rest, wider than the cache, are joined to it); 1 slot empties the cache each time,
    # and 8 slots take every prompt at once.
    assert (sum(filled) > 0) == (batch_size == 3)
    reasons = [c[0].finish_reason for c in out]
    assert "stop" in reasons and "length" in reasons  # rows did finish at different times
    assert len({c[0].completion_tokens for c in out}) >= 3
    for c, (prompt, tokens) in zip((c[0] for c in out), expected):
        assert c.completion_tokens == len(tokens) and c.prompt_tokens == len(prompt)
        assert c.finish_reason == ("stop" if tokens[-1] in engine.stop_ids else "length")
        assert c.text == engine.tokenizer.decode(tokens[:-1] if c.finish_reason == "stop" else tokens)


def test_one_new_token_finishes_every_row_at_its_prefill(engine):
    out = engine.chat(MANY, SamplingSettings(max_new_tokens=1))
    expected = static_batch_token_ids(engine, MANY, max_new_tokens=1, batch_size=8)
    assert [(c[0].prompt_token_ids, c[0].token_ids) for c in out] == expected
    assert {c[0].completion_tokens for c in out} == {1}


def test_a_conversation_samples_the_same_tokens_alone_and_in_any_batch(engine):
    settings = SamplingSettings(max_new_tokens=8, temperature=1.0, top_p=0.9, n=2)
    seeds = [100 + i for i in range(len(MANY))]

    def token_ids(convs, conv_seeds, batch_size):
        engine.batch_size = batch_size
        try:
            return [[c.token_ids for c in cs] for cs in engine.chat(convs, settings, seeds=conv_seeds)]
        finally:
            engine.batch_size = 8

    alone = token_ids([MANY[3]], [seeds[3]], 1)[0]
    assert alone[0] != alone[1]  # the two samples of one conversation draw different streams
    assert token_ids(MANY, seeds, 3)[3] == alone
    assert token_ids(MANY[::-1], seeds[::-1], 5)[len(MANY) - 4] == alone
    assert token_ids(MANY, [seeds[3] + 1 if i == 3 else s for i, s in enumerate(seeds)], 3)[3] != alone


def test_top_p_near_zero_samples_the_greedy_tokens(engine):
    greedy = engine.chat(MANY, SamplingSettings(max_new_tokens=6))
    narrow = engine.chat(MANY, SamplingSettings(max_new_tokens=6, temperature=1.0, top_p=1e-6))
    assert [c[0].token_ids for c in narrow] == [c[0].token_ids for c in greedy]


def test_prefill_groups_keep_every_row_at_least_four_fifths_prompt():
    from harness.engines.slots import prefill_groups

    # Longest first: 501 alone (362 < 0.8 * 501 = 400.8); 362 and 309 (>= 289.6); 251 and 218
    # (>= 200.8); 176 alone. Indices point into the given list.
    assert prefill_groups([176, 501, 309, 362, 218, 251]) == [[1], [3, 2], [5, 4], [0]]
    assert prefill_groups([40, 40, 40]) == [[0, 1, 2]]
    assert prefill_groups([10]) == [[0]]


# One admission of prompts from a few tokens to several hundred: split into several prefills.
SPREAD = [[{"role": "user", "content": "Count: " + "seven " * k}] for k in (0, 150, 3, 60, 61, 20, 150, 1)]


def record_forwards(engine, monkeypatch) -> list[tuple[int, int]]:
    """The (rows, width) of every input the model is given from now on, but decode steps that check
    drafts (several tokens a row, a logit kept for each): prefills, and decode steps of one token a row."""
    import functools

    real, shapes = engine.model.forward, []

    @functools.wraps(real)
    def forward(*args, **kwargs):
        if kwargs["logits_to_keep"] == 1:
            shapes.append(tuple(kwargs["input_ids"].shape))
        return real(*args, **kwargs)

    monkeypatch.setattr(engine.model, "forward", forward)
    return shapes


def test_one_admission_of_very_different_prompts_prefills_in_groups_with_the_same_greedy_tokens(engine, monkeypatch):
    from harness.engines.slots import MIN_SHARED_TOKENS

    expected = static_batch_token_ids(engine, SPREAD, max_new_tokens=6, batch_size=8)
    shapes = record_forwards(engine, monkeypatch)
    out = engine.chat(SPREAD, SamplingSettings(max_new_tokens=6))
    assert [(c[0].prompt_token_ids, c[0].token_ids) for c in out] == expected
    # First the start all prompts share (the chat template's system prompt and "Count:"), computed
    # once; then the rest of each prompt in groups of similar length; then every row decodes together.
    head, *prefills = [rows for rows, width in shapes if width > 1]
    assert head == 1 and shapes[0][1] >= MIN_SHARED_TOKENS
    # One admission, several prefills; the two identical prompts are computed once.
    assert len(prefills) >= 3 and sum(prefills) == len({c[0]["content"] for c in SPREAD}) == len(SPREAD) - 1
    assert shapes[1 + len(prefills)] == (len(SPREAD), 1)


def test_a_shared_prompt_start_is_computed_once_and_reused_by_later_admissions(engine, monkeypatch):
    from harness.engines.slots import common_prefix_length

    expected = static_batch_token_ids(engine, MANY, max_new_tokens=5, batch_size=8)
    prompts = [engine.encode(c) for c in MANY]
    first = sorted(prompts, key=len)[-3:]  # the first admission: the three longest prompts
    head = first[0][: common_prefix_length([p[:-1] for p in first])]  # system prompt, "... number seven" x12
    engine.batch_size = 3
    try:
        shapes = record_forwards(engine, monkeypatch)
        out = engine.chat(MANY, SamplingSettings(max_new_tokens=5))
    finally:
        engine.batch_size = 8
    assert [(c[0].prompt_token_ids, c[0].token_ids) for c in out] == expected
    prefills = [shape for shape in shapes if shape[1] > 1]
    assert prefills[0] == (1, len(head))  # the shared start, once
    # Every other prefill (the first admission's and each refill's) computes only what follows the
    # part of that start the prompt shares.
    suffixes = {len(p) - common_prefix_length([head, p[:-1]]) for p in prompts}
    assert all(width in suffixes for _, width in prefills[1:])
    assert sum(rows for rows, _ in prefills[1:]) == len(MANY)


@pytest.mark.parametrize("batch_size", [8, 1])
def test_a_follow_up_prefills_only_what_follows_its_previous_turn(engine, monkeypatch, batch_size):
    """The keys and values of a finished turn (its prompt and answer) are reused by the next turn,
    which then gives the tokens a fresh call on the same conversation gives. A follow-up goes to the
    front of the queue: with one row, each is admitted right after its own first turn, ahead of the
    first turns still waiting, and continues it (queued behind them, as before, only the first
    follow-up found its turn kept: what is kept is capped at the running cache's size)."""
    from harness.engines.slots import common_prefix_length, prefill_groups

    settings = SamplingSettings(max_new_tokens=6)
    follow_ups = []  # in the order they were queued, which is their index in the call's results

    def on_done(index, completions):
        if index >= 3:  # a follow-up's own answer
            return None
        again = [{"role": "assistant", "content": completions[0].text}, {"role": "user", "content": "Check it."}]
        follow_ups.append((index, MANY[index] + again))
        return follow_ups[-1][1], 0

    shapes = record_forwards(engine, monkeypatch)
    monkeypatch.setattr(engine, "batch_size", batch_size)
    out = engine.chat_with_follow_ups(MANY[:3], settings, on_done, [0, 0, 0])
    prefills = [width for _, width in shapes if width > 1]
    assert len(out) == 6
    fresh = engine.chat([conversation for _, conversation in follow_ups], settings)
    assert [c[0].token_ids for c in out[3:]] == [c[0].token_ids for c in fresh]
    suffixes = []  # each follow-up's prompt less what its previous turn left in the cache
    for (index, _), second in zip(follow_ups, out[3:]):
        first = out[index][0]
        previous = list(first.prompt_token_ids + first.token_ids[:-1])  # what the cache held
        follow = list(second[0].prompt_token_ids)
        kept = common_prefix_length([previous, follow[:-1]])
        assert kept > len(first.prompt_token_ids)  # the answer's tokens too, not just the prompt
        suffixes.append(len(follow) - kept)
    if batch_size == 8:  # admitted together, the follow-ups prefill from where their turns left off
        groups = prefill_groups(suffixes)
        assert prefills[-len(groups) :] == [suffixes[group[0]] for group in groups]
    else:  # one row at a time: each first turn's whole prompt, then its follow-up's suffix
        expected = []
        for (index, _), suffix in zip(follow_ups, suffixes):
            expected += [out[index][0].prompt_tokens, suffix]
        assert prefills == expected


def test_growing_layer_holds_what_a_dynamic_layer_holds_and_appends_in_place():
    import torch
    from transformers.cache_utils import DynamicLayer

    from harness.engines.kv_cache import ROOM, GrowingLayer

    growing, dynamic = GrowingLayer(), DynamicLayer()

    def both(step):
        for layer in (growing, dynamic):
            step(layer)
        assert torch.equal(growing.keys, dynamic.keys) and torch.equal(growing.values, dynamic.values)

    torch.manual_seed(0)
    prefill = torch.randn(3, 2, 5, 4), torch.randn(3, 2, 5, 4)
    both(lambda layer: layer.update(*prefill))
    buffer = growing.keys.data_ptr()
    for _ in range(ROOM):  # decode steps within the room: written in place, no new buffer
        token = torch.randn(3, 2, 1, 4), torch.randn(3, 2, 1, 4)
        both(lambda layer, token=token: layer.update(*token))
    assert growing.keys.data_ptr() == buffer and growing.get_seq_length() == 5 + ROOM

    def keep_rows_0_and_2_drop_3_columns(layer):  # as the slot decoder does when a row leaves
        index = torch.tensor([0, 2])
        layer.keys = layer.keys[index, :, 3:]
        layer.values = layer.values[index, :, 3:]

    both(keep_rows_0_and_2_drop_3_columns)
    token = torch.randn(2, 2, 1, 4), torch.randn(2, 2, 1, 4)
    both(lambda layer: layer.update(*token))
    assert growing.get_seq_length() == 5 + ROOM - 3 + 1

    # A finished row's place taken by a new row of 4 columns (right-aligned, zeros before), and 2
    # leading columns dropped: in place in the GrowingLayer, by copies in the DynamicLayer.
    buffer = growing._buffers["keys"].data_ptr()
    new = torch.randn(1, 2, 4, 4), torch.randn(1, 2, 4, 4)
    growing.write_rows(torch.tensor([1]), *new)
    for name, states in zip(("keys", "values"), new):
        held = getattr(dynamic, name).clone()
        held[1] = 0
        held[1, :, -4:] = states[0]
        setattr(dynamic, name, held)
    growing.drop_leading(2)
    dynamic.keys, dynamic.values = dynamic.keys[:, :, 2:], dynamic.values[:, :, 2:]
    assert torch.equal(growing.keys, dynamic.keys) and torch.equal(growing.values, dynamic.values)
    assert growing._buffers["keys"].data_ptr() == buffer
    for _ in range(ROOM + 2):  # past the room: a new buffer holding the kept columns only
        token = torch.randn(2, 2, 1, 4), torch.randn(2, 2, 1, 4)
        both(lambda layer, token=token: layer.update(*token))
    assert growing._buffers["keys"].data_ptr() != buffer
    assert growing.get_seq_length() == 5 + ROOM - 3 + 1 - 2 + ROOM + 2


def test_the_samples_of_a_conversation_prefill_its_prompt_once(engine, monkeypatch):
    shapes = record_forwards(engine, monkeypatch)
    out = engine.chat(MANY[:2], SamplingSettings(max_new_tokens=4, temperature=1.0, n=4, seed=1))
    prefills = [rows for rows, width in shapes if width > 1]
    assert prefills[0] == 1  # the start both prompts share, once
    assert sum(prefills[1:]) == 2  # then each prompt's rest once, not once per sample
    assert shapes[len(prefills)] == (8, 1)  # all 8 samples decode
    assert all(len({c.token_ids for c in completions}) > 1 for completions in out)  # each its own stream


# Finished rows' places filled in place (slots._fill_places): cases found in review.
# Queued longest first. With 3 slots, the first row stops early (see the test) and the 4th prompt
# takes its place; the 2nd and 3rd end together at max_new_tokens, so the 5th and 6th are admitted
# together, and their suffixes (after the shared start) are far apart in length: two prefill groups.
# (The 5th does not start like the first three, so the start they share does not shorten its suffix.)
PLACES_PROMPTS = [
    [{"role": "user", "content": "Tell me about the number " + words}]
    for words in ("seven " * 30, "seven " * 17, "seven " * 12, "seven " * 9, "eight " * 8, "")
]


@pytest.mark.parametrize("sampled", [False, True])
def test_memory_running_out_after_a_group_took_finished_places_loses_and_repeats_nothing(
    varied_engine, monkeypatch, sampled
):
    """A prefilled group written into finished rows' places is in `rows` while its jobs are still in
    `admitting`; memory running out later in the same admission (the next group's prefill) must
    put each job back once, not twice. Sampled: 2 samples per conversation, each conversation
    reported done once, with both its completions, and the tokens of a run that never ran out."""
    import torch

    from harness.engines import jobs, slots

    engine = varied_engine
    free = engine.chat(PLACES_PROMPTS, SamplingSettings(max_new_tokens=8))
    # The first prompt's third greedy token becomes a stop token (no other row emits it early).
    monkeypatch.setattr(engine, "stop_ids", engine.stop_ids | {free[0][0].token_ids[2]})
    settings = SamplingSettings(max_new_tokens=8, n=2, temperature=0.01, seed=3) if sampled else SamplingSettings(8)
    expected = [[c.token_ids for c in cs] for cs in engine.chat(PLACES_PROMPTS, settings)]

    reports, real_finished = Counter(), jobs.JobQueue.finished
    real_admit, real_fill, real_forward = (
        slots.SlotDecoder._admit,
        slots.SlotDecoder._fill_places,
        slots.SlotDecoder._forward,
    )
    state = {}

    def finished(self, job, tokens, stopped):
        reports[job.key] += 1
        real_finished(self, job, tokens, stopped)

    def admit(self):
        state["filled"] = False
        try:
            real_admit(self)
        finally:
            state["filled"] = False

    def fill_places(self, rows, *args):
        done = real_fill(self, rows, *args)
        state["filled"] = state["filled"] or done  # this admission has put rows in places
        return done

    def forward(self, *args, **kwargs):
        if state.get("filled") and "raised" not in state:
            state["raised"] = True  # memory runs out once: the same admission's next prefill
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_forward(self, *args, **kwargs)

    monkeypatch.setattr(jobs.JobQueue, "finished", finished)
    monkeypatch.setattr(slots.SlotDecoder, "_admit", admit)
    monkeypatch.setattr(slots.SlotDecoder, "_fill_places", fill_places)
    monkeypatch.setattr(slots.SlotDecoder, "_forward", forward)
    monkeypatch.setattr(engine, "auto_batch", True)
    monkeypatch.setattr(engine, "batch_size", 3)
    done = []
    out = engine.chat(PLACES_PROMPTS, settings, on_done=lambda i, cs: done.append((i, [c is not None for c in cs])))
    assert state.get("raised"), "scenario not reached: no admission filled places and prefilled again"
    assert engine.batch_size == 1
    assert sorted(done) == [(i, [True] * settings.n) for i in range(len(PLACES_PROMPTS))]
    assert sorted(reports) == list(range(len(PLACES_PROMPTS) * settings.n)) and set(reports.values()) == {1}, reports
    assert [[c.token_ids for c in cs] for cs in out] == expected


def test_a_next_turn_wider_than_the_running_cache_is_joined_to_it_though_places_are_free(varied_engine, monkeypatch):
    """Next turns (prompt, answer and correction prompt) are wider than the rows still on the first
    turn; when finished rows leave enough places, the group must still be joined (write_rows cannot
    fit it), and every turn's greedy tokens are those of one row at a time. (Found in review: no
    other test meets a group wider than the cache with enough places.)"""
    from harness.engines import slots

    engine = varied_engine
    convs = [[{"role": "user", "content": "Tell me about the number " + words}] for words in PLACES_WORDS]

    def k_turns(turns):
        meta = {i: (i, 0, conv) for i, conv in enumerate(convs)}

        def on_done(index, completions):
            first, turn, conv = meta[index]
            if turn + 1 >= turns:
                return None
            conv = conv + [{"role": "assistant", "content": completions[0].text}, {"role": "user", "content": "Again."}]
            meta[len(meta)] = (first, turn + 1, conv)
            return conv, 0

        out = engine.chat_with_follow_ups(convs, SamplingSettings(max_new_tokens=6), on_done, [0] * len(convs))
        return sorted((meta[i][:2], [c.token_ids for c in cs]) for i, cs in enumerate(out))

    free = engine.chat(convs[:1], SamplingSettings(max_new_tokens=6))
    # The first prompt's third greedy token becomes a stop token: rows finish at different steps.
    monkeypatch.setattr(engine, "stop_ids", engine.stop_ids | {free[0][0].token_ids[2]})
    monkeypatch.setattr(engine, "batch_size", 1)
    expected = k_turns(3)
    real_fill, wider = slots.SlotDecoder._fill_places, []

    def fill_places(self, rows, cache, mask):
        places = sum(row is None for row in self.rows)
        wider.extend([1] if places >= len(rows) and mask.shape[1] > self.mask.shape[1] else [])
        return real_fill(self, rows, cache, mask)

    monkeypatch.setattr(slots.SlotDecoder, "_fill_places", fill_places)
    monkeypatch.setattr(engine, "batch_size", 2)
    assert k_turns(3) == expected
    assert wider, "scenario not reached: no group wider than the cache found enough places"


PLACES_WORDS = ["seven " * 30, "seven " * 17, "seven " * 12, "seven " * 9, "eight " * 8, "", "nine " * 3, "seven " * 2]
PLACES_WORDS += ["ten " * 20, "x"]


@pytest.mark.parametrize("batch_size", [3, 8])
def test_a_sliding_window_model_gives_each_prompt_the_tokens_it_gets_alone(tiny_model_dir, batch_size):
    """A sliding window (Mistral's; 12 tokens here, shorter than every row) is counted in cache
    columns, so a row's tokens must lie side by side in the cache. Prompts of different lengths
    with a shared start, prefilled in one group, got other tokens than alone (found in review): the
    padding between the shared start and a shorter prompt's rest took room in its window."""
    from tests.test_drafts_redteam import sliding_window_engine, token_ids

    engine = sliding_window_engine(tiny_model_dir)
    settings = SamplingSettings(max_new_tokens=20)
    engine.batch_size = 1  # one prompt at a time, each prefilled whole
    alone = token_ids(engine.chat(MANY, settings))
    engine.batch_size = batch_size  # 3: refills written into finished rows' places or joined
    assert token_ids(engine.chat(MANY, settings)) == alone


@pytest.mark.parametrize("batch_size", [3, 8])
def test_a_sliding_window_model_continues_kept_turns_with_the_tokens_of_whole_prompts(tiny_model_dir, batch_size):
    """Three turns on a sliding-window model (Mistral's, 12 tokens): a next turn continues the keys
    and values its previous turn left (one contiguous run of the row's own columns, placed after a
    head's left padding, never inside the row) and gets the tokens that one `chat` call per turn
    gets at batch size 1, where every turn's prompt is computed again."""
    from tests.test_drafts_redteam import REPEATS, k_turn_token_ids, sliding_window_engine

    engine = sliding_window_engine(tiny_model_dir)
    settings = SamplingSettings(max_new_tokens=20)
    engine.batch_size = 1
    expected, convs = [], [(i, conv) for i, conv in enumerate(REPEATS)]
    for turn in range(3):
        out = engine.chat([conv for _, conv in convs], settings)
        expected += [((i, turn), [c.token_ids for c in cs]) for (i, _), cs in zip(convs, out)]
        texts = [cs[0].text for cs in out]
        convs = [
            (i, conv + [{"role": "assistant", "content": text}, {"role": "user", "content": "Again: " + text}])
            for (i, conv), text in zip(convs, texts)
        ]
    engine.batch_size = batch_size
    assert k_turn_token_ids(engine, settings) == sorted(expected)
