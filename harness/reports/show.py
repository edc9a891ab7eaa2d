"""`score-eval show`: read what the model changed between its attempts, in the terminal.

Episodes are picked by their transition between turn 1 and the last turn (see `harness.stats`),
by problem id, or both; each is printed with the gold answer, every turn's response with the
extracted answer highlighted, and a word-level diff between consecutive attempts.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.panel import Panel
from rich.rule import Rule
from rich.text import Text

from harness.errors import HarnessError
from harness.reports.runs import RunData, load_run, problem_statements
from harness.reports.textdiff import answer_span, word_diff
from harness.stats import TRANSITION_LABELS, TRANSITIONS, transition

DIFF_STYLES = {"=": "", "-": "bold red strike", "+": "bold green"}
# Without colour (piped, NO_COLOR) changes are bracketed the way `git diff --word-diff` does.
DIFF_MARKERS = {"=": ("", ""), "-": ("[-", "-]"), "+": ("{+", "+}")}


def episode_transition(sample: dict[str, Any]) -> str:
    """The sample's transition between turn 1 and its last turn."""
    turns = sample["turns"]
    return transition(turns[0]["correct"], turns[-1]["correct"])


def select_samples(
    samples: Sequence[dict[str, Any]],
    transition_name: str | None = None,
    problem_id: str | None = None,
) -> list[dict[str, Any]]:
    """Samples matching every given filter, in file order."""
    if transition_name is not None and transition_name not in TRANSITIONS:
        raise HarnessError(f"unknown transition '{transition_name}'; choose one of: {', '.join(TRANSITIONS)}")
    return [
        s
        for s in samples
        if (transition_name is None or episode_transition(s) == transition_name)
        and (problem_id is None or str(s["id"]) == problem_id)
    ]


def response_text(turn: dict[str, Any], highlight: bool = True) -> Text:
    """The response with its extracted answer highlighted green (right) or red (wrong); code tasks
    pass highlight=False, since their extracted "answer" is the whole program."""
    text = Text(turn["response"])
    span = answer_span(turn["response"], turn.get("extracted")) if highlight else None
    if span is not None:
        text.stylize("bold black on green" if turn["correct"] else "bold white on red", *span)
    return text


def diff_text(before: str, after: str, markers: bool = False) -> Text:
    if before == after:
        return Text("(no change: the same response again)", style="dim")
    text = Text()
    for op, segment in word_diff(before, after):
        opening, closing = DIFF_MARKERS[op] if markers else ("", "")
        text.append(opening + segment + closing, style=DIFF_STYLES[op])
    return text


def turn_title(index: int, turn: dict[str, Any], code: bool = False) -> Text:
    """One line: verdict, the extracted answer (MATH; a code task's program stays in the body), length."""
    verdict = Text("right", style="bold green") if turn["correct"] else Text("wrong", style="bold red")
    extracted = turn.get("extracted")
    return Text.assemble(
        f"turn {index} · ",
        verdict,
        "" if code else f" · extracted: {extracted if extracted is not None else '(none)'}",
        f" · {turn.get('finish_reason', '?')}, {turn.get('completion_tokens', '?')} tokens",
    )


def turn_body(turn: dict[str, Any], code: bool = False) -> Group:
    """The response; under a code task's response, the test result that decided it."""
    parts: list[Any] = [response_text(turn, highlight=not code)]
    if code and turn.get("detail"):
        parts.append(Text.assemble(("\ntests: ", "bold"), (turn["detail"], "green" if turn["correct"] else "red")))
    return Group(*parts)


def gold_text(sample: dict[str, Any], code: bool = False) -> Text:
    """The gold answer on its line; a code task's canonical solution below its label, line breaks kept."""
    answer = str(sample.get("answer"))
    if code:
        return Text.assemble(("canonical solution:\n", "bold"), (answer.rstrip("\n"), "yellow"))
    return Text.assemble(("gold answer: ", "bold"), (answer, "bold yellow"))


def episode_renderable(
    sample: dict[str, Any], problem: str | None = None, markers: bool = False, code: bool = False
) -> Group:
    name = episode_transition(sample)
    where = " · ".join(str(sample[k]) for k in ("subject", "level") if sample.get(k) is not None)
    header = f"{sample['id']} · sample {sample.get('sample', 0)} · {TRANSITION_LABELS[name]} ({name})"
    parts: list[Any] = [Rule(header + (f" · {where}" if where else ""), style="cyan")]
    if problem:
        parts.append(Text.assemble(("problem: ", "bold"), problem))
    parts.append(gold_text(sample, code))
    turns = sample["turns"]
    for i, turn in enumerate(turns, start=1):
        parts.append(Panel(turn_body(turn, code), title=turn_title(i, turn, code), title_align="left"))
        if i < len(turns):
            parts.append(
                Panel(
                    diff_text(turn["response"], turns[i]["response"], markers),
                    title=f"changes turn {i} → turn {i + 1} "
                    + ("([-removed-] {+added+})" if markers else "(removed struck red, added green)"),
                    title_align="left",
                    border_style="dim",
                )
            )
    return Group(*parts)


def show_run(
    run_dir: str | Path,
    console: Console,
    transition_name: str | None = None,
    problem_id: str | None = None,
    limit: int | None = 5,
) -> int:
    """Print the chosen episodes of a run; returns how many matched before the limit."""
    run: RunData = load_run(run_dir)
    if problem_id is not None and not any(str(s["id"]) == problem_id for s in run.samples):
        raise HarnessError(
            f"{run.path} holds no problem with id '{problem_id}'; ids look like '{run.samples[0]['id']}'"
        )
    matched = select_samples(run.samples, transition_name, problem_id)
    shown = matched if limit is None else matched[:limit]
    problems = problem_statements(run) if shown else {}
    markers = console.color_system is None
    for sample in shown:
        console.print(episode_renderable(sample, problems.get(str(sample["id"])), markers, run.is_code))
        console.print()
    what = f"{TRANSITION_LABELS[transition_name]} ({transition_name}) " if transition_name else ""
    console.print(f"{run.name}: {len(shown)} of {len(matched)} {what}episode(s) shown (of {len(run.samples)}).")
    return len(matched)
