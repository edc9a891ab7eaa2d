"""The training curves of train_log.csv as one PNG: rewards, self-correction, KL, shaped returns,
response lengths, gradient norm, loss, held-out accuracy."""

from __future__ import annotations

from pathlib import Path


def plot_log(log_path: Path, png_path: Path) -> Path | None:
    import csv
    import math

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with Path(log_path).open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        return None
    x = list(range(1, len(rows) + 1))  # steps in order: Stage I, Stage II (and again, with --rounds)

    def col(name: str) -> list[float]:
        return [float(r[name]) if r.get(name) not in (None, "") else float("nan") for r in rows]

    panels = [
        ("reward (training batch)", ["reward_t1", "reward_t2"]),
        ("self-correction (training batch)", ["delta", "i2c", "c2i"]),
        ("KL to the base model (sum over attempt tokens)", ["kl_t1", "kl_t2"]),
        ("shaped returns (reward − β·KL, Stage II with the α bonus)", ["return_t1", "return_t2"]),
        ("response length (tokens)", ["len_t1", "len_t2"]),
        ("gradient norm before clipping, loss", ["grad_norm", "loss"]),
    ]
    if any(r.get("eval_acc_t1") for r in rows):
        panels.append(("held-out evaluation", ["eval_acc_t1", "eval_acc_t2", "eval_delta"]))
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 2.4 * len(panels)), sharex=True)
    # A dotted line wherever the stage changes.
    boundaries = [i for i in range(1, len(rows)) if rows[i]["stage"] != rows[i - 1]["stage"]]
    for ax, (title, names) in zip(axes, panels):
        for name in names:
            values = col(name)
            style = "o-" if name.startswith("eval_") else "-"
            pts = [(xi, v) for xi, v in zip(x, values) if not math.isnan(v)]
            if pts:
                ax.plot(*zip(*pts), style, label=name, markersize=3)
        for boundary in boundaries:
            ax.axvline(boundary + 0.5, color="grey", linestyle=":", linewidth=1)
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7, loc="best")
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("step (the stage changes at each dotted line)")
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return Path(png_path)
