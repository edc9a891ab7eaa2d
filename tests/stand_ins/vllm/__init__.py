"""A stand-in for the parts of vLLM that harness/engines/vllm.py uses, for CPU-only CI.

It mirrors vLLM's documented surface (vllm.LLM, LLM.chat, LLM.get_tokenizer,
LLM.llm_engine.model_config.max_model_len, LLM.llm_engine's add_request / has_unfinished_requests /
step / abort_request, LLM.apply_model, LLM.reset_prefix_cache,
vllm.SamplingParams, RequestOutput, CompletionOutput, and a model's `load_weights`): the same names,
argument names, defaults and field names. `load_weights` takes Hugging Face checkpoint names, as
vLLM's model classes do, and rejects a name the model does not have, as vLLM does. Behind it,
transformers runs the model, rendering each conversation with the tokenizer's chat template as
vLLM does. It records every call so tests can check what the adapter sent; where the adapter runs it
in child processes (--data-parallel-size), each engine's creation and chat prompts are also appended
as JSON lines to the file $VLLM_STAND_IN_LOG names. It is not vLLM: no paged attention, no scheduling.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

CALLS: list[dict] = []
INSTANCES: list[LLM] = []


def _log(record: dict) -> None:
    if os.environ.get("VLLM_STAND_IN_LOG"):
        with open(os.environ["VLLM_STAND_IN_LOG"], "a") as f:
            f.write(json.dumps(record) + "\n")


@dataclass
class SamplingParams:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: list[str] | None = None
    max_tokens: int | None = 16

    def __post_init__(self):
        if self.n < 1:
            raise ValueError(f"n must be at least 1, got {self.n}.")
        if self.temperature < 0:
            raise ValueError(f"temperature must be non-negative, got {self.temperature}.")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}.")


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None = None
    logprobs: list | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int] | None
    prompt_logprobs: list | None
    outputs: list[CompletionOutput]
    finished: bool = True


@dataclass
class _ModelConfig:
    max_model_len: int


@dataclass
class _LLMEngine:
    """`LLM.llm_engine`: its model config, and the request loop LLM.chat runs inside (add_request,
    has_unfinished_requests, step). Each step here finishes one request, the last added first, so
    answers come back in another order than they were asked for, and reports every other waiting
    request as unfinished (an output with finished=False), as vLLM's steps do."""

    model_config: _ModelConfig
    llm: LLM | None = field(default=None, repr=False)
    waiting: list = field(default_factory=list, repr=False)

    def add_request(self, request_id, prompt, params, arrival_time=None, lora_request=None, priority=0, **kwargs):
        ids = list(prompt["prompt_token_ids"])
        if len(ids) >= self.model_config.max_model_len:
            raise ValueError("The decoder prompt is longer than the maximum model length")
        waiting = len(self.waiting)
        CALLS.append({"add_request": request_id, "prompt_token_ids": ids, "params": params, "waiting": waiting})
        self.waiting.append((request_id, ids, params))

    def has_unfinished_requests(self) -> bool:
        return bool(self.waiting)

    def abort_request(self, request_ids) -> None:
        CALLS.append({"abort_request": list(request_ids)})
        self.waiting = [w for w in self.waiting if w[0] not in request_ids]

    def step(self):
        request_id, ids, params = self.waiting.pop()
        done = RequestOutput(request_id, None, ids, None, self.llm._generate(ids, params), finished=True)
        return [RequestOutput(r, None, i, None, [], finished=False) for r, i, _ in self.waiting] + [done]


@dataclass
class LLM:
    model: str
    tokenizer: str | None = None
    tensor_parallel_size: int = 1
    dtype: str = "auto"
    seed: int = 0
    gpu_memory_utilization: float = 0.9
    max_model_len: int | None = None
    pipeline_parallel_size: int = 1
    _hf: object = field(default=None, repr=False)

    def __post_init__(self):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self._tokenizer = AutoTokenizer.from_pretrained(self.tokenizer or self.model)
        self._hf = AutoModelForCausalLM.from_pretrained(self.model).eval()
        length = self.max_model_len or self._hf.config.max_position_embeddings
        self.llm_engine = _LLMEngine(_ModelConfig(max_model_len=length), self)
        names = ("model", "tensor_parallel_size", "pipeline_parallel_size", "gpu_memory_utilization")
        names += ("max_model_len", "seed", "dtype")
        init = {k: getattr(self, k) for k in names}
        # vLLM reads this while it builds its engine: "0" keeps the engine core in this process.
        init["VLLM_ENABLE_V1_MULTIPROCESSING"] = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING")
        init["CUDA_VISIBLE_DEVICES"] = os.environ.get("CUDA_VISIBLE_DEVICES")  # the GPUs vLLM would use
        CALLS.append({"init": init})
        _log({"init": init})
        INSTANCES.append(self)

    def get_tokenizer(self):
        return self._tokenizer

    def apply_model(self, func):
        """Run `func` on the model inside each worker (one here) and return its results."""
        return [func(_Model(self._hf))]

    def reset_prefix_cache(self, device=None) -> bool:
        CALLS.append({"reset_prefix_cache": True})
        return True

    def chat(
        self,
        messages,
        sampling_params=None,
        use_tqdm=True,
        lora_request=None,
        chat_template=None,
        add_generation_prompt=True,
        continue_final_message=False,
        **kwargs,
    ):
        conversations = messages if messages and isinstance(messages[0], list) else [messages]
        params = sampling_params or SamplingParams()
        params = params if isinstance(params, list) else [params] * len(conversations)
        if len(params) != len(conversations):
            raise ValueError("The lengths of prompts and sampling_params must be the same.")
        prompts = [
            self._tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=add_generation_prompt)
            for c in conversations
        ]
        CALLS.append({"chat": prompts, "params": params, "use_tqdm": use_tqdm})
        _log({"chat": prompts, "pid": os.getpid()})
        outputs = []
        for number, (prompt, p) in enumerate(zip(prompts, params)):
            ids = self._tokenizer(prompt, add_special_tokens=False)["input_ids"]
            if len(ids) >= self.llm_engine.model_config.max_model_len:
                raise ValueError("The decoder prompt is longer than the maximum model length")
            outputs.append(RequestOutput(str(number), prompt, ids, None, self._generate(ids, p)))
        return outputs

    def _generate(self, ids: list[int], p: SamplingParams) -> list[CompletionOutput]:
        import torch

        prompt = torch.tensor([ids])
        completions = []
        for index in range(p.n):
            if p.seed is not None:
                torch.manual_seed(p.seed + index)
            sample = (
                {"do_sample": True, "temperature": p.temperature, "top_p": p.top_p, "top_k": 0}
                if p.temperature > 0
                else {"do_sample": False}
            )
            out = self._hf.generate(
                prompt,
                attention_mask=torch.ones_like(prompt),
                max_new_tokens=p.max_tokens,
                pad_token_id=self._tokenizer.pad_token_id,
                **sample,
            )[0, len(ids) :].tolist()
            eos = self._tokenizer.eos_token_id
            stopped = eos in out
            token_ids = out[: out.index(eos) + 1] if stopped else out
            completions.append(
                CompletionOutput(
                    index=index,
                    text=self._tokenizer.decode([t for t in token_ids if t != eos], skip_special_tokens=True),
                    token_ids=token_ids,
                    finish_reason="stop" if stopped else "length",
                )
            )
        return completions


class _Model:
    """The worker's model as `apply_model` hands it over: here only `load_weights`."""

    def __init__(self, hf):
        self._hf = hf

    def load_weights(self, weights) -> set[str]:
        import torch

        params = self._hf.state_dict()
        loaded = set()
        with torch.no_grad():
            for name, tensor in weights:
                if name not in params:
                    raise ValueError(f"There is no module or parameter named '{name}' in {type(self._hf).__name__}")
                params[name].copy_(tensor)
                loaded.add(name)
        CALLS.append({"load_weights": sorted(loaded)})
        return loaded
