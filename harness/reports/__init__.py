"""Reports written from graded records: per-run summaries (summary.py)."""
