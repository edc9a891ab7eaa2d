"""The policy being trained: loading it (LoRA or full), its frozen reference, its optimizer, and its
weights as a plain Hugging Face model (for checkpoints and for loading into a vLLM rollout engine)."""

from __future__ import annotations

import contextlib
import copy
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from harness.errors import HarnessError
from harness.store import write_json
from harness.train.config import TrainConfig


@dataclass
class Policy:
    """The trained model, its tokenizer, and how to score under the frozen reference."""

    model: torch.nn.Module
    tokenizer: object
    name: str
    # The frozen πref: a separate model (full fine-tuning, or --reference), or None when it is the LoRA
    # policy with its adapter disabled.
    reference: torch.nn.Module | None
    lora: bool
    device: torch.device
    autocast: Callable[[], contextlib.AbstractContextManager]
    location: str | None = None  # where the starting weights were read from (None: given in memory)
    compute_dtype: str = "float32"  # what matrix products run in: "bfloat16" (autocast) or "float32"

    def reference_context(self) -> contextlib.AbstractContextManager:
        return self.model.disable_adapter() if self.reference is None else contextlib.nullcontext()

    def reference_model(self) -> torch.nn.Module:
        return self.model if self.reference is None else self.reference

    def trainable(self) -> dict[str, torch.Tensor]:
        return {n: p.detach() for n, p in self.model.named_parameters() if p.requires_grad}

    def merged_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, tensor) pairs of the current weights under the plain model's own parameter names, LoRA
        merged in (W + scaling·B·A, computed per layer without touching the model, so repeated syncs
        accumulate no merge/unmerge rounding). Tensors are yielded one at a time to keep memory flat."""
        if not self.lora:
            yield from self.model.state_dict().items()
            return
        from peft.tuners.lora import LoraLayer

        base = self.model.get_base_model()
        deltas = {
            f"{name}.base_layer.weight": module
            for name, module in base.named_modules()
            if isinstance(module, LoraLayer) and module.active_adapters
        }
        with torch.no_grad():
            for name, tensor in base.state_dict().items():
                if "lora_" in name:
                    continue
                if name in deltas:
                    module = deltas[name]
                    for adapter in module.active_adapters:
                        tensor = tensor + module.get_delta_weight(adapter).to(tensor.dtype)
                yield name.replace(".base_layer.", "."), tensor


def load_policy(config: TrainConfig, model=None, tokenizer=None) -> Policy:
    """The model to train (from --model, or given in memory by tests and benchmarks), with LoRA applied
    when --lora-r > 0, and its frozen reference.

    The reference computes exactly as the policy does, so the KL is 0 before the first update: the same
    weights in the same storage dtype, scored under the same autocast (a bfloat16 copy of float32 master
    weights would differ by rounding alone: 0.02 nats per token on average, measured on an untrained
    model, as large as the signal β2·KL is meant to carry in Stage I).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from harness.models import resolve_model

    device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    bf16 = config.dtype == "bfloat16" or (config.dtype == "auto" and device.type == "cuda")
    if bf16:
        autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16)  # noqa: E731
    else:
        autocast = contextlib.nullcontext
    # Full fine-tuning keeps float32 master weights (a 5e-6 step is below bfloat16's resolution) and
    # computes in bfloat16 under autocast; a frozen LoRA base is stored in bfloat16.
    storage = torch.bfloat16 if bf16 and config.lora_r > 0 else torch.float32
    location = None
    if model is None:
        name, location = resolve_model(config.model)
        tokenizer = AutoTokenizer.from_pretrained(location)
        model = AutoModelForCausalLM.from_pretrained(location, dtype=storage)
    else:
        name = config.model or "in-memory"
        storage = next(model.parameters()).dtype
    model.to(device)
    reference = None
    if config.reference is not None:
        reference = _load_reference(config.reference, storage, model)
    elif config.lora_r == 0:
        reference = copy.deepcopy(model)
    if reference is not None:
        reference.to(device).eval().requires_grad_(False)
    if config.lora_r > 0:
        from peft import LoraConfig, get_peft_model

        targets = config.lora_target_modules
        model = get_peft_model(
            model,
            LoraConfig(
                r=config.lora_r,
                lora_alpha=config.lora_alpha,
                lora_dropout=config.lora_dropout,
                task_type="CAUSAL_LM",
                target_modules=targets if targets == "all-linear" else [t.strip() for t in targets.split(",")],
            ),
        )
    if config.gradient_checkpointing:
        enable = getattr(model, "activation_checkpointing_enable", None)  # transformers >= 5.x's name
        if enable is not None:
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    compute = "bfloat16" if bf16 else "float32"
    return Policy(model, tokenizer, name, reference, config.lora_r > 0, device, autocast, location, compute)


def _load_reference(spec: str, dtype: torch.dtype, policy_model: torch.nn.Module) -> torch.nn.Module:
    """--reference: a model of the same vocabulary, stored in the policy's dtype."""
    from transformers import AutoModelForCausalLM

    from harness.models import resolve_model

    _, location = resolve_model(spec)
    reference = AutoModelForCausalLM.from_pretrained(location, dtype=dtype)
    ours, theirs = (
        policy_model.get_output_embeddings().weight.shape[0],
        reference.get_output_embeddings().weight.shape[0],
    )
    if ours != theirs:
        raise HarnessError(
            f"--reference {spec} has a vocabulary of {theirs} tokens and the policy {ours}; the KL needs the "
            "same tokenizer: pass the model the policy was trained from"
        )
    return reference


@contextlib.contextmanager
def checkpoint_sampling_off(model: torch.nn.Module) -> Iterator[None]:
    """Generate with only the sampling settings the engine passes (temperature, top-p, max tokens).

    A checkpoint's generation_config.json may add a repetition penalty, top-k, min-p, a minimum length
    and more; `generate` would apply them on top, and the loss, which scores softmax(z / T), would
    then not be scoring the distribution the tokens were drawn from. Only the token ids are kept; the
    checkpoint's own config is restored afterwards (and saved with the checkpoint).
    """
    from transformers import GenerationConfig

    target = model.get_base_model() if hasattr(model, "get_base_model") else model
    saved = target.generation_config
    ids = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")
    target.generation_config = GenerationConfig(**{k: getattr(saved, k, None) for k in ids})
    try:
        yield
    finally:
        target.generation_config = saved


def make_optimizer(config: TrainConfig, model: torch.nn.Module):
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "adam":
        optimizer = torch.optim.Adam(params, lr=config.lr)
    else:
        optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    warmup = config.warmup_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0)
    return optimizer, scheduler


def save_checkpoint(policy: Policy, path: Path, stage: int, config: TrainConfig) -> Path:
    """A plain Hugging Face checkpoint (LoRA merged into the weights), written then renamed into place."""
    partial = path.with_name(path.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    if policy.lora:
        # The merged weights under the plain model's names (what vLLM rollouts get), saved with the base
        # model's config, without a merged copy of the whole model.
        policy.model.get_base_model().save_pretrained(partial, state_dict=dict(policy.merged_weights()))
    else:
        policy.model.save_pretrained(partial)
    policy.tokenizer.save_pretrained(partial)
    info = {"stage": stage, "steps": config.steps(stage), "settings": config.as_dict()}
    write_json(partial / "score_train.json", info)
    shutil.rmtree(path, ignore_errors=True)
    partial.rename(path)
    return path
