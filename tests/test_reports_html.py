"""report.html without a browser: self-contained, and its data is what the run recorded.

tests/test_html_browser.py drives the same page in headless Chromium.
"""

from __future__ import annotations

import json
import re

import pytest

from harness.reports.html import episode_data, script_json, write_run_html
from tests.reports_helpers import CANONICAL, FAILED, make_code_run, make_run


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> str:
    run_dir = make_run(tmp_path_factory.mktemp("html"), "base")
    path = write_run_html(run_dir)
    assert path == run_dir / "report.html"
    return path.read_text(encoding="utf-8")


def _data(page: str) -> dict:
    raw = re.search(r'<script id="episodes-data" type="application/json">(.*?)</script>', page, re.DOTALL).group(1)
    return json.loads(raw)


def test_page_needs_nothing_outside_the_file(page):
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "<link" not in page and "@import" not in page
    markup = re.sub(r"<script\b.*?</script>", "", page, flags=re.DOTALL)  # KaTeX's code writes <img> markup
    images = re.findall(r'<img[^>]*src="([^"]+)"', markup)
    assert len(images) == 2 and all(src.startswith("data:image/png;base64,") for src in images)
    # KaTeX's fonts are inside the page too.
    assert "url(fonts/" not in page and page.count("url(data:font/woff2;base64,") == 20


def test_page_holds_every_episode_with_its_transition(page):
    episodes = _data(page)["episodes"]
    assert [(e["id"], e["transition"]) for e in episodes] == [
        ("p1", "c2c"), ("p2", "i2c"), ("p3", "c2i"), ("p4", "i2i"), ("p5", "c2i"), ("p6", "i2i"),
    ]  # fmt: skip
    p2 = episodes[1]
    assert (p2["subject"], p2["level"], p2["answer"], p2["problem"]) == (
        "Algebra",
        "2",
        "7",
        "[p2] What is the answer to problem p2?",
    )
    assert [t["extracted"] for t in p2["turns"]] == ["5", "7"]


def test_page_shows_the_summary_and_breakdowns(page):
    assert "<td>50.0 [16.7, 83.3]</td>" in page
    assert "<summary>By subject</summary>" in page and "<summary>By level</summary>" in page


def test_model_output_cannot_close_the_data_script():
    hostile = "</script><script>alert(1)</script> & more"
    text = script_json({"response": hostile})
    assert "</script>" not in text and "<" not in text
    assert json.loads(text) == {"response": hostile}


def test_answer_span_counts_utf16_units_as_javascript_does():
    # "😀" is one Python character but two UTF-16 units: the 7 is Python index 6 but JavaScript index 7.
    sample = {
        "id": "x",
        "answer": "7",
        "turns": [{"response": "😀 so: 7", "extracted": "7", "correct": True}],
    }
    assert "😀 so: 7".rindex("7") == 6
    assert episode_data(sample, None)["turns"][0]["span"] == [7, 8]


def test_a_code_tasks_page_carries_the_test_results_and_marks_no_program_as_an_answer(tmp_path):
    page = write_run_html(make_code_run(tmp_path)).read_text(encoding="utf-8")
    data = _data(page)
    assert data["code"] is True
    [episode] = data["episodes"]
    assert episode["answer"] == CANONICAL
    assert [t["detail"] for t in episode["turns"]] == [FAILED, "passed"]
    assert [t["span"] for t in episode["turns"]] == [None, None]
    assert _data(write_run_html(make_run(tmp_path, "base")).read_text(encoding="utf-8"))["code"] is False


def test_page_bundles_katex_and_marks_a_whole_formula_as_the_answer(page):
    assert "renderMathInElement" in page and 'id="math-toggle"' in page
    sample = {"id": "x", "answer": "7", "turns": [{"response": "so $x = 7$.", "extracted": "7", "correct": True}]}
    # The answer 7 sits in the formula $x = 7$ (characters 3 to 10): the mark takes the formula whole.
    assert episode_data(sample, None)["turns"][0]["span"] == [3, 10]
