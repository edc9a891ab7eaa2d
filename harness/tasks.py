"""Declarative task definitions: read `tasks/*.yaml` into Task objects.

A task is data (where problems come from, which fields they need), prompts (the turn-1 template
and the correction instruction) and the name of a registered grader. Adding a benchmark or a
prompt variant is adding a YAML file; no code changes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
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


@dataclass(frozen=True)
class Prompts:
    first_turn: str
    correction: str
    system: str | None = None


@dataclass(frozen=True)
class DataSpec:
    required_fields: tuple[str, ...]
    answer_field: str
    id_field: str | None = None
    keep_fields: tuple[str, ...] = ()
    hub: dict[str, Any] | None = None
    package: dict[str, Any] | None = None  # {module, file}: data shipped inside an installed package
    optional_fields: tuple[str, ...] = ()  # fields a template may use when a record has them
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
        """Everything that shapes the prompts and grading, for config.json."""
        return {
            "name": self.name,
            "grader": self.grader,
            "source": self.source,
            "prompts": {
                "system": self.prompts.system,
                "first_turn": self.prompts.first_turn,
                "correction": self.prompts.correction,
            },
            "generation": dict(self.generation),
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
        raise HarnessError(f"task file {path} is malformed ({exc}); compare it with tasks/math.yaml") from exc


def _parse(raw: dict[str, Any], source: str) -> Task:
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
            generator=data.get("generator"),
        ),
        prompts=Prompts(
            first_turn=str(prompts["first_turn"]),
            correction=str(prompts["correction"]),
            system=prompts.get("system"),
        ),
    )
    for template in (task.prompts.first_turn, task.prompts.correction):
        used = jinja2.meta.find_undeclared_variables(_JINJA.parse(template))
        unknown = used - set(task.data.required_fields) - set(task.data.optional_fields)
        if unknown:
            raise ValueError(
                f"a prompt uses {sorted(unknown)}, which are not in data.required_fields (or optional_fields)"
            )
    return task
