"""Reasoning models (`<think> ... </think>`): what graders read, and what turn 2 shows of turn 1.

The chat template below is written for this test after the behaviour Qwen3's published template
documents: an assistant message before the last user message is shown without its thinking (the
text up to `</think>` is cut), the last turn's is kept. It runs through the embedded tokenizer's
`apply_chat_template`, as the hf engine renders prompts; no hub is reached.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from harness.data import Problem
from harness.episodes import conversation, shown_attempt
from harness.grading.code import extract_code
from harness.grading.reasoning import answer_part, without_thinking
from harness.tasks import load_task

DROPS_EARLIER_THINKING = (
    "{%- set ns = namespace(last_user=0) %}"
    "{%- for m in messages %}{%- if m.role == 'user' %}{%- set ns.last_user = loop.index0 %}{%- endif %}{%- endfor %}"
    "{%- for m in messages %}"
    "{%- set content = m.content %}"
    "{%- if m.role == 'assistant' and loop.index0 < ns.last_user and '</think>' in content %}"
    "{%- set content = content.split('</think>')[-1].lstrip('\\n') %}"
    "{%- endif %}"
    "{{- '<|im_start|>' + m.role + '\\n' + content + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
ATTEMPT = "<think>\nIs it 4? Checking: 2+2 = 4, and SECRET-THOUGHT.\n</think>\n\nThe answer is $\\boxed{4}$."


def test_answer_part_is_what_follows_the_thinking():
    assert answer_part("<think>a</think>b") == "b"
    assert answer_part("a</think>b") == "b"  # the template opened the thinking in the prompt
    assert answer_part("<think>cut off") is None  # never closed: nothing stated
    assert answer_part("plain answer") == "plain answer"  # a model without thinking is unaffected
    assert answer_part("<think>x</think>y<think>z</think>w") == "w"


def test_code_is_read_only_after_the_thinking():
    response = "<think>\n```python\ndef f():\n    return 1\n```\n</think>\n```python\ndef f():\n    return 2\n```"
    assert "return 2" in extract_code(response, "f") and "return 1" not in extract_code(response, "f")
    assert extract_code("<think>\n```python\ndef f():\n    return 1\n```", "f").strip() == ""


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("template", ATTEMPT),
        ("drop", "The answer is $\\boxed{4}$."),
        ("keep", "\nIs it 4? Checking: 2+2 = 4, and SECRET-THOUGHT.\n\n\nThe answer is $\\boxed{4}$."),
    ],
)
def test_each_mode_shows_the_previous_attempt_as_documented(mode, expected):
    assert shown_attempt(ATTEMPT, mode) == expected
    assert without_thinking(ATTEMPT) == "The answer is $\\boxed{4}$."


@pytest.fixture(scope="module")
def tokenizer(embedded_checkpoint):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(embedded_checkpoint)


def _turn2_prompt(tokenizer, mode: str, template: str | None) -> str:
    task = load_task("math")
    task = replace(task, prompts=replace(task.prompts, previous_thinking=mode))
    messages = conversation(task, Problem("p1", "4", {"problem": "What is 2+2?"}), [ATTEMPT])
    return tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False, add_generation_prompt=True)


def test_template_mode_lets_a_qwen3_style_template_drop_the_earlier_thinking(tokenizer):
    prompt = _turn2_prompt(tokenizer, "template", DROPS_EARLIER_THINKING)
    assert "SECRET-THOUGHT" not in prompt and "The answer is $\\boxed{4}$." in prompt


def test_template_mode_with_a_template_that_keeps_everything_shows_the_thinking(tokenizer):
    prompt = _turn2_prompt(tokenizer, "template", None)  # SmolLM2's own template keeps message text as is
    assert "<think>" in prompt and "SECRET-THOUGHT" in prompt


def test_keep_forces_the_thinking_in_even_where_the_template_drops_it(tokenizer):
    prompt = _turn2_prompt(tokenizer, "keep", DROPS_EARLIER_THINKING)
    assert "SECRET-THOUGHT" in prompt and "</think>" not in prompt


def test_drop_forces_the_thinking_out_even_where_the_template_keeps_it(tokenizer):
    prompt = _turn2_prompt(tokenizer, "drop", None)
    assert "SECRET-THOUGHT" not in prompt and "The answer is $\\boxed{4}$." in prompt


def test_a_task_names_an_unknown_mode_in_one_error(tmp_path):
    from harness.errors import HarnessError
    from harness.tasks import TASKS_DIR

    text = (TASKS_DIR / "math.yaml").read_text().replace("previous_thinking: template", "previous_thinking: hide")
    path = tmp_path / "variant.yaml"
    path.write_text(text)
    with pytest.raises(HarnessError, match="previous_thinking.*template, drop, keep"):
        load_task(str(path))
