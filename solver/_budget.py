"""Budgets as users write them: text ("bytes=1e6", "avg_bits=4", "latency_ms=3.5") for the CLI and
batch files, or a mapping ({"avg_bits": 4, "latency_ms": 3.5}) for the API. One parser for all of
them, so every tool takes the same words and refuses the same mistakes the same way.

`avg_bits` is the budget word for average bits per quantizable weight (`average_bits` is accepted as
an alias); it becomes a bytes budget. An infeasible budget is explained in the words it was asked in.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from solver.errors import InfeasibleBudget
from solver.problem import Budget, Problem, average_bits_budget

AVG_BITS = "avg_bits"
ALIASES = {"average_bits": AVG_BITS}


class BudgetError(ValueError):
    """A budget that cannot be parsed. `word`: the budget word it is about (None: the whole budget);
    `reason`: what is wrong, without saying where, for callers that name the field themselves (the
    API's `budget.avg_bits`, a batch file's `budgets.0.avg_bits`), so every tool gives the same words."""

    def __init__(self, reason: str, word: str | None = None, *, where: str | None = None):
        super().__init__(f"budget {where}: {reason}" if where else f"budget: {reason}")
        self.word = word
        self.reason = reason


def budget_word(name: str) -> str:
    """The canonical budget word: `average_bits` → `avg_bits`, anything else unchanged."""
    name = str(name).strip()
    return ALIASES.get(name, name)


def valid_words(problem: Problem) -> list[str]:
    """The budget words `problem` takes: its costs, and avg_bits when it has bytes and weights."""
    words = list(problem.cost_names)
    if "bytes" in words and problem.total_weights > 0:
        words.append(AVG_BITS)
    return words


def _limit(value: object, where: str, word: str | None = None) -> float:
    if isinstance(value, bool):
        raise BudgetError(f"limit {value!r} is not a number", word, where=where)
    try:
        limit = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise BudgetError(f"limit {value!r} is not a number", word, where=where) from None
    if not math.isfinite(limit) or limit < 0:
        raise BudgetError("limit must be a finite number ≥ 0", word, where=where)
    return limit


def _one(word: str, limit: float, problem: Problem, where: str) -> Budget:
    known = problem.cost_names
    if word == AVG_BITS:
        if "bytes" not in known:
            raise BudgetError(f"avg_bits needs a 'bytes' cost, the problem has: {', '.join(known)}", word, where=where)
        if problem.total_weights <= 0:
            raise BudgetError("avg_bits needs units with weights > 0", word, where=where)
        if limit <= 0:
            raise BudgetError("average bits must be positive", word, where=where)
        return average_bits_budget(problem, limit)
    if word not in known:
        raise BudgetError(f"unknown cost {word!r}; valid: {', '.join(valid_words(problem))}", word, where=where)
    return Budget(word, limit)


def parse_budget_text(text: str) -> tuple[str, float]:
    """`COST=LIMIT` → (canonical word, limit), before any problem is known (batch files check early)."""
    name, sep, value = str(text).partition("=")
    name, value = name.strip(), value.strip()
    if not sep or not name or not value:
        raise BudgetError("must look like COST=LIMIT, e.g. bytes=1e6 or avg_bits=4", where=repr(text))
    word = budget_word(name)
    return word, _limit(value, repr(text), word)


def parse_budget(text: str, problem: Problem) -> Budget:
    """Parse `cost=limit`; `avg_bits=B` becomes a bytes budget of B bits per quantizable weight.

    Raises BudgetError (a ValueError) saying what is wrong (missing "=", unknown cost — listing the
    valid ones —, not a number, negative).
    """
    word, limit = parse_budget_text(text)
    return _one(word, limit, problem, repr(text))


def asked_budgets(budget: Mapping[str, object]) -> dict[str, float]:
    """A mapping of budget words → canonical words and float limits; None values skipped. The rules
    that need no problem, for every tool (API bodies, batch files, `bitplan solve`): at least one
    limit; each a finite number ≥ 0 (avg_bits > 0); a word once (an alias counts as its word);
    `avg_bits` together with `bytes` is refused, as both limit the same total."""
    asked: dict[str, float] = {}
    for key, value in budget.items():
        if value is None:
            continue
        word = budget_word(key)
        if word in asked:
            raise BudgetError(f"{key!r} repeats {word!r}")
        asked[word] = _limit(value, str(key), word)
        if word == AVG_BITS and asked[word] <= 0:
            raise BudgetError("average bits must be positive", word, where=str(key))
    if AVG_BITS in asked and "bytes" in asked:
        raise BudgetError("give avg_bits or bytes, not both (both limit the total bytes)")
    if not asked:
        raise BudgetError("give at least one limit, e.g. avg_bits or bytes")
    return asked


def asked_budget_texts(texts: list[str]) -> dict[str, float]:
    """Repeated `COST=LIMIT` texts (`bitplan solve --budget`, all of which must hold) → one mapping,
    by the rules of asked_budgets; a word given twice is refused, not silently overwritten."""
    pairs = [parse_budget_text(text) for text in texts]
    words = [word for word, _ in pairs]
    for word in words:
        if words.count(word) > 1:
            raise BudgetError(f"{word!r} given twice")
    return asked_budgets(dict(pairs))


def budgets_from_mapping(budget: Mapping[str, object], problem: Problem) -> list[Budget]:
    """{"avg_bits": 4, "latency_ms": 3} → solver budgets; BudgetError names the word at fault."""
    return [_one(word, limit, problem, word) for word, limit in asked_budgets(budget).items()]


def _g(x: float) -> str:
    return f"{x:.6g}"


def explain_infeasible(exc: InfeasibleBudget, problem: Problem, asked: Mapping[str, float]) -> InfeasibleBudget:
    """`exc` restated in the words asked: an avg_bits budget answers in bits per weight (and bytes).
    `minimums` and `violated` gain the avg_bits entry; the bytes ones stay for callers reading them."""
    asked = {budget_word(k): float(v) for k, v in asked.items()}
    if AVG_BITS not in asked or "bytes" not in exc.minimums or problem.total_weights <= 0:
        return exc
    bits_per_byte = 8.0 / problem.total_weights
    min_bytes = exc.minimums["bytes"]
    min_bits = min_bytes * bits_per_byte
    limit_bits = asked[AVG_BITS]
    limit_bytes = limit_bits / bits_per_byte
    minimums = {**exc.minimums, AVG_BITS: min_bits}
    violated = tuple(AVG_BITS if v == "bytes" else v for v in exc.violated)
    if "bytes" in exc.violated:
        others = [v for v in exc.violated if v != "bytes"]
        text = (f"budget cannot be met: avg_bits ≤ {_g(limit_bits)} (bytes ≤ {_g(limit_bytes)}) is below the least"
                f" achievable {_g(min_bits)} bits per weight ({_g(min_bytes)} bytes)")
        if others:
            text += "; also " + ", ".join(f"{o} ≤ {_g(asked.get(o, float('nan')))} is below the least achievable"
                                          f" {_g(exc.minimums[o])}" for o in others)
        text += " (ties, pins and allowed subsets respected)"
    else:
        names = ", ".join(f"avg_bits ≤ {_g(limit_bits)} (bytes ≤ {_g(limit_bytes)})" if w == AVG_BITS
                          else f"{w} ≤ {_g(v)}" for w, v in asked.items())
        text = f"budgets {names} cannot all be met together, though each can alone"
    return InfeasibleBudget(text, minimums=minimums, violated=violated)
