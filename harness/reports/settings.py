"""The settings that change a run's result, read back from a run directory, and where runs differ.

Two runs compare models only when everything else that moves the numbers is equal: the engine,
the number of turns and samples, the decoding, the token budget, the problems (limit and data
file). summary.csv and `score-eval runs` carry these settings so such runs never look alike, and
`score-eval report` names every one of them that differs between runs of the same task.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

# In summary.csv's order. `seed` and `date` are recorded but never warned about: every run has its
# own date, and sampled runs repeated with other seeds are the usual way to measure noise.
SETTINGS = (
    "backend", "turns", "samples", "temperature", "top_p", "max_new_tokens", "limit", "seed", "date", "data_sha256",
)  # fmt: skip
NOT_COMPARED = ("seed", "date")


def run_settings(info: dict[str, Any], config: dict[str, Any] | None) -> dict[str, Any]:
    """The result-changing settings of one run, from summary.json's `run` block and config.json.

    A value the run did not record (an older run, a run without config.json) is None; a limit of
    None in a recorded config means every problem and reads "all".
    """
    config = config or {}
    options = config.get("settings") or {}
    sampling = config.get("sampling") or {}
    data = config.get("data") or {}
    return {
        "backend": info.get("backend") or options.get("backend"),
        "turns": info.get("turns", options.get("turns")),
        "samples": info.get("samples", options.get("samples")),
        "temperature": info.get("temperature", options.get("temperature")),
        "top_p": info.get("top_p", options.get("top_p")),
        "max_new_tokens": sampling.get("max_new_tokens", options.get("max_new_tokens")),
        "limit": (options.get("limit") or "all") if "settings" in config else None,
        "seed": sampling.get("seed", options.get("seed")),
        "date": info.get("started") or config.get("started"),
        "data_sha256": data.get("sha256"),
    }


def setting_text(key: str, value: Any) -> str:
    """A setting as a warning or a table shows it: a missing value is a dash, a data hash its first 12 digits."""
    if value is None:
        return "—"
    return str(value)[:12] if key == "data_sha256" else str(value)


def differing_settings(runs: Sequence[tuple[str, dict[str, Any]]]) -> list[str]:
    """One line per compared setting that differs between the (label, settings) given, naming each
    run's value, e.g. "temperature: 0.0 (greedy-run), 0.8 (sampled-run)". Runs that did not record
    a setting are left out of its comparison."""
    lines = []
    for key in SETTINGS:
        if key in NOT_COMPARED:
            continue
        known = [(label, settings[key]) for label, settings in runs if settings.get(key) is not None]
        if any(value != known[0][1] for _, value in known):
            lines.append(f"{key}: " + ", ".join(f"{setting_text(key, value)} ({label})" for label, value in known))
    return lines
