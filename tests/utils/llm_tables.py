"""A synthetic LLM-shaped problem table, shared by the solver tests and bench/solver.py (so it
imports nothing beyond the solver and numpy)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from solver import Option, Problem, Unit

# q, k, v, o, gate, up, down of a 70B-class block
SHAPES = [(8192, 8192), (8192, 1024), (8192, 1024), (8192, 8192), (8192, 28672), (8192, 28672), (28672, 8192)]


def synthetic_llm(
    n_units: int, bits: Sequence[int], *, seed: int = 0, group: int = 128, latency: bool = True
) -> Problem:
    """A table shaped like a 70B-class LLM's linear layers: bytes include one FP16 scale per group,
    damage ∝ sensitivity · 4^-bits with ±10 % noise (decreasing and convex in bits); with `latency`
    also a "latency_ms" cost ∝ weights · bits with ±20 % noise."""
    rng = np.random.default_rng(seed)
    units = []
    for i in range(n_units):
        rows, cols = SHAPES[i % len(SHAPES)]
        w = rows * cols
        sens = rng.lognormal(0.0, 1.5)
        opts = []
        for b in bits:
            damage = float(sens * 4.0 ** (-b) * rng.uniform(0.9, 1.1))
            costs = {"bytes": float(math.ceil(w * (b + 16 / group) / 8))}
            if latency:
                costs["latency_ms"] = float(w * b * 1e-9 * rng.uniform(0.8, 1.2))
            opts.append(Option(f"int{b}", damage, costs))
        units.append(Unit(f"layer{i}", w, tuple(opts)))
    return Problem(tuple(units))


LLAMA70B_BITS = (2, 3, 4, 5, 6, 7, 8, 16)


def scaled(problem: Problem, factor: float) -> Problem:
    """The same table with every damage multiplied by `factor` (the optimum must not move)."""
    units = tuple(
        Unit(u.name, u.weights, tuple(Option(o.candidate, o.damage * factor, dict(o.costs)) for o in u.options))
        for u in problem.units
    )
    return Problem(units, ties=problem.ties, pins=problem.pins, allowed=problem.allowed)
