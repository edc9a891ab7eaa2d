"""Reading run directories back: one run with its samples, or every run under a folder.

Reports never recompute what a run recorded: the run-level numbers come from summary.json, and
samples.jsonl is read only for what the summary does not hold (breakdowns, pairing, the samples).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.grading.code import CODE_GRADERS
from harness.metrics import Graded
from harness.reports.settings import run_settings, setting_text
from harness.store import read_jsonl


@dataclass
class RunData:
    """A finished run directory: summary.json, samples.jsonl and (when present) config.json.

    A run is known by its directory, not by the name summary.json recorded: a copied run keeps
    the old name inside, and two runs must never share a label in a report.
    """

    path: Path
    summary: dict[str, Any]
    samples: list[dict[str, Any]]  # the scored episodes; skipped ones are counted, not kept
    config: dict[str, Any] | None = None
    skipped: int = 0
    label: str | None = None  # set by load_runs where several runs are shown together

    @property
    def info(self) -> dict[str, Any]:
        return self.summary["run"]

    @property
    def name(self) -> str:
        """The label a report gives this run: its directory's name unless load_runs chose a longer one."""
        return self.label or self.path.resolve().name

    @property
    def task(self) -> str:
        return self.info["task"]

    @property
    def model(self) -> str:
        return self.info["model"]

    @property
    def turns(self) -> int:
        return int(self.info["turns"])

    @property
    def is_code(self) -> bool:
        """A code task's `extracted` is a whole program, its gold answer the canonical solution, and
        its `detail` the test result ("passed", "failed: <the first failing assertion>")."""
        grader = ((self.config or {}).get("task") or {}).get("grader")
        return (grader or self.task) in CODE_GRADERS

    @property
    def settings(self) -> dict[str, Any]:
        """The settings that change a result (harness.reports.settings)."""
        return run_settings(self.info, self.config)

    @property
    def started(self) -> str | None:
        """When the run began: summary.json's run block once held it, config.json holds it now."""
        return self.info.get("started") or (self.config or {}).get("started")

    @cached_property
    def graded(self) -> list[Graded]:
        """One Graded record per sample line, in file order (aligned with `samples`)."""
        return [Graded(str(s["id"]), [bool(t["correct"]) for t in s["turns"]]) for s in self.samples]


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise HarnessError(
            f"{path} is not valid JSON ({exc.msg}, line {exc.lineno}); rerun or restore the run"
        ) from exc


def load_run(path: str | Path) -> RunData:
    """Read a run directory written by `score-eval run`."""
    path = Path(path)
    if not path.is_dir():
        raise HarnessError(
            f"no run directory {path}; pass a folder written by `score-eval run` (see `score-eval runs`)"
        )
    for name in ("summary.json", "samples.jsonl"):
        if not (path / name).exists():
            raise HarnessError(
                f"{path} holds no {name}, so it is not a finished run; pass a folder written by `score-eval run`"
            )
    summary = _read_json(path / "summary.json")
    try:
        samples = read_jsonl(path / "samples.jsonl")
    except json.JSONDecodeError as exc:
        raise HarnessError(
            f"{path / 'samples.jsonl'} line {exc.lineno} is not valid JSON; rerun or restore the run"
        ) from exc
    # Skipped episodes (e.g. a prompt longer than the context) have no verdict at every turn and are
    # left out of the summary, so the reports leave them out too.
    scored = [s for s in samples if not s.get("skipped")]
    if not scored:
        raise HarnessError(f"{path / 'samples.jsonl'} holds no scored episode; the run recorded nothing to report")
    config = _read_json(path / "config.json") if (path / "config.json").exists() else None
    return RunData(path=path, summary=summary, samples=scored, config=config, skipped=len(samples) - len(scored))


def run_labels(paths: Sequence[str | Path]) -> list[str]:
    """A distinct label per run directory: its name, with as many parent folders as it takes to
    tell apart directories of the same name; the same directory given again gets " #2", " #3"."""
    resolved = [Path(p).resolve() for p in paths]

    def label(path: Path) -> str:
        depth = 1
        while depth < len(path.parts) and any(
            other != path and other.parts[-depth:] == path.parts[-depth:] for other in resolved
        ):
            depth += 1
        return str(Path(*path.parts[-depth:]))

    seen: Counter[str] = Counter()
    labels = []
    for path in resolved:
        text = label(path)
        seen[text] += 1
        labels.append(text if seen[text] == 1 else f"{text} #{seen[text]}")
    return labels


def load_runs(paths: Sequence[str | Path]) -> list[RunData]:
    """Read several run directories, each labelled distinctly (see run_labels)."""
    runs = [load_run(p) for p in paths]
    for run, label in zip(runs, run_labels(paths)):
        run.label = label
    return runs


@dataclass(frozen=True)
class RunListing:
    """One line of `score-eval runs`; metrics are None for a run that has no summary yet.

    `name` is the directory's; `recorded_name` is what the run called itself, which differs for a
    copied or renamed run directory.
    """

    path: Path
    name: str
    recorded_name: str
    task: str | None
    model: str | None
    settings: dict[str, Any]  # harness.reports.settings.run_settings
    n: int | None
    acc_t1: float | None
    acc_tk: float | None

    @property
    def turns(self) -> int | None:
        return self.settings["turns"]

    @property
    def date(self) -> str | None:
        return self.settings["date"]


def find_runs(root: str | Path) -> list[RunListing]:
    """Every run directory under root (any depth), oldest first.

    A folder counts as a run when it holds summary.json or config.json; one with only config.json
    is a run that is still going or that stopped early, listed so it is not forgotten.
    """
    root = Path(root)
    if not root.is_dir():
        raise HarnessError(f"no directory {root}; pass the folder that holds your runs (default: results/)")
    run_dirs = sorted({p.parent for pattern in ("summary.json", "config.json") for p in root.rglob(pattern)})
    listings = [listing for d in run_dirs if (listing := _listing(d)) is not None]
    return sorted(listings, key=lambda r: (r.date or "", r.name))


def _listing(path: Path) -> RunListing | None:
    """The folder's listing, or None when its config.json is someone else's (e.g. a model checkpoint)."""
    config = _read_json(path / "config.json") if (path / "config.json").exists() else None
    if (path / "summary.json").exists():
        doc = _read_json(path / "summary.json")
        run = doc["run"]
        return RunListing(
            path=path,
            name=path.name,
            recorded_name=run["name"],
            task=run["task"],
            model=run["model"],
            settings=run_settings(run, config),
            n=doc["n"],
            acc_t1=doc["acc_t1"],
            acc_tk=doc[f"acc_t{int(run['turns'])}"],
        )
    if not isinstance(config, dict) or "run_name" not in config or "settings" not in config:
        return None
    settings = config["settings"]
    return RunListing(
        path=path,
        name=path.name,
        recorded_name=config.get("run_name", path.name),
        task=settings.get("task"),
        model=(config.get("engine") or {}).get("model"),
        settings=run_settings({}, config),
        n=None,
        acc_t1=None,
        acc_tk=None,
    )


def runs_table(listings: list[RunListing], root: str | Path):
    """The listing as a rich Table: each run's path, what it ran, the settings that change a result
    (so runs that are not comparable look different; "tokens" is max_new_tokens, "data" the start of the
    data file's sha256), its date to the minute and accuracies in percent."""
    from rich.table import Table

    table = Table(title=f"runs under {root}")
    for column, justify in [
        ("run directory", "left"), ("task", "left"), ("model", "left"), ("backend", "left"), ("turns", "right"),
        ("samples", "right"), ("temp.", "right"), ("top_p", "right"), ("tokens", "right"), ("limit", "right"),
        ("data", "left"), ("n", "right"), ("date (UTC)", "left"), ("acc_t1", "right"), ("acc_tK", "right"),
    ]:  # fmt: skip
        table.add_column(column, justify=justify)
    for r in listings:
        renamed = f" (recorded as {r.recorded_name})" if r.recorded_name != r.name else ""
        settings = [
            setting_text(key, r.settings[key])
            for key in ("backend", "turns", "samples", "temperature", "top_p", "max_new_tokens", "limit", "data_sha256")
        ]
        table.add_row(
            f"{r.path}{renamed}",
            r.task or "—",
            r.model or "—",
            *settings,
            str(r.n) if r.n is not None else "no summary yet",
            r.date[:16].replace("T", " ") if r.date else "—",
            f"{100 * r.acc_t1:.1f}%" if r.acc_t1 is not None else "—",
            f"{100 * r.acc_tk:.1f}%" if r.acc_tk is not None else "—",
        )
    if not listings:
        table.caption = "no runs found"
    return table


def problem_statements(run: RunData) -> dict[str, str]:
    """Problem text by id, read back from the run's data file when it is still there.

    samples.jsonl keeps ids, answers and the task's keep_fields, not the problem text, so reports
    look it up in the local file config.json names (the task's first required field that is not
    the answer). Best effort: a hub dataset, a moved file or an unreadable task gives {}, and the
    reports show the problem id alone.
    """
    from harness.data import load_problems
    from harness.tasks import load_task

    data = (run.config or {}).get("data") or {}
    if data.get("kind") != "file" or not Path(data.get("location", "")).is_file():
        return {}
    source = ((run.config or {}).get("task") or {}).get("source")
    try:
        task = load_task(source if source and Path(source).is_file() else run.task)
        problems, _ = load_problems(task, data["location"], split="all")  # any split the run used
    except (HarnessError, OSError, ValueError):
        return {}
    text_fields = [f for f in task.data.required_fields if f != task.data.answer_field]
    if not text_fields:
        return {}
    return {p.id: str(p.fields.get(text_fields[0], "")) for p in problems}
