"""Taking the program out of a chat response, and assembling what the sandbox runs."""

from __future__ import annotations

from harness.grading.code import build_program, defines, extract_code, mbpp_entry_point

PROMPT = 'from typing import List\n\n\ndef add(a: int, b: int) -> int:\n    """Add two numbers."""\n'


def test_a_fenced_block_is_taken_without_the_prose_around_it():
    response = "Here you go:\n```python\ndef add(a, b):\n    return a + b\n```\nThis adds."
    assert extract_code(response, "add") == "def add(a, b):\n    return a + b\n"


def test_the_block_that_defines_the_entry_point_wins_over_a_later_usage_example():
    response = "```python\ndef add(a, b):\n    return a + b\n```\nUsage:\n```python\nprint(add(1, 2))\n```"
    assert extract_code(response, "add").startswith("def add")


def test_without_a_defining_block_the_last_complete_block_is_taken():
    response = "```python\nx = 1\n```\nthen\n```\nreturn a + b\n```"
    assert extract_code(response, "add") == "return a + b\n"


def test_a_block_cut_off_by_the_token_limit_is_still_used():
    assert extract_code("Sure.\n```python\ndef add(a, b):\n    return a +", "add") == "def add(a, b):\n    return a +"


def test_bare_code_after_a_sentence_is_found():
    response = "The answer is below.\ndef add(a, b):\n    return a + b\nIt works for all ints."
    assert extract_code(response, "add") == "def add(a, b):\n    return a + b\n"


def test_mbpp_begin_done_markers_delimit_the_code():
    assert extract_code("[BEGIN]\ndef f(x):\n  return x\n[DONE]\nmore text", "f") == "\ndef f(x):\n  return x\n"


def test_a_completion_of_the_function_body_is_appended_to_the_prompt():
    program = build_program("    return a + b\n", PROMPT, "add")
    assert program == PROMPT + "    return a + b\n"


def test_an_unindented_body_is_indented_under_the_prompt():
    assert build_program("return a + b", PROMPT, "add").endswith('"""Add two numbers."""\n    return a + b\n')


def test_a_whole_program_comes_after_the_prompt_so_its_definition_wins_and_imports_stay():
    code = "import math\n\ndef add(a, b):\n    return math.fsum([a, b])\n"
    program = build_program(code, PROMPT, "add")
    assert program.startswith("from typing import List") and program.endswith(code)
    namespace: dict = {}
    exec(program, namespace)  # noqa: S102 - a trusted program, to show it runs
    assert namespace["add"](1, 2) == 3


def test_without_a_prompt_the_code_is_the_program():
    assert build_program("def f(x):\n    return x\n", "", "f") == "def f(x):\n    return x\n"


def test_defines_sees_top_level_definitions_only():
    assert defines("def add(a, b):\n    pass\n", "add")
    assert not defines("class A:\n    def add(self):\n        pass\n", "add")


def test_the_mbpp_entry_point_is_the_reference_function_that_the_first_test_calls():
    record = {
        "code": "def helper():\n    pass\ndef similar(a, b):\n    return a\n",
        "test_list": ["assert set(similar((1,), (2,))) == {1}"],
    }
    assert mbpp_entry_point(record) == "similar"
