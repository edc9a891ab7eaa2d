"""RUN_DIR/report.html: one self-contained page per run, to read the samples in a browser.

Everything the page needs is inside the file: the summary and breakdown tables, the plots as
base64 PNGs, the episodes as JSON, the CSS and the script, and KaTeX (katex/, fonts inlined) to
render LaTeX. It opens from the file system with no network. Diffs and answer positions are
computed here (harness.reports.textdiff), not in the browser, so the page and `score-eval show`
highlight the same words. The script builds the page with textContent only: model output is data,
never markup; KaTeX then turns the formulas in that text into math (its `trust` option stays off,
so a formula cannot add links, classes or styles).
"""

from __future__ import annotations

import base64
import json
from functools import cache
from importlib import resources
from itertools import pairwise
from pathlib import Path
from typing import Any

import jinja2

from harness.reports.plots import accuracy_figure, png_bytes, transitions_figure
from harness.reports.rows import BREAKDOWN_TITLES, breakdown, breakdown_fields, run_row, table_cells
from harness.reports.runs import RunData, load_run, problem_statements
from harness.reports.show import episode_transition
from harness.reports.textdiff import answer_span, widen_to_math, word_diff
from harness.stats import TRANSITION_LABELS, TRANSITIONS
from harness.store import atomic_write_text

TEMPLATE = "report.html.j2"
_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("harness.reports", "templates"),
    autoescape=jinja2.select_autoescape(["html", "j2"]),
    undefined=jinja2.StrictUndefined,
)


def episode_data(sample: dict[str, Any], problem: str | None, code: bool = False) -> dict[str, Any]:
    """What the page's script needs for one episode, diffs and answer spans included.

    For a code task the extracted "answer" is the whole program, so it is not marked in the response;
    the test result (`detail`: "passed", "failed: <the first failing assertion>") is shown instead."""
    turns = sample["turns"]
    return {
        "id": str(sample["id"]),
        "sample": sample.get("sample", 0),
        "answer": str(sample.get("answer")),
        "subject": sample.get("subject"),
        "level": None if sample.get("level") is None else str(sample["level"]),
        "problem": problem,
        "transition": episode_transition(sample),
        "turns": [
            {
                "response": t["response"],
                "extracted": t.get("extracted"),
                "correct": bool(t["correct"]),
                "finish_reason": t.get("finish_reason"),
                "completion_tokens": t.get("completion_tokens"),
                "detail": t.get("detail"),
                "span": None if code else _utf16_span(t["response"], _answer_span(t)),
            }
            for t in turns
        ],
        "diffs": [word_diff(a["response"], b["response"]) for a, b in pairwise(turns)],
    }


def _answer_span(turn: dict[str, Any]) -> tuple[int, int] | None:
    """Where to mark the extracted answer: the whole formula it sits in, so the mark never cuts one."""
    return widen_to_math(turn["response"], answer_span(turn["response"], turn.get("extracted")))


@cache
def katex_assets() -> dict[str, str]:
    """KaTeX's script, auto-render and CSS (fonts inlined), read once from the package (see katex/README.md)."""
    folder = resources.files("harness.reports") / "katex"
    return {
        "katex_js": (folder / "katex.min.js").read_text(encoding="utf-8"),
        "auto_render_js": (folder / "auto-render.min.js").read_text(encoding="utf-8"),
        "katex_css": (folder / "katex.css").read_text(encoding="utf-8"),
    }


def _utf16_span(text: str, span: tuple[int, int] | None) -> list[int] | None:
    """A span in UTF-16 code units, the string offsets of JavaScript (they differ beyond the BMP)."""
    if span is None:
        return None
    return [len(text[:i].encode("utf-16-le")) // 2 for i in span]


def script_json(value: Any) -> str:
    """JSON safe to place inside <script>: no '<', '>' or '&' that could close or confuse the tag."""
    text = json.dumps(value, ensure_ascii=False)
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


def _png_uri(figure) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(figure)).decode("ascii")


def html_text(run: RunData) -> str:
    row = run_row(run)
    summary = table_cells([row], ["run"], lambda r: [r.run])
    breakdowns = []
    for key in breakdown_fields([run]):
        rows = breakdown([run], key)
        title = BREAKDOWN_TITLES.get(key, key)
        breakdowns.append((title, table_cells(rows, [title], lambda r: [r.group], with_ci=True)))
    problems = problem_statements(run)
    episodes = [episode_data(s, problems.get(str(s["id"])), run.is_code) for s in run.samples]
    info = run.info
    decoding = (
        "greedy" if info.get("temperature", 0) == 0 else f"temperature {info['temperature']}, top-p {info['top_p']}"
    )
    return _ENV.get_template(TEMPLATE).render(
        name=run.name,
        run=info,
        started=run.started or "unknown",
        skipped=run.skipped,
        decoding=decoding,
        n=run.summary["n"],
        summary=summary,
        breakdowns=breakdowns,
        accuracy_png=_png_uri(accuracy_figure([row])),
        transitions_png=_png_uri(transitions_figure([row])),
        transitions=[(t, TRANSITION_LABELS[t]) for t in TRANSITIONS],
        data=script_json({"episodes": episodes, "labels": TRANSITION_LABELS, "code": run.is_code}),
        **katex_assets(),
    )


def write_run_html(run: RunData | str | Path) -> Path:
    """Write RUN_DIR/report.html for a run (a RunData or its directory); returns the path."""
    if not isinstance(run, RunData):
        run = load_run(run)
    path = run.path / "report.html"
    atomic_write_text(path, html_text(run))
    return path
