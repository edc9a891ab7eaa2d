"""Task files and problem loading: formats, required fields and one-line errors."""

import json
from pathlib import Path

import pandas as pd
import pytest

from harness.data import load_problems
from harness.errors import HarnessError
from harness.tasks import load_task

RECORDS = [
    {"problem": "What is 1+1?", "answer": "2", "subject": "Algebra", "level": 1, "unique_id": "a/1"},
    {"problem": "What is 2+2?", "answer": "4", "subject": "Algebra", "level": 2, "unique_id": "a/2"},
]


def test_math_task_holds_the_papers_prompts():
    task = load_task("math")
    assert task.grader == "math"
    first = task.first_prompt({"problem": "What is 1+1?"})
    assert first.endswith("Problem:\nWhat is 1+1?\n\nSolution:")
    assert 'write it in the form "Final Answer: The final answer is $answer$. I hope it is correct."' in first
    assert task.correction_prompt({}).startswith(
        "There might be an error in the solution above because of lack of understanding of the question."
    )


def test_task_variant_is_a_file_not_code(tmp_path):
    text = Path(load_task("math").source).read_text()
    variant = tmp_path / "math-short.yaml"
    variant.write_text(text.replace("name: math", "name: math-short").replace("Solution:", "Answer briefly:"))
    task = load_task(str(variant))
    assert task.name == "math-short"
    assert task.first_prompt({"problem": "x"}).endswith("Answer briefly:")


def test_unknown_task_names_the_known_ones():
    with pytest.raises(HarnessError, match="unknown task 'nope'.*math"):
        load_task("nope")


def test_prompt_using_an_undeclared_field_is_rejected(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(Path(load_task("math").source).read_text().replace("{{ problem }}", "{{ question }}"))
    with pytest.raises(HarnessError, match="question"):
        load_task(str(bad))


def test_a_misspelled_key_in_a_task_file_is_named_with_the_valid_ones(tmp_path):
    bad = tmp_path / "typo.yaml"
    bad.write_text(Path(load_task("math").source).read_text().replace("max_new_tokens:", "max_new_token:"))
    with pytest.raises(HarnessError) as info:
        load_task(str(bad))
    assert str(info.value) == (
        f"task file {bad} is malformed: generation has the unknown key 'max_new_token'; valid keys: max_new_tokens; "
        "compare it with tasks/math.yaml"
    )


def test_a_task_file_without_its_sections_names_the_missing_ones(tmp_path):
    bad = tmp_path / "bare.yaml"
    bad.write_text("name: bare\ngrader: math\n")
    with pytest.raises(HarnessError, match=r"is malformed: the file lacks 'data', 'prompts'; compare it with"):
        load_task(str(bad))


@pytest.mark.parametrize("fmt", ["jsonl", "json", "parquet"])
def test_local_formats_load_the_same_problems(tmp_path, fmt):
    path = tmp_path / f"d.{fmt}"
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    elif fmt == "json":
        path.write_text(json.dumps(RECORDS))
    else:
        pd.DataFrame(RECORDS).to_parquet(path)
    problems, source = load_problems(load_task("math"), str(path))
    assert [p.id for p in problems] == ["a/1", "a/2"]
    assert [p.answer for p in problems] == ["2", "4"]
    assert problems[1].fields["subject"] == "Algebra"
    assert source.kind == "file" and len(source.sha256) == 64 and source.records == 2


def test_limit_takes_the_first_problems(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    problems, _ = load_problems(load_task("math"), str(path), limit=1)
    assert [p.id for p in problems] == ["a/1"]


@pytest.mark.parametrize(
    "content, name, message",
    [
        (None, "missing.jsonl", "does not exist"),
        ("", "empty.jsonl", "holds no records"),
        ('{"problem": "x", "answer": "1"}\n{oops\n', "torn.jsonl", "line 2 is not valid JSON"),
        ('{"problem": "x", "answer": "1"}\n\n{"problem": "x"}\n', "nofield.jsonl", "line 3 lacks the field 'answer'"),
        ('[{"answer": "1"}]', "nofield.json", "record 1 lacks the field 'problem'"),
        ("a,b\n1,2\n", "data.csv", "unknown format '.csv'"),
        ("[1, 2]", "scalars.json", "record 1 is not a JSON object"),
        ("not parquet", "fake.parquet", "could not be read as .parquet"),
    ],
)
def test_bad_data_files_fail_with_one_clear_line(tmp_path, content, name, message):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(HarnessError, match=message) as info:
        load_problems(load_task("math"), str(path))
    assert "\n" not in str(info.value)


def test_real_math500_loads(math500):
    problems, source = load_problems(load_task("math"), str(math500))
    assert len(problems) == 500 and source.records == 500
    assert problems[0].id.startswith("test/")
    assert {p.fields["level"] for p in problems} == {1, 2, 3, 4, 5}


def test_hub_unreachable_fails_at_once_naming_data(monkeypatch):
    import time

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(HarnessError, match="--data"):
        load_problems(load_task("math"), None)
    assert time.monotonic() - start < 5
