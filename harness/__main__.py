"""`python -m harness` is `score-eval`."""

from harness.cli import main

main()
