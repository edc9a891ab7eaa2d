"""The run directory: config.json, samples.jsonl and the summaries, each written atomically.

Files are written to a temporary sibling and renamed into place, so a crash never leaves a
half-written summary that looks complete.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import secrets
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import HarnessError

RUN_FILES = ("config.json", "samples.jsonl", "summary.json", "summary.csv", "summary.md")
JOURNAL = "journal.jsonl"
# atomic_write_text's temporary files of what a run writes, left behind only by a process killed
# while writing them (other files, such as `report`'s report.html, are written without the lock).
RUN_TEMPORARY = re.compile(rf"\.({'|'.join(map(re.escape, (*RUN_FILES, JOURNAL)))})\.[0-9a-f]{{12}}\.tmp")


def atomic_write_text(path: Path, text: str) -> None:
    # Created as open() creates files (0666 less the umask), so results get the journal's mode,
    # not mkstemp's private 0600.
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"  # see open_run_dir
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def json_text(obj: Any, **options: Any) -> str:
    """JSON as readable UTF-8 where it can be; \\u escapes where a string holds a lone surrogate (a
    program's error message, a completion read from a file), which UTF-8 cannot encode: such text
    must never cost the run its results, and the escapes read back as the same string."""
    text = json.dumps(obj, ensure_ascii=False, default=str, **options)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(obj, ensure_ascii=True, default=str, **options)
    return text


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json_text(obj, indent=2) + "\n")


def write_jsonl(path: Path, records: Iterable[dict]) -> None:
    atomic_write_text(path, "".join(json_text(r) + "\n" for r in records))


def read_jsonl(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def unfinished_runs(output_dir: str | Path) -> list[str]:
    """Names of the runs under `output_dir` that were started and never finished."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "config.json").is_file() and not (p / "summary.json").exists())


def require_resumable(output_dir: str, run_name: str) -> None:
    """--resume names a run that was started; a typo must not silently start a new one."""
    if (Path(output_dir) / run_name / "config.json").is_file():
        return
    waiting = unfinished_runs(output_dir)
    listed = f"unfinished runs there: {', '.join(waiting)}" if waiting else "it holds no unfinished run"
    raise HarnessError(
        f"--resume: there is no run '{run_name}' in {output_dir} ({listed}); "
        "check --run-name and --output-dir, or drop --resume to start a new run"
    )


@dataclass(frozen=True)
class LockErrors:
    """The error lines of a run directory that cannot be written or is held, each naming the fix
    the command that opens it offers (`{path}`, and `{error}` for the system's reason)."""

    unwritable: str
    in_use: str


RUN_ERRORS = LockErrors(
    "cannot write to output directory {path} ({error}); pass a writable --output-dir",
    "run {path} is in use by another score-eval process; wait for it to end, or choose another --run-name",
)


def _lock(fd: int, path: Path, errors: LockErrors = RUN_ERRORS) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        raise HarnessError(errors.in_use.format(path=path)) from exc


def require_not_in_use(output_dir: str, run_name: str) -> None:
    """Fail before the model loads when another process holds this run (open_run_dir locks it for good)."""
    path = Path(output_dir) / run_name
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return  # no run yet, or an unreadable one, which open_run_dir reports
    try:
        _lock(fd, path)
    finally:
        os.close(fd)


@contextmanager
def open_run_dir(output_dir: str, run_name: str) -> Iterator[tuple[Path, dict | None]]:
    """Make (or open) results/<run_name>/, hold it locked, and yield it with the config.json of the
    run already there, if any.

    A directory that holds a config.json is an earlier run of the same name: the caller continues
    it (after comparing settings)."""
    with locked_run_dir(Path(output_dir) / run_name, RUN_ERRORS) as path:
        yield path, _earlier_config(path)


@contextmanager
def locked_run_dir(path: Path, errors: LockErrors) -> Iterator[Path]:
    """Make (or open) a run directory and hold it locked. The lock is an exclusive flock on the
    directory itself, so two processes never write one run, it leaves no file behind, and the
    kernel drops it when the process ends, a crash included. Temporary run files of a process
    killed while writing are removed."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise HarnessError(errors.unwritable.format(path=path, error=exc.strerror)) from exc
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        _lock(fd, path, errors)
        # Held, so no other process is writing the run's files: their temporary files are a killed process's.
        for stray in path.iterdir():
            if RUN_TEMPORARY.fullmatch(stray.name):
                try:
                    stray.unlink(missing_ok=True)
                except OSError:
                    pass  # not a file of ours after all (a folder of that name): it harms nothing
        yield path
    finally:
        os.close(fd)


def _earlier_config(path: Path) -> dict | None:
    if (path / "config.json").is_file():
        try:
            return read_json(path / "config.json")
        except (OSError, json.JSONDecodeError) as exc:
            raise HarnessError(f"{path}/config.json is unreadable ({exc}); remove {path} to start over") from exc
    if any((path / f).exists() for f in RUN_FILES):
        raise HarnessError(f"{path} holds run files but no config.json; remove it or choose another --run-name")
    return None


class Journal:
    """Append-only log of a run in progress: one line per generated turn and one per graded turn.

    Lines are appended and flushed as work finishes, so a crash can lose at most the line being
    written; `replay` drops such a torn last line (and truncates the file to the last whole line)
    before the run continues. The journal is removed once samples.jsonl and the summaries exist.
    """

    def __init__(self, path: Path):
        import threading

        self.path = path
        self._lock = threading.Lock()

    def replay(self) -> list[dict]:
        if not self.path.exists():
            return []
        data = self.path.read_bytes()
        lines = data.split(b"\n")
        whole, tail = lines[:-1], lines[-1]  # `tail` is b"" when the file ends with a newline
        events = []
        for number, line in enumerate(whole, start=1):
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError as exc:
                if number == len(whole) and not tail:
                    whole = whole[:-1]  # a torn last line that happened to end in a newline byte
                    break
                raise HarnessError(
                    f"{self.path} line {number} is corrupt ({exc.msg}); remove the run directory to start over"
                ) from exc
        keep = sum(len(line) + 1 for line in whole)
        if keep != len(data):
            with self.path.open("r+b") as fh:
                fh.truncate(keep)
        return events

    def append(self, events: Iterable[dict]) -> None:
        text = "".join(json_text(e) + "\n" for e in events)
        if not text:
            return
        with self._lock, self.path.open("a", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
