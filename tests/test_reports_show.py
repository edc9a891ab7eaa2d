"""`score-eval show`: word diffs, answer highlighting, choosing episodes, and the printed page."""

from __future__ import annotations

from itertools import pairwise

import pytest
from rich.console import Console

from harness.errors import HarnessError
from harness.reports.runs import load_run
from harness.reports.show import diff_text, response_text, select_samples, show_run
from harness.reports.textdiff import answer_span, widen_to_math, word_diff
from tests.conftest import run_cli
from tests.reports_helpers import FAILED, make_code_run, make_run


def test_word_diff_marks_only_the_changed_words():
    assert word_diff("x = 2 so the answer is 4", "x = 3 so the answer is 6") == [
        ("=", "x = "),
        ("-", "2"),
        ("+", "3"),
        ("=", " so the answer is "),
        ("-", "4"),
        ("+", "6"),
    ]


def test_word_diff_rebuilds_both_texts():
    before = "First line.\nThe total is $12$.  Done"
    after = "First line, revised.\nThe total is $14$. Done now"
    segments = word_diff(before, after)
    assert "".join(t for op, t in segments if op != "+") == before
    assert "".join(t for op, t in segments if op != "-") == after
    assert all(a[0] != b[0] for a, b in pairwise(segments))


def test_word_diff_keeps_a_formula_whole_so_a_page_can_render_it():
    assert word_diff("so $x = 2$.", "so $x = 3$.") == [("=", "so "), ("-", "$x = 2$"), ("+", "$x = 3$"), ("=", ".")]
    assert word_diff(r"is \(a + b\) here", r"is \(a + c\) here")[1:3] == [("-", r"\(a + b\)"), ("+", r"\(a + c\)")]
    # A lone dollar (a price) opens no formula: the words around it still diff one by one.
    assert word_diff("costs $5 today", "costs $6 today") == [("=", "costs $"), ("-", "5"), ("+", "6"), ("=", " today")]


def test_widen_to_math_takes_the_formula_around_an_answer():
    text = r"so $\boxed{7}$ and 7"
    assert widen_to_math(text, (text.index("7"), text.index("7") + 1)) == (3, 14)
    assert text[3:14] == r"$\boxed{7}$"
    assert widen_to_math(text, (len(text) - 1, len(text))) == (len(text) - 1, len(text))
    assert widen_to_math(text, None) is None


def test_word_diff_of_identical_texts_is_one_kept_segment():
    assert word_diff("same text", "same text") == [("=", "same text")]
    assert word_diff("", "new") == [("+", "new")]


def test_answer_span_is_the_last_occurrence_of_the_extracted_answer():
    response = "We get 4 apples, so the final answer is $4$."
    assert answer_span(response, "4") == (41, 42)
    assert response[41:42] == "4"
    assert answer_span(response, None) is None
    assert answer_span(response, "\\frac{1}{2}") is None


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("show"), "base")


def test_select_samples_by_transition_and_id(base_run):
    samples = load_run(base_run).samples
    assert [s["id"] for s in select_samples(samples, "c2i")] == ["p3", "p5"]
    assert [s["id"] for s in select_samples(samples, "c2i", "p5")] == ["p5"]
    assert [s["id"] for s in select_samples(samples, problem_id="p4")] == ["p4"]
    with pytest.raises(HarnessError, match="unknown transition"):
        select_samples(samples, "up")


def test_response_text_highlights_the_answer_in_its_verdict_colour(base_run):
    sample = select_samples(load_run(base_run).samples, "i2c")[0]
    wrong, right = (response_text(t) for t in sample["turns"])
    [wrong_span] = [s for s in wrong.spans if "red" in str(s.style)]
    assert wrong.plain[wrong_span.start : wrong_span.end] == "5"
    [right_span] = [s for s in right.spans if "green" in str(s.style)]
    assert right.plain[right_span.start : right_span.end] == "7"


def test_diff_text_styles_removed_and_added_words():
    text = diff_text("gives 5.", "gives 7.")
    assert text.plain == "gives 5.7."
    styled = {text.plain[s.start : s.end]: str(s.style) for s in text.spans}
    assert "strike" in styled["5."] and "green" in styled["7."]
    assert diff_text("gives 5.", "gives 7.", markers=True).plain == "gives [-5.-]{+7.+}"


def test_show_run_prints_only_the_chosen_transition(base_run):
    console = Console(record=True, width=100, color_system=None)
    matched = show_run(base_run, console, transition_name="c2i", limit=1)
    out = console.export_text()
    assert matched == 2
    assert "p3 · sample 0 · right→wrong (c2i) · Geometry · 2" in out
    assert "gold answer: 9" in out
    assert "problem: [p3] What is the answer to problem p3?" in out
    assert "turn 1 · right · extracted: 9" in out and "turn 2 · wrong · extracted: 8" in out
    # Without colour, changes are bracketed: 9 became 8.
    assert "gives [-9.-]{+8.+}" in out
    assert "p5" not in out.split("base: ")[0]
    assert "base: 1 of 2 right→wrong (c2i) episode(s) shown (of 6)." in out


def test_show_command_prints_wrong_to_right_episodes(base_run):
    result = run_cli(["show", str(base_run), "--transition", "i2c"])
    assert result.returncode == 0, result.stderr
    assert "p2 · sample 0 · wrong→right (i2c)" in result.stdout
    assert "gold answer: 7" in result.stdout
    assert "1 of 1 wrong→right (i2c)" in result.stdout
    assert "[-$5$-]{+$7$+}." in result.stdout


def test_diff_text_says_when_the_attempt_did_not_change():
    assert diff_text("same answer 4", "same answer 4").plain == "(no change: the same response again)"


def test_show_of_an_unknown_id_names_what_ids_look_like(base_run):
    with pytest.raises(HarnessError, match="no problem with id 'p9'; ids look like 'p1'"):
        show_run(base_run, Console(record=True), problem_id="p9")


def test_show_of_a_code_task_keeps_the_program_out_of_the_header_and_shows_the_failing_assertion(tmp_path):
    console = Console(record=True, width=120, color_system=None)
    show_run(make_code_run(tmp_path), console)
    out = console.export_text()
    headers = [line for line in out.splitlines() if "turn 1 ·" in line or "turn 2 ·" in line]
    assert len(headers) == 2 and not any("def " in h or "extracted" in h for h in headers)
    # The canonical solution keeps its lines, indentation included.
    assert "canonical solution:\n    for i, a in enumerate(numbers):\n        for b in numbers[i + 1 :]:\n" in out
    assert f"tests: {FAILED}" in out and "tests: passed" in out
