"""Declarative task definitions: read `tasks/*.yaml` into Task objects.

A task is data (where problems come from, which fields they need), prompts (the turn-1 template
and the correction instruction) and the name of a registered grader. Adding a benchmark or a
prompt variant is adding a YAML file; no code changes.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import jinja2.meta
import yaml

from harness.errors import HarnessError

# Prompt templates are Jinja2 (as in lm-evaluation-harness task files): `{{ problem }}`,
# `{{ test_list | join("\n") }}`. Undefined names are errors, never silently empty.
_JINJA = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False)

TASKS_DIR = Path(__file__).resolve().parent.parent / "tasks"


# How a reasoning model's earlier attempt is shown at turn 2+ (see harness/grading/reasoning.py):
# "template" passes it whole and lets the model's chat template decide (Qwen3's drops the thinking of
# earlier turns, R1 distills' too); "drop" removes the thinking; "keep" keeps it as plain text, without
# the tags, so that no template can drop it.
PREVIOUS_THINKING = ("template", "drop", "keep")


@dataclass(frozen=True)
class Prompts:
    first_turn: str
    correction: str
    system: str | None = None
    previous_thinking: str = "template"


@dataclass(frozen=True)
class Splits:
    """A dataset's splits as ranges of one integer field, so that a local file is cut exactly as the
    hub cuts it (MBPP: task_id 1-10 prompt, 11-510 test, 511-600 validation, 601-974 train)."""

    field: str
    default: str
    ranges: dict[str, tuple[int, int]]

    def holds(self, split: str, record: dict[str, Any]) -> bool:
        low, high = self.ranges[split]
        return low <= int(record[self.field]) <= high


@dataclass(frozen=True)
class DataSpec:
    required_fields: tuple[str, ...]
    answer_field: str
    id_field: str | None = None
    keep_fields: tuple[str, ...] = ()
    hub: dict[str, Any] | None = None
    package: dict[str, Any] | None = None  # {module, file}: data shipped inside an installed package
    optional_fields: tuple[str, ...] = ()  # fields a template may use when a record has them
    splits: Splits | None = None  # how a local file is split; without it a file is used whole
    generator: dict[str, Any] | None = None  # {name, seed, splits, options}: problems made by harness.generators


@dataclass(frozen=True)
class Task:
    name: str
    grader: str
    data: DataSpec
    prompts: Prompts
    description: str = ""
    generation: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    def first_prompt(self, fields: dict[str, Any]) -> str:
        return _JINJA.from_string(self.prompts.first_turn).render(**fields)

    def correction_prompt(self, fields: dict[str, Any]) -> str:
        return _JINJA.from_string(self.prompts.correction).render(**fields)

    def as_dict(self) -> dict[str, Any]:
        """Everything that shapes the prompts, the problems and the grading, for config.json (and, but
        for `source`, a resume's identity)."""
        return {
            "name": self.name,
            "grader": self.grader,
            "source": self.source,
            "prompts": {
                "system": self.prompts.system,
                "first_turn": self.prompts.first_turn,
                "correction": self.prompts.correction,
                "previous_thinking": self.prompts.previous_thinking,
            },
            "generation": dict(self.generation),
            "data": {
                "required_fields": list(self.data.required_fields),
                "answer_field": self.data.answer_field,
                "id_field": self.data.id_field,
                "keep_fields": list(self.data.keep_fields),
                "optional_fields": list(self.data.optional_fields),
                "hub": self.data.hub,
                "package": self.data.package,
                "splits": asdict(self.data.splits) if self.data.splits else None,
            },
        }


def tasks_dirs() -> list[Path]:
    """Search order: $SCORE_EVAL_TASKS (os.pathsep-separated), then the repository's tasks/."""
    extra = [Path(p) for p in os.environ.get("SCORE_EVAL_TASKS", "").split(os.pathsep) if p]
    return [*extra, TASKS_DIR]


def available_tasks() -> list[str]:
    names = {p.stem for d in tasks_dirs() if d.is_dir() for p in d.glob("*.yaml")}
    return sorted(names)


def load_task(name_or_path: str) -> Task:
    """Load a task by name (a file in a tasks directory) or by path to a YAML file."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = next(
            (d / f"{name_or_path}.yaml" for d in tasks_dirs() if (d / f"{name_or_path}.yaml").is_file()), Path()
        )
    if not path.is_file():
        known = ", ".join(available_tasks()) or "none"
        raise HarnessError(f"unknown task '{name_or_path}'; choose one of: {known} (or pass a path to a task .yaml)")
    try:
        raw = yaml.safe_load(path.read_text())
        return _parse(raw, source=str(path))
    except (yaml.YAMLError, jinja2.TemplateError, KeyError, TypeError, ValueError) as exc:
        raise HarnessError(f"task file {path} is malformed: {exc}; compare it with tasks/math.yaml") from exc


# The keys each section of a task file may hold, (required, optional): a key outside them is a typo
# (`max_new_token`) that would otherwise be ignored without a word.
SCHEMA: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "the file": (("name", "grader", "data", "prompts"), ("description", "generation")),
    "data": (
        ("answer_field", "required_fields"),
        ("hub", "package", "generator", "id_field", "keep_fields", "optional_fields", "splits"),
    ),
    "data.splits": (("field", "default", "ranges"), ()),
    "prompts": (("first_turn", "correction"), ("system", "previous_thinking")),
    "generation": ((), ("max_new_tokens",)),
}


def _check_keys(section: str, value: Any) -> None:
    required, optional = SCHEMA[section]
    if not isinstance(value, dict):
        raise ValueError(f"{section} must be a mapping of keys to values")
    unknown = [k for k in value if k not in required + optional]
    if unknown:
        raise ValueError(
            f"{section} has the unknown key{'s' * (len(unknown) > 1)} {', '.join(map(repr, unknown))}; "
            f"valid keys: {', '.join(required + optional)}"
        )
    missing = [k for k in required if k not in value]
    if missing:
        raise ValueError(f"{section} lacks {', '.join(map(repr, missing))}")


def _parse(raw: dict[str, Any], source: str) -> Task:
    _check_keys("the file", raw)
    for section in ("data", "prompts", "generation"):
        if raw.get(section) is not None or section != "generation":
            _check_keys(section, raw[section])
    if raw["data"].get("splits") is not None:
        _check_keys("data.splits", raw["data"]["splits"])
    data, prompts = raw["data"], raw["prompts"]
    task = Task(
        name=str(raw["name"]),
        grader=str(raw["grader"]),
        description=str(raw.get("description", "")),
        generation=dict(raw.get("generation") or {}),
        source=source,
        data=DataSpec(
            required_fields=tuple(data["required_fields"]),
            answer_field=str(data["answer_field"]),
            id_field=data.get("id_field"),
            keep_fields=tuple(data.get("keep_fields") or ()),
            hub=data.get("hub"),
            package=data.get("package"),
            optional_fields=tuple(data.get("optional_fields") or ()),
            splits=_splits(data.get("splits")),
            generator=data.get("generator"),
        ),
        prompts=Prompts(
            first_turn=str(prompts["first_turn"]),
            correction=str(prompts["correction"]),
            system=prompts.get("system"),
            previous_thinking=str(prompts.get("previous_thinking", "template")),
        ),
    )
    if task.prompts.previous_thinking not in PREVIOUS_THINKING:
        known = ", ".join(PREVIOUS_THINKING)
        raise ValueError(f"prompts.previous_thinking is {task.prompts.previous_thinking!r}; use one of {known}")
    if task.data.splits and task.data.hub and task.data.hub.get("split", "test") != task.data.splits.default:
        raise ValueError("data.hub.split and data.splits.default differ; a local file must give the hub's split")
    for template in (task.prompts.first_turn, task.prompts.correction):
        used = jinja2.meta.find_undeclared_variables(_JINJA.parse(template))
        unknown = used - set(task.data.required_fields) - set(task.data.optional_fields)
        if unknown:
            raise ValueError(
                f"a prompt uses {sorted(unknown)}, which are not in data.required_fields (or optional_fields)"
            )
    return task


def _splits(raw: dict[str, Any] | None) -> Splits | None:
    if raw is None:
        return None
    ranges = {str(name): (int(low), int(high)) for name, (low, high) in raw["ranges"].items()}
    if raw["default"] not in ranges:
        raise ValueError(f"data.splits.default '{raw['default']}' is not one of data.splits.ranges")
    return Splits(field=str(raw["field"]), default=str(raw["default"]), ranges=ranges)
