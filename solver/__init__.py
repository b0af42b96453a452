"""bitplan's solver: exact per-unit format plans under budgets, Pareto frontiers, baselines, search.

Pure math: numpy, pulp, highspy and (lazily) optuna; no torch, no I/O.
"""

from solver._solve import TimeLimitReached, solve
from solver.backends import available_backends, backend_names, get_backend, register
from solver.backends.base import Backend
from solver._baselines import greedy_plan, uniform_plans
from solver.given import STATUS_GIVEN, AssignmentError, given_plan
from solver._budget import AVG_BITS, BudgetError, budgets_from_mapping, explain_infeasible, parse_budget
from solver._frontier import Frontier, Frontier2D, frontier, frontier_2d, lower_convex_hull
from solver.search import ScoredPlan, search
from solver.errors import BackendUnavailable, InfeasibleBudget, ProblemError, SolverError
from solver.plan import Plan
from solver.problem import (
    FORMAT_VERSION,
    Budget,
    Option,
    Problem,
    Unit,
    average_bits_budget,
    problem_from_dict,
    problem_to_dict,
)

__all__ = [
    "FORMAT_VERSION",
    "STATUS_GIVEN",
    "AssignmentError",
    "given_plan",
    "Frontier",
    "Frontier2D",
    "Backend",
    "BackendUnavailable",
    "Budget",
    "InfeasibleBudget",
    "Option",
    "Plan",
    "Problem",
    "ProblemError",
    "ScoredPlan",
    "SolverError",
    "TimeLimitReached",
    "Unit",
    "available_backends",
    "frontier",
    "greedy_plan",
    "parse_budget",
    "AVG_BITS",
    "BudgetError",
    "budgets_from_mapping",
    "explain_infeasible",
    "uniform_plans",
    "frontier_2d",
    "lower_convex_hull",
    "average_bits_budget",
    "backend_names",
    "get_backend",
    "problem_from_dict",
    "problem_to_dict",
    "register",
    "search",
    "solve",
]
