"""Problem generators, by name: a task's YAML names one (`data.generator`) instead of a file or a hub
dataset, with its seed, split sizes and options, so the task stays a file of data and prompts.

Generation is a pure function of (name, seed, split, size, options): the same task file gives the
same problems on every machine, and the run records their sha256 like a file's. The held-out split
("test") is drawn first, on its own; the other splits skip every problem text it holds, so training
never sees a held-out problem, and the test split does not change when a training split grows.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable
from typing import Any

from harness.errors import HarnessError

HELD_OUT = "test"

_REGISTRY: dict[str, Callable[..., dict[str, str]]] = {}


def register_generator(name: str):
    def wrap(fn: Callable[..., dict[str, str]]) -> Callable[..., dict[str, str]]:
        _REGISTRY[name] = fn
        return fn

    return wrap


def generate(spec: dict[str, Any], split: str) -> tuple[list[dict[str, str]], str]:
    """The records of one split of a `data.generator` spec, and their sha256 (of the JSON lines)."""
    name, sizes = spec["name"], spec["splits"]
    if name not in _REGISTRY:
        raise HarnessError(
            f"unknown problem generator '{name}' in the task file; choose one of: {', '.join(_REGISTRY)}"
        )
    if split not in sizes:
        raise HarnessError(f"the task's generator has no split '{split}'; it has: {', '.join(sizes)}")
    make, options = _REGISTRY[name], dict(spec.get("options") or {})
    held_out = _draw(make, options, spec["seed"], HELD_OUT, int(sizes[HELD_OUT]), set()) if HELD_OUT in sizes else []
    if split == HELD_OUT:
        records = held_out
    else:
        records = _draw(make, options, spec["seed"], split, int(sizes[split]), {r["problem"] for r in held_out})
    digest = hashlib.sha256("".join(json.dumps(r, sort_keys=True) + "\n" for r in records).encode()).hexdigest()
    return records, digest


def _draw(make, options: dict, seed: int, split: str, size: int, excluded: set[str]) -> list[dict[str, str]]:
    """`size` distinct problems not in `excluded`, ids `<split>-<n>`."""
    rng = random.Random(f"{seed}:{split}")
    records, seen = [], set(excluded)
    for _ in range(100 * size):
        if len(records) == size:
            break
        record = make(rng, **options)
        if record["problem"] not in seen:
            seen.add(record["problem"])
            records.append({"id": f"{split}-{len(records):05d}", **record})
    if len(records) < size:
        raise HarnessError(f"the generator's options allow fewer than {size} distinct problems for split '{split}'")
    return records


@register_generator("arithmetic")
def arithmetic(rng: random.Random, operands: int = 3, low: int = 2, high: int = 20, operators: str = "+-*") -> dict:
    """An integer expression of `operands` numbers in [low, high] joined by `operators`, with the usual
    precedence (* before + and -); the answer is its exact value."""
    numbers = [rng.randint(low, high) for _ in range(operands)]
    ops = [rng.choice(operators) for _ in range(operands - 1)]
    expression = " ".join(str(n) + (f" {op}" if op else "") for n, op in zip(numbers, [*ops, ""]))
    return {"problem": expression, "answer": str(_evaluate(numbers, ops))}


def _evaluate(numbers: list[int], ops: list[str]) -> int:
    """+, − and × over integers, × first, left to right."""
    terms, signs = [numbers[0]], [1]
    for op, n in zip(ops, numbers[1:]):
        if op == "*":
            terms[-1] *= n
        else:
            terms.append(n)
            signs.append(1 if op == "+" else -1)
    return sum(s * t for s, t in zip(signs, terms))
