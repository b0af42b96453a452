"""Plan confidence: redraw every unit's damage from its half-width, re-solve, count agreement."""

from __future__ import annotations

import pytest

from solver import Option, Problem, Unit, average_bits_budget, solve
from solver.confidence import average_bits_grid, confidence

LADDER = [("int2", 2.0), ("int4", 4.0), ("int8", 8.0)]


def problem(scales: list[float]) -> Problem:
    """Units of 1000 weights; damage = scale · 4^-bits, so doubling the bits quarters it."""
    return Problem(units=tuple(
        Unit(f"u{i}", 1000, tuple(Option(c, s * 4.0 ** -b, {"bytes": 1000 * b / 8}) for c, b in LADDER))
        for i, s in enumerate(scales)
    ))


def halfwidths(p: Problem, relative: float) -> dict[str, dict[str, float]]:
    return {u.name: {o.candidate: relative * o.damage for o in u.options} for u in p.units}


def test_tiny_cis_give_confidence_one():
    p = problem([1.0, 5.0, 20.0, 80.0])
    budgets = [average_bits_budget(p, 4.0)]
    plan = solve(p, budgets)
    conf = confidence(p, budgets, plan, halfwidths(p, 1e-6))
    assert conf.confidence == 1.0 and conf.redraws == 64 and not conf.exact and conf.flips == {}


def test_ambiguous_table_is_below_one_and_names_the_units_that_flip_it():
    """Two equal units and one int4 slot between them: which one gets it is a coin toss, and the
    redraws (30% half-widths, no tolerance) say so."""
    p = problem([10.0, 10.0, 1000.0])
    budgets = [average_bits_budget(p, (2 + 4 + 8) / 3)]
    plan = solve(p, budgets)
    conf = confidence(p, budgets, plan, halfwidths(p, 0.3), tolerance=0.0)
    assert 0.2 < conf.confidence < 0.8
    assert set(conf.flips) == {"u0", "u1"}
    assert conf.to_dict()["uncertain_units"][0]["unit"] in {"u0", "u1"}


def test_tolerance_accepts_a_plan_within_it():
    """The same coin toss costs nothing: both plans have equal damage, so a 5% tolerance agrees."""
    p = problem([10.0, 10.0, 1000.0])
    budgets = [average_bits_budget(p, (2 + 4 + 8) / 3)]
    plan = solve(p, budgets)
    strict = confidence(p, budgets, plan, halfwidths(p, 0.01), tolerance=0.0)
    loose = confidence(p, budgets, plan, halfwidths(p, 0.01), tolerance=0.05)
    assert strict.confidence < 1.0 and loose.confidence == 1.0


def test_exact_metrics_have_confidence_one_without_solving():
    p = problem([1.0, 2.0])
    budgets = [average_bits_budget(p, 4.0)]
    conf = confidence(p, budgets, solve(p, budgets), {})
    assert conf.confidence == 1.0 and conf.exact and conf.redraws == 0


def test_same_inputs_same_confidence_and_early_stop_is_marked():
    p = problem([10.0, 11.0, 1000.0])
    budgets = [average_bits_budget(p, (2 + 4 + 8) / 3)]
    plan = solve(p, budgets)
    a = confidence(p, budgets, plan.assignment, halfwidths(p, 0.5), tolerance=0.0)
    b = confidence(p, budgets, plan, halfwidths(p, 0.5), tolerance=0.0)
    assert a == b


def test_early_stop_is_marked():
    """Eight units (6561 plans): solved redraw by redraw, so the count can stop early."""
    p = problem([10.0, 11.0, 10.5, 9.5, 10.2, 10.7, 9.9, 1000.0])
    budgets = [average_bits_budget(p, 4.0)]
    plan = solve(p, budgets)
    early = confidence(p, budgets, plan, halfwidths(p, 0.5), tolerance=0.0, stop_below=0.95)
    assert not early.complete and early.redraws < 64 and early.confidence < 0.95


@pytest.mark.parametrize("bits", [3.0, 14 / 3, 6.0])
def test_enumerating_small_problems_matches_solving_each_redraw(monkeypatch, bits):
    import solver.confidence as module

    p = problem([10.0, 11.0, 30.0, 1000.0])
    budgets = [average_bits_budget(p, bits)]
    plan = solve(p, budgets)
    fast = confidence(p, budgets, plan, halfwidths(p, 0.4), tolerance=0.01)
    monkeypatch.setattr(module, "ENUMERATE_LIMIT", 0)
    slow = confidence(p, budgets, plan, halfwidths(p, 0.4), tolerance=0.01)
    assert fast == slow


def test_two_budgets_are_solved_redraw_by_redraw():
    """The Lagrangian shortcut needs one budget; with two every redraw is solved and still agrees."""
    p = Problem(units=tuple(
        Unit(f"u{i}", 1000, tuple(Option(c, s * 4.0 ** -b, {"bytes": 1000 * b / 8, "bops": b}) for c, b in LADDER))
        for i, s in enumerate([1.0, 50.0])
    ))
    from solver import Budget

    budgets = [average_bits_budget(p, 5.0), Budget("bops", 12.0)]
    conf = confidence(p, budgets, solve(p, budgets), halfwidths(p, 1e-6))
    assert conf.confidence == 1.0 and conf.redraws == 64


def test_grid_spans_the_feasible_average_bits():
    grid = average_bits_grid(problem([1.0, 2.0]), points=3)
    assert grid == pytest.approx([3.5, 5.0, 6.5])


def test_bad_half_widths_are_refused():
    p = problem([1.0])
    budgets = [average_bits_budget(p, 4.0)]
    with pytest.raises(ValueError, match="half-width of unit 'u0'"):
        confidence(p, budgets, solve(p, budgets), {"u0": {"int2": -1.0}})
