"""Code grading: take the program out of a chat response, assemble it, judge it in the sandbox.

Extraction follows what chat models write: a fenced block (the one that defines the entry point,
else the last complete one), MBPP's `[BEGIN] ... [DONE]`, bare code, or a continuation of the
prompt's function body; for reasoning models, only what follows the thinking. A whole program that
redefines the function is run after the prompt, so the prompt's imports and helpers stay available
and the program's definitions win.

The tests are built from the dataset record and run in the sandbox's judge; see sandbox.py.
"""

from __future__ import annotations

import ast
import builtins
import json
import os
import re
import sys
import warnings
from collections.abc import Sequence
from typing import Any

from harness.grading import Verdict, register
from harness.grading.reasoning import answer_part
from harness.grading.sandbox import Job, Limits, Sandbox

# The info string may not hold a backtick (as in CommonMark), and the quantifiers are possessive: a run
# of backticks with no newline then costs one step per start, not a scan to the end (quadratic).
_FENCE = re.compile(r"```[ \t]*+([\w+.-]*+)[^\n`]*+\n(.*?)```", re.DOTALL)
_PYTHON_TAGS = {"", "python", "python3", "py", "py3", "Python"}
_TRIM_TRIES = 64  # parses of a shorter prefix, at most: each costs a parse of the whole response
_CODE_START = re.compile(r"^(?:def |class |import |from |@|async def |[A-Za-z_]\w*\s*=)")


def _parses(code: str) -> bool:
    return _syntax_error_line(code) is None


def _syntax_error_line(code: str) -> int | None:
    """None if `code` parses, else the line of the error (0 where Python names none)."""
    try:
        _quiet_parse(code)
    except SyntaxError as exc:
        return exc.lineno or 0
    except ValueError:  # a NUL byte
        return 0
    return None


def _quiet_parse(code: str) -> ast.Module:
    with warnings.catch_warnings():  # regex literals such as "\d" in MBPP's code and asserts
        warnings.simplefilter("ignore", SyntaxWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        return ast.parse(code)


def defines(code: str, name: str) -> bool:
    """Whether `code` defines `name` at top level (a def, class or assignment)."""
    return (
        re.search(rf"^(?:async\s+)?(?:def|class)\s+{re.escape(name)}\b|^{re.escape(name)}\s*=", code, re.MULTILINE)
        is not None
    )


def extract_code(response: str, entry_point: str) -> str:
    """The code in a chat response (see the module docstring for the order of preference).

    A reasoning model's thinking is skipped (reasoning.answer_part); cut off inside it, there is no code.
    """
    text = answer_part(response) or ""
    if "[BEGIN]" in text:
        text = text.rsplit("[BEGIN]", 1)[1]
    text = text.split("[DONE]", 1)[0]
    blocks = [m.group(2) for m in _FENCE.finditer(text) if m.group(1) in _PYTHON_TAGS]
    if blocks:
        defining = [b for b in blocks if defines(b, entry_point)]
        return (defining or blocks)[-1]
    if "```" in text:  # an unterminated block: a response cut off at the token limit
        text = text.rsplit("```", 1)[1].split("\n", 1)[-1] if text.count("```") % 2 else text.replace("```", "")
    return _trim_prose(text)


def _trim_prose(text: str) -> str:
    """Bare code, without a sentence before it or after it."""
    if _parses(text) or text[:1] in (" ", "\t"):
        return text
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if _CODE_START.match(line)), None)
    if start is None:
        return text
    lines = lines[start:]
    end = len(lines)
    for _ in range(_TRIM_TRIES):
        if end <= 0:
            break
        candidate = "\n".join(lines[:end])
        error_line = _syntax_error_line(candidate)
        if error_line is None:
            return candidate + "\n"
        # No prefix that keeps the line of the error parses (its tokens up to there are the same), so
        # the next try ends before it: one parse per sentence of prose, not one per line of code.
        end = error_line - 1 if 0 < error_line <= end else end - 1
    return "\n".join(lines)


def build_program(code: str, prompt: str, entry_point: str) -> str:
    """The program to run: the prompt then the code (a redefinition, or the body the prompt starts)."""
    if not prompt:
        return code
    if defines(code, entry_point) or not code.strip():
        return f"{prompt.rstrip()}\n\n\n{code.strip()}\n"
    first = next((line for line in code.splitlines() if line.strip()), "")
    if not first.startswith((" ", "\t")):
        code = "\n".join(("    " + line) if line.strip() else line for line in code.splitlines())
    return prompt + code.lstrip("\n").rstrip() + "\n"


# ---------------------------------------------------------------------------------------------
# Tests per dataset: trusted code built from the record, run by the judge.


def stdlib_imports(source: str) -> str:
    """`import m` for each standard-library module a test names (e.g. `math.isclose(...)`)."""
    names = {n.id for n in ast.walk(_quiet_parse(source)) if isinstance(n, ast.Name)}
    return "".join(f"import {m}\n" for m in sorted(names & set(sys.stdlib_module_names)) if not m.startswith("_"))


def humaneval_job(program: str, fields: dict[str, Any]) -> Job:
    """HumanEval: `check(candidate)` from the dataset; the prompt's helpers (e.g. `poly`) stay the dataset's."""
    entry = fields["entry_point"]
    return Job(program, f"{fields['test']}\n\ncheck({entry})\n", entry, prelude=fields["prompt"])


def mbpp_entry_point(fields: dict[str, Any]) -> str:
    """The function the tests call: the reference solution's function that the first test names."""
    code = str(fields.get("code", "")).replace("\r\n", "\n")
    defined = re.findall(r"^def\s+(\w+)", code, re.MULTILINE)
    calls = re.findall(r"(\w+)\s*\(", fields["test_list"][0])
    for name in calls:
        if name in defined:
            return name
    return next((c for c in calls if not hasattr(builtins, c)), calls[0] if calls else "f")


def mbpp_job(program: str, fields: dict[str, Any]) -> Job:
    """MBPP: the record's asserts (after its setup code); imports from `test_imports` or named in the tests."""
    setup = str(fields.get("test_setup_code") or "").replace("\r\n", "\n")
    tests = setup + "\n" + "\n".join(fields["test_list"]) + "\n"
    prelude = "\n".join(fields.get("test_imports") or []) + "\n" + stdlib_imports(tests)
    return Job(program, tests, mbpp_entry_point(fields), prelude=prelude)


_PLUS_TESTS = """
for _args in _INPUTS:
    _expected = _reference(*_copy.deepcopy(_args))
    _got = {entry}(*_copy.deepcopy(_args))
    assert _matches(_args, _got, _expected), _failure(_args, _got, _expected)
"""

_PLUS_PRELUDE = """
import copy as _copy
import json as _json
import math as _math

_INPUTS = _json.loads({inputs!r})
_ATOL = {atol!r}


def _floats(x):
    return isinstance(x, float) or (isinstance(x, (list, tuple)) and bool(x) and all(isinstance(v, float) for v in x))


def _matches(args, got, expected):
    if {is_find_zero}:
        return isinstance(got, (int, float)) and abs(poly(*args, got)) <= max(_ATOL, 1e-6)
    if _floats(expected) and type(got) in (int, float, list, tuple):
        got_list = got if isinstance(got, (list, tuple)) else [got]
        expected_list = expected if isinstance(expected, (list, tuple)) else [expected]
        return len(got_list) == len(expected_list) and all(
            type(g) in (int, float) and _math.isclose(g, e, rel_tol=1e-7, abs_tol=_ATOL)
            for g, e in zip(got_list, expected_list))
    return got == expected


def _failure(args, got, expected):
    return "input " + repr(args)[:60] + ": got " + repr(got)[:40] + ", expected " + repr(expected)[:40]

{reference}
_reference = {entry}
"""


def humaneval_plus_job(program: str, fields: dict[str, Any]) -> Job:
    """HumanEval+: base and plus inputs, expected outputs from the canonical solution run in the judge
    (as evalplus does), floats compared with the record's `atol`; HumanEval/32 checks the root found."""
    entry = fields["entry_point"]
    inputs = [*_as_list(fields["base_input"]), *_as_list(fields["plus_input"])]
    prelude = _PLUS_PRELUDE.format(
        inputs=json.dumps(inputs),
        atol=float(fields.get("atol") or 0),
        is_find_zero=entry == "find_zero",
        reference=fields["prompt"] + fields["canonical_solution"],
        entry=entry,
    )
    return Job(program, _PLUS_TESTS.format(entry=entry), entry, prelude=prelude)


def _as_list(value: Any) -> list:
    return json.loads(value) if isinstance(value, str) else list(value)


# ---------------------------------------------------------------------------------------------


def limits_from_env() -> Limits:
    """Sandbox limits, overridable for a whole run by SCORE_EVAL_{MEMORY_MB,CPU_S,WALL_S}."""
    base = Limits()
    return Limits(
        cpu_s=float(os.environ.get("SCORE_EVAL_CPU_S", base.cpu_s)),
        wall_s=float(os.environ.get("SCORE_EVAL_WALL_S", base.wall_s)),
        memory_bytes=int(float(os.environ.get("SCORE_EVAL_MEMORY_MB", base.memory_bytes >> 20))) << 20,
    )


class CodeGrader:
    """Grades a batch in parallel sandboxes; safe to call from several threads at once."""

    def __init__(
        self,
        make_job,
        prompt_field: str | None = "prompt",
        limits: Limits | None = None,
        workers: int | None = None,
        entry_point=lambda fields: fields["entry_point"],
    ) -> None:
        self.make_job, self.entry_point = make_job, entry_point
        self.prompt_field = prompt_field
        workers = workers or (int(os.environ["SCORE_EVAL_WORKERS"]) if os.environ.get("SCORE_EVAL_WORKERS") else None)
        self.sandbox = Sandbox(limits or limits_from_env(), workers)

    def program(self, response: str, fields: dict[str, Any]) -> str:
        entry = self.entry_point(fields)
        prompt = str(fields.get(self.prompt_field, "")) if self.prompt_field else ""
        return build_program(extract_code(response, entry), prompt, entry)

    def grade(self, items: Sequence[tuple[str, Any]]) -> list[Verdict]:
        programs = [self.program(response, problem.fields) for response, problem in items]
        jobs = [self.make_job(program, problem.fields) for program, (_, problem) in zip(programs, items)]
        outcomes = self.sandbox.run(jobs)
        return [Verdict(extracted=p, correct=o.passed, detail=o.result) for p, o in zip(programs, outcomes)]

    def close(self) -> None:
        self.sandbox.close()


CODE_GRADERS = ("humaneval", "humaneval-plus", "mbpp")


def is_code_grader(name: str) -> bool:
    return name in CODE_GRADERS


register("humaneval")(lambda: CodeGrader(humaneval_job))
register("humaneval-plus")(lambda: CodeGrader(humaneval_plus_job))
register("mbpp")(lambda: CodeGrader(mbpp_job, prompt_field=None, entry_point=mbpp_entry_point))
