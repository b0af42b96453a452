"""Budgets at the service's edges (API bodies, batch files), read by the solver's one parser.

solver._budget decides what a budget may say; this module only puts its errors on the field they are
about, so the same bad budget reads the same in a 422 (`budget.avg_bits: ...`), a batch file error
(`job 1: budgets.0.avg_bits: ...`) and `bitplan solve` (`budget avg_bits: ...`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

from solver._budget import BudgetError, asked_budgets

__all__ = ["budget_field", "budget_limits", "located_error"]


def budget_field(exc: BudgetError, under: str = "budget") -> str:
    """The field a budget error names: `budget.<word>`, or `budget` when it is about the whole budget."""
    return f"{under}.{exc.word}" if exc.word else under


def located_error(exc: BudgetError, *, title: str, at: tuple[int | str, ...] = (), value: Any = None) -> ValidationError:
    """A BudgetError as a pydantic ValidationError at `at` + its word; raised inside a validator,
    pydantic places it under the field being validated. The message is the solver's reason."""
    error = PydanticCustomError("budget", "{reason}", {"reason": exc.reason})
    loc = (*at, exc.word) if exc.word else at
    return ValidationError.from_exception_data(title, [InitErrorDetails(type=error, loc=loc, input=value)])


def budget_limits(data: Any, *, title: str, at: tuple[int | str, ...] = ()) -> Any:
    """A budget mapping → canonical words and float limits (solver._budget.asked_budgets), for a pydantic
    `mode="before"` validator (see located_error). Anything but a mapping is left for the field's type
    to refuse."""
    if not isinstance(data, Mapping):
        return data
    try:
        return asked_budgets(data)
    except BudgetError as exc:
        raise located_error(exc, title=title, at=at, value=data) from None
