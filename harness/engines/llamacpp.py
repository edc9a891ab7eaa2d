"""llama.cpp backend: many conversations decoded together over a GGUF file, in this process.

llama-cpp-python's low-level API drives one llama.cpp context with `parallel` sequences. Each
sequence (slot) has a key/value stream of its own (`kv_unified` off), so a token attends only to
its own sequence's cells, and every decode step is one `llama_decode` call carrying the next token
of every busy slot. A finished slot takes the next waiting completion at once (continuous batching);
its prompt is computed alone first (see UBATCH), except for the leading tokens it shares with the
prompt the slot ran before, whose keys and values the slot keeps (see MIN_PIECE and _decode: the
chat template and a task's instruction, and a conversation's whole previous turn, which is why a
next turn takes its own turn's slot). llama.cpp splits a call into "ubatches" of
consecutive sequence ids only (a sequence after a gap is computed apart, as a lone token: see _run),
so free slots are filled lowest first and, once nothing waits, the last busy slot moves into the
lowest free one (a copy of its KV stream): the busy slots stay one consecutive run from slot 0.

Prompts are the GGUF's own chat template rendered as the hf engine renders it, tokenised by
llama.cpp; tokens are chosen by harness.engines.sampling, so greedy decoding is the argmax and a
sampled completion draws from its own seeded stream whatever shares its batch. Completions stop
at llama.cpp's end-of-generation tokens. llama-cpp-python is an optional extra
(`pip install 'score-eval[llamacpp]'`), imported only when this backend is chosen. The embedded
default runs as a float32 copy of its GGUF (see float32_copy); as a trainer's rollout engine it
runs a private copy that takes the policy's weights after every step (for_training, load_weights).
A conversation's next turn joins the queue as soon as its turn is back (base.FollowUpEngine,
engines/jobs.py), and goes straight into the slot its turn left.
"""

from __future__ import annotations

import ctypes
import logging
import os
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.engines.base import (
    ChatThroughFollowUps,
    Completion,
    Conversation,
    FollowUp,
    SamplingSettings,
    common_prefix_length,
)
from harness.errors import HarnessError

if TYPE_CHECKING:  # torch is imported only when the engine generates
    from harness.engines.sampling import Finished, Job

INSTALL = "pip install 'score-eval[llamacpp]'"
# A prompt is computed alone, in pieces of at most UBATCH tokens (llama-cpp-python's own `Llama`
# computes in pieces of n_batch 512), not in the calls that carry other slots' decode steps.
UBATCH = 512
# llama.cpp computes a token of a call of MIN_PIECE tokens or more by the same arithmetic, whatever
# the call's size and where it starts; under that size by other arithmetic. Measured on this build,
# on the float32 copy and on the Q4_1 file: a 509-token prompt cut anywhere into pieces of 64 or
# more gave logits bit for bit equal to the prompt computed whole; with a last piece of 2 to 63
# tokens they were up to 0.07 away (float32) and 0.9 away (Q4_1). So a prompt's keys and values
# computed in pieces of 64+ tokens are the ones any other such cut computes, and a later prompt that
# starts with the same ids can keep them and compute only the rest, as long as the rest is 64+
# tokens too: its tokens are then exactly what a fresh computation gives (tested).
MIN_PIECE = 64
# Prompts are cut only at multiples of ROWS. llama.cpp multiplies repacked weights (Q4_K on x86, in
# a Q4_K_M file) four rows of a call at a time from the call's start, and the last len % 4 rows one
# by one, by other arithmetic: on a Q4_K_M copy of the embedded model a cut inside a group of four
# changed the logits by up to 0.9, at 35 of the 74 places a 201-token prompt can be cut into two
# pieces of 64+ (found in review). Cut at multiples of four, every row is in the same group of four,
# or among the last rows, as in the prompt computed whole, so a slot keeps only tokens its own
# computation multiplied in groups of four (see reusable).
ROWS = 4


def import_llama_cpp():
    """The llama_cpp module, or one clear error saying how to get it (callers check before slow work)."""
    try:
        import llama_cpp
    except (ImportError, OSError) as exc:
        raise HarnessError(
            f"the llamacpp backend needs llama-cpp-python, which is not installed ({exc}); run `{INSTALL}` "
            "(it compiles llama.cpp, about 11 minutes on 2 cores), or use --backend hf"
        ) from exc
    # llama.cpp reports through this logger's level; keep its load and conversion chatter off the screen.
    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
    return llama_cpp


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@dataclass
class _Row:
    """A job in a slot and the tokens it has sampled; its KV stream holds the prompt and all but the last."""

    job: Job
    tokens: list[int] = field(default_factory=list)


class LlamaCppEngine(ChatThroughFollowUps):
    name = "llamacpp"

    def __init__(self, lib, path: Path, model_name: str, parallel: int = 16, n_ctx: int = 4096, threads: int = 0):
        """`parallel` sequences of up to `n_ctx` tokens each (prompt and completion), on `threads`
        threads (0: every core this process may use)."""
        self.lib, self.model_name, self.model_path = lib, model_name, path
        self.parallel, self.n_ctx = parallel, n_ctx
        self.threads = threads or available_cores()
        limit = lib.llama_max_parallel_sequences() - 1  # one is the spare
        if not 1 <= parallel <= limit:
            raise HarnessError(f"--parallel must be between 1 and {limit} (got {parallel})")
        lib.llama_backend_init()
        self._model = lib.llama_model_load_from_file(str(path).encode(), lib.llama_model_default_params())
        if not self._model:
            raise HarnessError(
                f"llama.cpp could not load {path}; check that it is a GGUF file, or pass another --model"
            )
        # What this engine must free, in order of creation; freed in reverse when it is collected.
        self._owned: list[tuple[Callable, Any]] = [(lib.llama_model_free, self._model)]
        weakref.finalize(self, _release, self._owned)
        self.vocab = lib.llama_model_get_vocab(self._model)
        self.n_vocab = lib.llama_vocab_n_tokens(self.vocab)
        trained = lib.llama_model_n_ctx_train(self._model)
        if not 1 <= n_ctx <= trained:
            raise HarnessError(f"--n-ctx must be between 1 and the model's context, {trained} (got {n_ctx})")
        params = lib.llama_context_default_params()
        # One sequence more than the slots: the spare, which keeps lone tokens company (see _run).
        params.n_ctx = n_ctx * (parallel + 1)
        params.n_seq_max = parallel + 1
        params.kv_unified = False
        params.n_batch = params.n_ubatch = max(UBATCH, parallel + 1)  # + 1: a lone token's companion
        params.n_threads = params.n_threads_batch = self.threads
        # Flash attention: on 2 CPU cores it measured 1.3x faster than without at 16 sequences (and the same alone).
        params.flash_attn_type = lib.LLAMA_FLASH_ATTN_TYPE_ENABLED
        params.no_perf = True
        self._ctx = lib.llama_init_from_model(self._model, params)
        if not self._ctx:
            raise HarnessError(
                f"llama.cpp could not make a context of {parallel} x {n_ctx} tokens (out of memory?); "
                "lower --parallel or --n-ctx"
            )
        self._owned.append((lib.llama_free, self._ctx))
        self._memory = lib.llama_get_memory(self._ctx)
        self._batch = lib.llama_batch_init(max(UBATCH, parallel + 1), 0, 1)
        self._owned.append((lib.llama_batch_free, self._batch))
        # Ids that end a completion; a benchmark empties the set to keep every row busy.
        self.stop_ids = {t for t in range(self.n_vocab) if lib.llama_vocab_is_eog(self.vocab, t)}
        self._formatter = self._chat_formatter()
        self._tensors: dict[str, Any] | None = None  # the file's tensors, writable (load_weights)
        self._reuses_prompts: bool | None = None  # measured on first use (reuses_prompts)

    @classmethod
    def from_model(cls, model: str | None, parallel: int = 16, n_ctx: int = 4096, threads: int = 0) -> LlamaCppEngine:
        lib = import_llama_cpp()
        from harness.models import resolve_gguf

        display, path = resolve_gguf(model)
        if model is None:
            path = float32_copy(lib, path)
        return cls(lib, path, display, parallel=parallel, n_ctx=n_ctx, threads=threads)

    @classmethod
    def for_training(cls, parallel: int = 16, n_ctx: int = 2048, threads: int = 0) -> LlamaCppEngine:
        """An engine on a private copy of the embedded model's float32 GGUF, whose weights
        `load_weights` overwrites (a trainer's rollouts); the copy is deleted with the engine."""
        import shutil
        import tempfile

        lib = import_llama_cpp()
        from harness.models import DEFAULT_MODEL_NAME, embedded_gguf

        handle, name = tempfile.mkstemp(prefix="score-eval-rollouts-", suffix=".gguf")
        os.close(handle)
        path = Path(name)
        shutil.copyfile(float32_copy(lib, embedded_gguf()), path)
        engine = cls(lib, path, DEFAULT_MODEL_NAME, parallel=parallel, n_ctx=n_ctx, threads=threads)
        weakref.finalize(engine, path.unlink, missing_ok=True)
        return engine

    def load_weights(self, weights: Iterable[tuple[str, Any]]) -> None:
        """Write (Hugging Face parameter name, tensor) pairs of a Llama model into this engine's
        float32 GGUF file, in place, as a trainer does after every optimizer step. llama.cpp maps
        the file shared and computes float32 tensors where they lie, so the next call generates
        with the new weights, with no reload (measured: a layer zeroed in the file changed the
        running engine's output, equal to a fresh load). Use it on a file of its own only
        (for_training): it changes the file."""
        import numpy as np
        from gguf import GGUFReader

        if self._tensors is None:
            self._tensors = {t.name: t for t in GGUFReader(self.model_path, "r+").tensors}
        heads = {
            "attn_q": self.lib.llama_model_n_head(self._model),
            "attn_k": self.lib.llama_model_n_head_kv(self._model),
        }
        for name, tensor in weights:
            target = self._tensors.get(gguf_tensor_name(name))
            if target is None:
                continue  # lm_head.weight of a model whose output layer is its embedding (tied)
            if target.tensor_type.name != "F32":
                raise HarnessError(f"llamacpp rollouts need a float32 GGUF; {target.name} is {target.tensor_type.name}")
            values = tensor.detach().to("cpu", copy=True).float().numpy()
            kind = target.name.split(".")[-2]
            if kind in heads:
                values = _rotary_rows(values, heads[kind])
            np.copyto(target.data, values.reshape(target.data.shape))

    def describe(self) -> dict:
        import llama_cpp

        return {
            "backend": self.name,
            "model": self.model_name,
            "model_path": str(self.model_path),
            "parallel": self.parallel,
            "n_ctx": self.n_ctx,
            "threads": self.threads,
            "keeps_prompt_tokens": self.reuses_prompts(),
            "llama_cpp_python": llama_cpp.__version__,
        }

    def _chat_formatter(self):
        """The GGUF's chat template, rendered with the settings transformers uses (as the hf engine does)."""
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        from harness.engines.hf import PLAIN_CHAT_TEMPLATE

        template = self.lib.llama_model_chat_template(self._model, None)
        if not template:
            logging.getLogger("score_eval").warning(
                "%s has no chat template; using a plain 'Role: text' template", self.model_name
            )
        special = {}
        for name, token in (("bos_token", self.lib.llama_vocab_bos), ("eos_token", self.lib.llama_vocab_eos)):
            tid = token(self.vocab)
            special[name] = self.lib.llama_vocab_get_text(self.vocab, tid).decode() if tid >= 0 else ""
        return Jinja2ChatFormatter(template.decode() if template else PLAIN_CHAT_TEMPLATE, **special)

    def render(self, conversation: Conversation) -> str:
        """The exact prompt text the model sees for a conversation."""
        return self._formatter(messages=list(conversation)).prompt

    def tokenize(self, text: str) -> list[int]:
        """Token ids of `text`, special tokens parsed, nothing added (the hf engine's add_special_tokens=False)."""
        data = text.encode()
        size = len(data) + 1
        while True:
            ids = (self.lib.llama_token * size)()
            n = self.lib.llama_tokenize(self.vocab, data, len(data), ids, size, False, True)
            if n >= 0:
                return list(ids[:n])
            size = -n

    def encode(self, conversation: Conversation) -> list[int]:
        """The prompt ids the model is given for a conversation."""
        return self.tokenize(self.render(conversation))

    def detokenize(self, ids: Sequence[int]) -> str:
        """Text of `ids`, special tokens left out (as the hf engine's skip_special_tokens=True)."""
        tokens = (self.lib.llama_token * len(ids))(*ids)
        size = 8 * len(ids) + 16
        while True:
            text = ctypes.create_string_buffer(size)
            n = self.lib.llama_detokenize(self.vocab, tokens, len(ids), text, size, False, False)
            if n >= 0:
                return text.raw[:n].decode("utf-8", errors="replace")
            size = -n

    def chat_with_follow_ups(
        self,
        conversations: Sequence[Conversation],
        settings: SamplingSettings,
        on_done: FollowUp | None,
        seeds: Sequence[int],
    ) -> list[list[Completion]]:
        """See base.FollowUpEngine: follow-ups join the queue the slots refill from as they come."""
        from harness.engines.jobs import JobQueue

        jobs = JobQueue(settings, self.encode, self._completion, self.n_ctx, on_done)
        jobs.add(conversations, seeds)
        self._decode(jobs.queue, settings, jobs.finished)
        return jobs.results

    def _completion(self, prompt: list[int], tokens: list[int], stopped: bool) -> Completion:
        return Completion(
            text=self.detokenize(tokens[:-1] if stopped else tokens),
            prompt_tokens=len(prompt),
            completion_tokens=len(tokens),
            finish_reason="stop" if stopped else "length",
            token_ids=tuple(tokens),
            prompt_token_ids=tuple(prompt),
        )

    def _decode(self, queue: deque[Job], settings: SamplingSettings, on_finished: Finished) -> None:
        """Generate every queued job with at most `parallel` in flight, slot s holding sequence s.

        A slot's stream keeps the prompt of the job it last ran (see MIN_PIECE): the next job in
        that slot keeps the leading keys and values it shares with it (the chat template and the
        task's instruction, 90 of a MATH prompt's ~176 tokens) and computes only the rest. A
        conversation's next turn, queued as its turn ends, takes that turn's slot at once and keeps
        the whole previous prompt. Where this file's arithmetic is not the same for every cut
        (reuses_prompts), every prompt is computed whole."""
        import numpy as np
        import torch

        from harness.engines.sampling import choose

        lib = self.lib
        reuse = self.reuses_prompts()
        slots: list[_Row | None] = [None] * self.parallel
        held: list[list[int]] = [[] for _ in slots]  # per slot: the prompt ids its stream holds, reusable
        next_turns: dict[int, Job] = {}  # free slot -> the next turn of the conversation it just ran

        def take(picks: list[tuple[int, _Row]]) -> None:
            """Choose each row's next token from the last call's logits (one row per pick, in
            order); hand back and free the rows that are done."""
            logits = np.ctypeslib.as_array(lib.llama_get_logits(self._ctx), shape=(len(picks), self.n_vocab))
            chosen = choose(torch.from_numpy(logits), settings, [row.job.generator for _, row in picks])
            for (s, row), token in zip(picks, chosen):
                row.tokens.append(token)
                stopped = token in self.stop_ids
                full = len(row.job.prompt) + len(row.tokens) >= self.n_ctx
                if stopped or full or len(row.tokens) >= settings.max_new_tokens:
                    waiting = len(queue)
                    on_finished(row.job, row.tokens, stopped)
                    slots[s] = None
                    if len(queue) > waiting and held[s] and queue[-1].prompt[: len(held[s])] == held[s]:
                        next_turns[s] = queue.pop()

        def admit(s: int, job: Job) -> None:
            slots[s] = _Row(job)
            kept = 0
            if reuse:
                shared = [reusable(ids, job.prompt) for ids in held]
                donor = max(range(self.parallel), key=shared.__getitem__)
                kept = shared[s]
                # A copy between streams moves a whole stream, all n_ctx cells: about 10 ms at
                # 4096, the time of ~10 prompt tokens (measured); worth it for a gain of 64+.
                if shared[donor] - kept >= max(MIN_PIECE, self.n_ctx // 64):
                    lib.llama_memory_seq_cp(self._memory, donor, s, -1, -1)
                    held[s], kept = held[donor], shared[donor]
            if not lib.llama_memory_seq_rm(self._memory, s, kept, -1):
                # A memory that cannot drop the end of a sequence (a recurrent model's) keeps nothing.
                lib.llama_memory_seq_rm(self._memory, s, -1, -1)
                kept = 0
            self._prefill(s, job.prompt, kept)
            held[s] = job.prompt if len(job.prompt) >= MIN_PIECE else []
            take([(s, slots[s])])

        lib.llama_memory_clear(self._memory, True)
        # torch's own worker threads spin after each op and take the cores from llama.cpp's threads
        # (measured: one stream 13x slower); the per-step choice over a few rows needs none of them.
        torch_threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            while queue or next_turns or any(slots):
                # Fill every free slot (a row that ends on its first token frees its slot again, and
                # a finished turn may queue its follow-up), so the busy slots are 0..k-1 whenever
                # the queue is not empty; once it is, compaction keeps them so.
                while next_turns or (queue and None in slots):
                    if next_turns:
                        admit(*next_turns.popitem())
                    else:
                        admit(slots.index(None), queue.popleft())
                self._compact(slots, held)
                busy = [(s, row) for s, row in enumerate(slots) if row is not None]
                if busy:
                    steps = [(s, len(row.job.prompt) + len(row.tokens) - 1, row.tokens[-1]) for s, row in busy]
                    # Busy slots are 0..k-1, so the sequence after the last (a slot or the spare) is
                    # free; a lone step's companion goes there, so it must be empty.
                    spare = steps[-1][0] + 1
                    if len(steps) == 1 and spare < self.parallel:
                        lib.llama_memory_seq_rm(self._memory, spare, -1, -1)
                        held[spare] = []
                    self._run(steps, spare=spare)
                    take(busy)
        finally:
            torch.set_num_threads(torch_threads)
            lib.llama_memory_clear(self._memory, True)

    def reuses_prompts(self) -> bool:
        """Whether this file computes a prompt's tokens the same whichever way it is cut into pieces
        of MIN_PIECE tokens or more (then a slot keeps the keys and values a new prompt shares with
        its last one). Checked once per engine on a probe prompt of 201 tokens computed whole and
        cut twice, at 68 and at 68 and 136 (multiples of ROWS, 68 not of 8; three computations, about 0.5 s;
        a probe cut at 128 only passed a file whose logits other cuts changed, see ROWS): the
        embedded model's float32, Q4_1 and a Q4_K_M copy pass; a file that does not has every
        prompt computed whole, so results never depend on what ran in a slot before."""
        if self._reuses_prompts is None:
            probe = (self.tokenize("Compute the sum of the first twenty odd numbers, then explain each step. ") * 64)[
                : 3 * MIN_PIECE + 9
            ]
            import numpy as np

            if len(probe) > self.lib.llama_n_batch(self._ctx):
                # llama.cpp caps a call at n_batch (n_ctx x (parallel + 1) where that is under 512)
                # and aborts the process past it; so small a context keeps no prompt tokens.
                self._reuses_prompts = False
                return False
            spare, logits = self.parallel, []
            # Pieces of 201; 68 + 133; 68 + 68 + 65 tokens.
            for cut in ([], [MIN_PIECE + ROWS], [MIN_PIECE + ROWS, 2 * (MIN_PIECE + ROWS)]):
                self.lib.llama_memory_seq_rm(self._memory, spare, -1, -1)
                bounds = [0, *cut, len(probe)]
                for a, b in zip(bounds, bounds[1:]):
                    self._run([(spare, j, probe[j]) for j in range(a, b)], last_only=True)
                logits.append(np.ctypeslib.as_array(self.lib.llama_get_logits(self._ctx), shape=(self.n_vocab,)).copy())
            self.lib.llama_memory_seq_rm(self._memory, spare, -1, -1)
            self._reuses_prompts = all(np.array_equal(logits[0], other) for other in logits[1:])
        return self._reuses_prompts

    def _prefill(self, seq: int, prompt: list[int], start: int = 0) -> None:
        """Compute prompt[start:] into sequence `seq`, alone, in as few pieces of at most UBATCH
        tokens as it takes, of about equal size (so none is under MIN_PIECE where the rest is not),
        cut at multiples of ROWS (`start` is one); the last token's logits are kept."""
        rest = len(prompt) - start
        count = -(-rest // (UBATCH - ROWS))  # a cut moved down to a multiple of ROWS lengthens a piece by < ROWS
        bounds = [start + rest * i // count // ROWS * ROWS for i in range(count)] + [len(prompt)]
        for a, b in zip(bounds, bounds[1:]):
            self._run([(seq, j, prompt[j]) for j in range(a, b)], last_only=True)

    def _run(self, tokens: list[tuple[int, int, int]], last_only: bool = False, spare: int | None = None) -> None:
        """One llama_decode call over (sequence, position, token) triples, asking logits of every
        token, or of the last only.

        llama.cpp computes a lone token by other arithmetic than a batch of two or more: on the
        float32 copy a one-token call gave logits up to 0.007 away from the same token in any batch
        of 2 to 16, which were bitwise equal to each other (measured). A decode step's batch depends
        on what else runs, so a lone decode token gets a companion: the same token at the start of
        `spare`, the empty sequence after its own, with logits asked too (llama.cpp computes only
        the rows whose logits are asked through the output layer), removed after. llama.cpp
        computes a call in pieces of consecutive sequences, so a companion further away, or a
        second token in the same sequence, computes apart or otherwise (measured: 0.007 and 1e-5
        away). Then a completion computes the same whether it shares its steps or runs alone. A
        prompt piece is always computed alone, so it needs no companion."""
        wanted = len(tokens)
        if wanted == 1 and spare is not None:
            tokens = [*tokens, (spare, 0, tokens[0][2])]
        batch = self._batch
        for i, (seq, pos, token) in enumerate(tokens):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, pos, 1
            batch.seq_id[i][0] = seq
            batch.logits[i] = not last_only or i == len(tokens) - 1
        batch.n_tokens = len(tokens)
        status = self.lib.llama_decode(self._ctx, batch)
        if wanted < len(tokens):
            self.lib.llama_memory_seq_rm(self._memory, spare, -1, -1)
        if status != 0:
            raise HarnessError(f"llama_decode failed (status {status}) on {wanted} tokens")

    def _compact(self, slots: list[_Row | None], held: list[list[int]]) -> None:
        """Move the highest busy slot into the lowest free one until the busy slots are 0..k-1."""
        while True:
            free = [s for s, row in enumerate(slots) if row is None]
            busy = [s for s, row in enumerate(slots) if row is not None]
            if not free or not busy or free[0] > busy[-1]:
                return
            source, target = busy[-1], free[0]
            self.lib.llama_memory_seq_cp(self._memory, source, target, -1, -1)
            self.lib.llama_memory_seq_rm(self._memory, source, -1, -1)
            slots[target], slots[source] = slots[source], None
            held[target], held[source] = held[source], []


# Hugging Face Llama parameter names (below model.layers.N.) and the GGUF tensor names llama.cpp gives them.
_LAYER_TENSORS = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}
_MODEL_TENSORS = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}


def gguf_tensor_name(name: str) -> str:
    """The GGUF tensor that holds Hugging Face Llama parameter `name`."""
    import re

    if name in _MODEL_TENSORS:
        return _MODEL_TENSORS[name]
    match = re.fullmatch(r"model\.layers\.(\d+)\.(.+)\.weight", name)
    if match is None or match.group(2) not in _LAYER_TENSORS:
        raise HarnessError(f"llamacpp rollouts cannot place parameter {name} in a GGUF file (Llama models only)")
    return f"blk.{match.group(1)}.{_LAYER_TENSORS[match.group(2)]}.weight"


def _rotary_rows(weights, heads: int):
    """Query or key projection rows in llama.cpp's order: its converter interleaves the two halves
    of each head's rotary dimensions (convert_hf_to_gguf.py's `permute`)."""
    return (
        weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def float32_copy(lib, gguf: Path) -> Path:
    """The embedded model as a float32 GGUF, written once into the cache (about a second, 540 MB).

    Why: the embedded file holds Q4_1 weights (and Q8_0 embeddings), and llama.cpp multiplies those
    with activations rounded to 8 bits by kernels that, on this 2-core CPU, are bound by arithmetic:
    48 MATH-500 prompts on 16 slots ran at 102 useful tokens/s on the Q4_1 file and 175 on this
    copy, measured in one run (benchmarks/bench_engines.py gives both). A Q4_1 weight is d * q + m,
    a Q8_0 one d * q, with d and m float16 numbers: a float32 holds each exactly, so the copy is the
    same model with no rounding added, and its weights equal those the hf engine runs (tested).
    llama.cpp's own quantize call writes it (dequantising every tensor to float32). A GGUF file
    passed with --model runs as it is.
    """
    from harness.models import cached_copy

    stem = cached_copy(gguf, gguf.stem + "-F32")
    target = stem.with_name(stem.name + ".gguf")
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Written beside the target and renamed, so an interrupted conversion never looks complete.
    partial = stem.with_name(f"{stem.name}.partial-{os.getpid()}")
    params = lib.llama_model_quantize_default_params()
    params.ftype = lib.LLAMA_FTYPE_ALL_F32
    params.allow_requantize = True
    params.nthread = available_cores()
    status = lib.llama_model_quantize(str(gguf).encode(), str(partial).encode(), ctypes.byref(params))
    if status != 0:
        partial.unlink(missing_ok=True)
        raise HarnessError(
            f"llama.cpp could not write a float32 copy of {gguf} into {target.parent} (status {status}); "
            "check free disk space there (about 540 MB), or set SCORE_EVAL_CACHE to another folder"
        )
    partial.rename(target)
    return target


def reusable(held: list[int], prompt: list[int]) -> int:
    """How many leading tokens of `prompt` a stream holding `held` (a prompt computed in pieces of
    MIN_PIECE or more, cut at multiples of ROWS) keeps: those they share, leaving at least MIN_PIECE
    to compute (a shorter rest would compute by other arithmetic), down to a multiple of ROWS and
    short of held's last len % ROWS tokens (computed one by one, see ROWS); none for a prompt under
    MIN_PIECE, which is computed whole."""
    kept = min(common_prefix_length([held, prompt]), len(held) // ROWS * ROWS, len(prompt) - MIN_PIECE)
    return max(0, kept // ROWS * ROWS)


def _release(owned: list[tuple[Callable, Any]]) -> None:
    """Free the batch, context and model, last made first."""
    while owned:
        free, handle = owned.pop()
        free(handle)
