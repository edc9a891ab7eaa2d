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

from harness.store import write_json
from harness.train.config import TrainConfig


@dataclass
class Policy:
    """The trained model, its tokenizer, and how to score under the frozen reference."""

    model: torch.nn.Module
    tokenizer: object
    name: str
    reference: torch.nn.Module | None  # a frozen copy (full fine-tuning); None for LoRA (adapter disabled)
    lora: bool
    device: torch.device
    autocast: Callable[[], contextlib.AbstractContextManager]
    location: str | None = None  # where the starting weights were read from (None: given in memory)

    def reference_context(self) -> contextlib.AbstractContextManager:
        return self.model.disable_adapter() if self.lora else contextlib.nullcontext()

    def reference_model(self) -> torch.nn.Module:
        return self.model if self.lora else self.reference

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
    when --lora-r > 0 and a frozen reference copy otherwise."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    on_gpu = device.type == "cuda"
    if on_gpu and config.dtype != "fp32":
        autocast = lambda: torch.autocast("cuda", dtype=torch.bfloat16)  # noqa: E731
    else:
        autocast = contextlib.nullcontext
    location = None
    if model is None:
        from harness.models import resolve_model

        name, location = resolve_model(config.model)
        # Full fine-tuning keeps fp32 master weights (a 5e-6 step is below bf16's resolution); a frozen
        # LoRA base, or --dtype bf16, is stored in bf16 on the GPU.
        bf16 = on_gpu and (config.dtype == "bf16" or (config.dtype == "auto" and config.lora_r > 0))
        tokenizer = AutoTokenizer.from_pretrained(location)
        model = AutoModelForCausalLM.from_pretrained(location, dtype=torch.bfloat16 if bf16 else torch.float32)
    else:
        name = config.model or "in-memory"
    model.to(device)
    reference = None
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
    else:
        reference = copy.deepcopy(model).eval()
        if on_gpu:
            reference.to(torch.bfloat16)
        reference.requires_grad_(False)
    if config.gradient_checkpointing:
        enable = getattr(model, "activation_checkpointing_enable", None)  # transformers >= 5.x's name
        if enable is not None:
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return Policy(model, tokenizer, name, reference, config.lora_r > 0, device, autocast, location)


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
