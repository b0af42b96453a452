"""Budgets as text, and the JSON example in docs/problem-format.md."""

from __future__ import annotations

import json
import pathlib
import re

import pytest

from solver import Budget, average_bits_budget, parse_budget, problem_from_dict, problem_to_dict, solve
from tests.utils.solver_factories import synthetic_llm

DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "problem-format.md"


def test_parse_budget_forms():
    problem = synthetic_llm(7, (2, 4, 8))
    assert parse_budget("bytes=1e6", problem) == Budget("bytes", 1e6)
    assert parse_budget(" latency_ms = 3.5 ", problem) == Budget("latency_ms", 3.5)
    assert parse_budget("avg_bits=4", problem) == average_bits_budget(problem, 4)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("bytes", "COST=LIMIT"),
        ("=3", "COST=LIMIT"),
        ("bytes=", "COST=LIMIT"),
        ("bytes=lots", "not a number"),
        ("bytes=-1", "≥ 0"),
        ("bytes=inf", "finite"),
        ("avg_bits=0", "positive"),
        ("bops=5", "unknown cost 'bops'; valid: bytes, latency_ms, avg_bits"),
    ],
)
def test_parse_budget_errors_name_the_problem(text, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_budget(text, synthetic_llm(3, (2, 4)))


def _doc_examples() -> list[dict]:
    blocks = re.findall(r"```json\n(.*?)```", DOC.read_text(), flags=re.S)
    return [json.loads(b) for b in blocks if '"units"' in b]


def test_documented_example_parses_round_trips_and_solves():
    (data,) = _doc_examples()
    problem = problem_from_dict(data)
    assert problem_to_dict(problem) == data
    plan = solve(problem, [parse_budget("avg_bits=5", problem)])
    assert plan.assignment["layers.0.attn.q"] == plan.assignment["layers.0.attn.k"]
    assert plan.assignment["lm_head"] == "int8"
