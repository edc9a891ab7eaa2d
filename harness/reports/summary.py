"""summary.json, summary.csv and summary.md for one run.

summary.json holds the metrics as top-level keys (fractions in [0, 1]), plus `ci95`, `counts` and
`run`; summary.csv is one row: the run, the settings that change a result (harness.reports.settings,
so two runs that differ in them never give identical rows), the same metric columns and
`<metric>_ci_low/_ci_high`; summary.md is the same as a GitHub-readable table in percentages.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from harness.metrics import metric_names, turn_pairs
from harness.reports.settings import SETTINGS, run_settings
from harness.store import atomic_write_text, read_json, write_json


def summary_document(summary: dict, run: dict[str, Any]) -> dict:
    """pass@k (`pass@{k}_t{t}`, present when problems have several samples) sits beside the metrics."""
    return {
        **summary["metrics"],
        **summary.get("pass_at_k", {}),
        "ci95": summary["ci95"],
        "counts": summary["counts"],
        "run": run,
    }


def pass_at_k_names(document: dict) -> list[str]:
    return [k for k in document if k.startswith("pass@")]


def metric_label(name: str) -> str:
    """Paper-style label: acc_t1 -> Accuracy@t1, delta_i2c_t1_t2 -> Δi→c(t1,t2)."""
    parts = name.split("_")
    if parts[0] == "acc":
        return f"Accuracy@{parts[1]}"
    if parts[0] == "delta" and len(parts) == 3:
        return f"Δ({parts[1]},{parts[2]})"
    if parts[0] == "delta":
        arrow = {"i2c": "Δi→c", "c2i": "Δc→i"}[parts[1]]
        return f"{arrow}({parts[2]},{parts[3]})"
    return name


def csv_text(document: dict, config: dict[str, Any] | None = None) -> str:
    """One row; `config` is the run's config.json, where the settings beyond summary.json's `run` live."""
    run = document["run"]
    names = metric_names(run["turns"])
    settings = run_settings(run, config)
    header = ["run", "task", "model", *SETTINGS, *names]
    header += [f"{m}_ci_{side}" for m in names[1:] for side in ("low", "high")]
    row = [run["name"], run["task"], run["model"], *["" if settings[k] is None else settings[k] for k in SETTINGS]]
    row += [document[m] for m in names]
    row += [document["ci95"][m][i] for m in names[1:] for i in (0, 1)]
    header += pass_at_k_names(document)
    row += [document[m] for m in pass_at_k_names(document)]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerow(row)
    return buf.getvalue()


def markdown_text(document: dict) -> str:
    run = document["run"]
    turns = run["turns"]
    decoding = "greedy" if run["temperature"] == 0 else f"temperature {run['temperature']}, top-p {run['top_p']}"
    lines = [
        f"# {run['name']}",
        "",
        f"Task **{run['task']}**, model **{run['model']}** ({run['backend']}), {turns} turns, {decoding}; "
        f"n = {document['n']} episodes ({run['problems']} problems × {run['samples']} "
        f"sample{'s' * (run['samples'] != 1)}).",
        "",
        "| metric | value | 95% CI |",
        "|---|---:|---|",
    ]
    for name in metric_names(turns)[1:]:
        low, high = document["ci95"][name]
        lines.append(f"| {metric_label(name)} | {100 * document[name]:.1f}% | [{100 * low:.1f}, {100 * high:.1f}] |")
    if pass_at_k_names(document):
        lines += ["", "| pass@k (unbiased estimator) | value |", "|---|---:|"]
        lines += [f"| {m.replace('_', ' at ')} | {100 * document[m]:.1f}% |" for m in pass_at_k_names(document)]
    counts = document["counts"]
    lines += ["", "Counts:", ""]
    lines += [f"- right at t{t}: {counts[f'correct_t{t}']}" for t in range(1, turns + 1)]
    lines += [
        f"- t{a}→t{b}: wrong→right {counts[f'i2c_t{a}_t{b}']}, right→wrong {counts[f'c2i_t{a}_t{b}']}"
        for a, b in turn_pairs(turns)
    ]
    lines += [
        "",
        "Δi→c and Δc→i are shares of all episodes; Accuracy@tb = Accuracy@ta + Δi→c − Δc→i. "
        "Intervals: percentile bootstrap over problems, paired across turns.",
        "",
    ]
    return "\n".join(lines)


def write_summaries(run_dir: Path, summary: dict, run: dict[str, Any]) -> dict:
    document = summary_document(summary, run)
    config = read_json(run_dir / "config.json") if (run_dir / "config.json").exists() else None
    atomic_write_text(run_dir / "summary.csv", csv_text(document, config))
    atomic_write_text(run_dir / "summary.md", markdown_text(document))
    write_json(run_dir / "summary.json", document)
    return document
