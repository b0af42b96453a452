"""Budgets written as text ("bytes=1e6", "avg_bits=4", "latency_ms=3.5"), as the CLI and API take them."""

from __future__ import annotations

import math

from solver.problem import Budget, Problem, average_bits_budget

AVG_BITS = "avg_bits"


def parse_budget(text: str, problem: Problem) -> Budget:
    """Parse `cost=limit`; `avg_bits=B` becomes a bytes budget of B bits per quantizable weight.

    Raises ValueError saying what is wrong (missing "=", unknown cost, not a number, negative).
    """
    name, sep, value = str(text).partition("=")
    name, value = name.strip(), value.strip()
    if not sep or not name or not value:
        raise ValueError(f"budget {text!r} must look like COST=LIMIT, e.g. bytes=1e6 or avg_bits=4")
    try:
        limit = float(value)
    except ValueError:
        raise ValueError(f"budget {text!r}: limit {value!r} is not a number") from None
    if not math.isfinite(limit) or limit < 0:
        raise ValueError(f"budget {text!r}: limit must be a finite number ≥ 0")
    known = problem.cost_names
    if name == AVG_BITS:
        if "bytes" not in known:
            raise ValueError(f"budget {text!r}: avg_bits needs a 'bytes' cost, the problem has: {', '.join(known)}")
        if problem.total_weights <= 0:
            raise ValueError(f"budget {text!r}: avg_bits needs units with weights > 0")
        if limit <= 0:
            raise ValueError(f"budget {text!r}: average bits must be positive")
        return average_bits_budget(problem, limit)
    if name not in known:
        valid = ", ".join([*known, AVG_BITS])
        raise ValueError(f"budget {text!r}: unknown cost {name!r}; valid: {valid}")
    return Budget(name, limit)
