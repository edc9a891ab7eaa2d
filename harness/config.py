"""RunConfig: every setting of `score-eval run`, validated once, saved as config.json."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from harness.errors import HarnessError

DTYPES = ("auto", "bfloat16", "float16", "float32")


@dataclass
class RunConfig:
    task: str = field(default="math", metadata={"help": "task name (a file in tasks/) or path to a task .yaml"})
    model: str | None = field(
        default=None, metadata={"help": "checkpoint dir, .gguf file or hub id; default: embedded SmolLM2-135M-Instruct"}
    )
    backend: str = field(default="hf", metadata={"help": "inference engine"})
    data: str | None = field(
        default=None, metadata={"help": "local .jsonl/.json/.parquet; default: the task's hub dataset"}
    )
    split: str | None = field(
        default=None,
        metadata={
            "help": "the data's split (mbpp: test, train, validation, prompt, or all); default: the task's, "
            "the same for a local file as for the hub"
        },
    )
    limit: int | None = field(default=None, metadata={"help": "use only the first N problems"})
    turns: int = field(default=2, metadata={"help": "attempts per episode (1 + corrections)"})
    samples: int = field(default=1, metadata={"help": "independent episodes per problem"})
    max_new_tokens: int | None = field(default=None, metadata={"help": "per turn; default: the task's"})
    temperature: float = field(default=0.0, metadata={"help": "0 = greedy"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling mass"})
    seed: int = field(default=0, metadata={"help": "sampling seed"})
    batch_size: int | str = field(
        default=16, metadata={"help": "hf: conversations per generation batch, or 'auto' (halves on out-of-memory)"}
    )
    output_dir: str = field(default="results", metadata={"help": "parent of the run directory"})
    run_name: str | None = field(default=None, metadata={"help": "run directory name; default: task-model-time"})
    resume: bool = field(default=False, metadata={"help": "continue the unfinished run named by --run-name"})
    # Engine options: openai
    base_url: tuple[str, ...] = field(
        default=(),
        metadata={
            "help": "openai: server URL, e.g. http://127.0.0.1:8000/v1; give it again for each further server of "
            "the same model (requests are spread over them, and a server that stops answering is left out)"
        },
    )
    api_key: str | None = field(
        default=None,
        repr=False,
        metadata={"help": "openai: API key (default: $OPENAI_API_KEY); never written to any file"},
    )
    concurrency: int = field(default=8, metadata={"help": "openai: requests in flight at once, per server"})
    request_timeout: float = field(default=600.0, metadata={"help": "openai: seconds per request before it is retried"})
    # Engine options: vllm
    tensor_parallel_size: int = field(default=1, metadata={"help": "vllm: GPUs per model replica (tensor parallel)"})
    data_parallel_size: int = field(
        default=1,
        metadata={
            "help": "vllm: model replicas, each in a process of its own on its own tensor-parallel x pipeline GPUs; "
            "each turn's conversations are shared out among them"
        },
    )
    pipeline_parallel_size: int = field(default=1, metadata={"help": "vllm: pipeline stages"})
    gpu_memory_utilization: float = field(default=0.9, metadata={"help": "vllm: share of GPU memory to use"})
    max_model_len: int | None = field(default=None, metadata={"help": "vllm: context length (default: the model's)"})
    # Engine options: llamacpp
    parallel: int = field(
        default=16, metadata={"help": "llamacpp: sequences decoded together (slots, refilled as sequences finish)"}
    )
    n_ctx: int = field(
        default=4096,
        metadata={"help": "llamacpp: context tokens per sequence (prompt + completion); each slot holds this many"},
    )
    # Engine options: hf and vllm
    dtype: str = field(
        default="auto",
        metadata={
            "help": "hf, vllm: weight and compute dtype; auto = hf: bfloat16 on CUDA, float32 on CPU; vllm: its own "
            "rule, which runs a float32 checkpoint (e.g. one `score-eval train` wrote) in float16"
        },
    )

    def validate(self) -> RunConfig:
        if isinstance(self.base_url, str):  # one URL given in Python rather than on the command line
            self.base_url = (self.base_url,)
        self.base_url = tuple(self.base_url or ())
        checks = [
            (self.turns >= 1, f"--turns must be at least 1 (got {self.turns})"),
            (self.samples >= 1, f"--samples must be at least 1 (got {self.samples})"),
            (
                self.max_new_tokens is None or self.max_new_tokens > 0,
                f"--max-new-tokens must be positive (got {self.max_new_tokens})",
            ),
            (self.limit is None or self.limit > 0, f"--limit must be positive (got {self.limit})"),
            (self.temperature >= 0, f"--temperature must be 0 (greedy) or positive (got {self.temperature})"),
            (self.dtype in DTYPES, f"--dtype must be one of {', '.join(DTYPES)} (got {self.dtype})"),
            (0 < self.top_p <= 1, f"--top-p must be in (0, 1] (got {self.top_p})"),
            (
                self.batch_size == "auto" or (isinstance(self.batch_size, int) and self.batch_size >= 1),
                f"--batch-size must be a positive number or 'auto' (got {self.batch_size})",
            ),
            (self.parallel >= 1, f"--parallel must be at least 1 (got {self.parallel})"),
            (self.n_ctx >= 1, f"--n-ctx must be at least 1 (got {self.n_ctx})"),
            (self.concurrency >= 1, f"--concurrency must be at least 1 (got {self.concurrency})"),
            (
                self.data_parallel_size >= 1,
                f"--data-parallel-size must be at least 1 (got {self.data_parallel_size}); it counts model replicas",
            ),
            (self.request_timeout > 0, f"--request-timeout must be positive (got {self.request_timeout})"),
        ]
        from harness.engines import BACKENDS

        checks.append(
            (self.backend in BACKENDS, f"unknown backend '{self.backend}'; choose one of: {', '.join(BACKENDS)}")
        )
        for ok, message in checks:
            if not ok:
                raise HarnessError(message)
        twice = sorted({u for u in self.base_url if self.base_url.count(u) > 1})
        if twice:
            raise HarnessError(
                f"--base-url {twice[0]} is given more than once; give each server once "
                "(--concurrency sets the requests in flight per server)"
            )
        if self.resume and self.run_name is None:
            raise HarnessError("--resume needs --run-name: the name of the run directory to continue")
        # A name is one directory below --output-dir: no separators, and no leading '.', which would
        # allow '.' and '..' (the output directory itself, or its parent) and hide the run from `runs`.
        if self.run_name is not None and not re.fullmatch(r"\w[\w.-]*", self.run_name):
            raise HarnessError(
                f"--run-name {self.run_name!r} is not a plain name; use letters, digits, '.', '_' and '-', "
                "starting with a letter or digit (the run goes to --output-dir/NAME)"
            )
        return self

    def resolved_run_name(self, model_name: str) -> str:
        if self.run_name:
            return self.run_name
        short = re.sub(r"[^\w.-]+", "-", Path(model_name).name or model_name).strip("-")
        stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
        return f"{Path(self.task).stem}-{short}-{stamp}"

    def engine_options(self) -> dict:
        keys = (
            "batch_size",
            "base_url",
            "api_key",
            "concurrency",
            "request_timeout",
            "tensor_parallel_size",
            "pipeline_parallel_size",
            "data_parallel_size",
            "gpu_memory_utilization",
            "max_model_len",
            "seed",
            "dtype",
            "parallel",
            "n_ctx",
        )
        return {k: getattr(self, k) for k in keys}

    def as_dict(self) -> dict:
        """Every setting, for config.json, without the API key."""
        return {k: v for k, v in asdict(self).items() if k != "api_key"}
