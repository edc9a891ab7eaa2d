"""The run directory: config.json, samples.jsonl and the summaries, each written atomically.

Files are written to a temporary sibling and renamed into place, so a crash never leaves a
half-written summary that looks complete.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from harness.errors import HarnessError

RUN_FILES = ("config.json", "samples.jsonl", "summary.json", "summary.csv", "summary.md")


def atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


def write_jsonl(path: Path, records: Iterable[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in records))


def read_jsonl(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def create_run_dir(output_dir: str, run_name: str) -> Path:
    """Make results/<run_name>/, refusing to overwrite a run that already holds results."""
    path = Path(output_dir) / run_name
    if any((path / f).exists() for f in RUN_FILES):
        raise HarnessError(f"run directory {path} already holds a run; choose another --run-name or remove it")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise HarnessError(f"cannot write to output directory {path} ({exc.strerror}); pass a writable --output-dir") from exc
    return path
