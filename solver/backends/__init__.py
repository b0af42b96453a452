"""Registry of solver back-ends, and the one place that decides what "auto" runs."""

from __future__ import annotations

from solver.backends.base import Backend, Outcome
from solver.errors import BackendUnavailable
from solver.registry import Registry

__all__ = [
    "AUTO",
    "BACKENDS",
    "Backend",
    "Outcome",
    "auto_backend",
    "available_backends",
    "backend_names",
    "get_backend",
    "register",
]

AUTO = "auto"

BACKENDS: Registry[Backend] = Registry(
    "backend",
    {
        "cbc": "solver.backends._cbc:CbcBackend",
        "dp": "solver.backends._lattice:DpBackend",
        "highs": "solver.backends._highs:HighsBackend",
        "mckp": "solver.backends._mckp:MckpBackend",
        "mckp2": "solver.backends._two:Mckp2Backend",
    },
    requires={"cbc": "PuLP with its CBC binary (pip install pulp)", "highs": "highspy (pip install highspy)"},
    also_valid=(AUTO,),
    unavailable=BackendUnavailable,
)

# "auto": the exact knapsack methods where they apply (one budget, two), then the general ILPs, then
# any other back-end in name order. GENERAL are the ILPs auto hands an incomplete knapsack search to.
_AUTO_ORDER = ("mckp", "mckp2", "highs", "cbc")
_GENERAL = ("highs", "cbc")


def register(backend: Backend) -> Backend:
    """Add a back-end (overriding one of the same name); returns it so it can decorate instances."""
    return BACKENDS.register(backend)


def backend_names() -> list[str]:
    return sorted(BACKENDS.names())


def available_backends() -> list[str]:
    return sorted(BACKENDS.available_names())


def auto_backend(n_budgets: int, *, general: bool = False) -> Backend:
    """What "auto" runs for `n_budgets` budgets: the first available back-end in auto's order that
    accepts them; `general` only the ILPs (auto's hand-over when the knapsack search stops early).
    BackendUnavailable when none is installed."""
    order = _GENERAL if general else (*_AUTO_ORDER, *sorted(set(BACKENDS.names()) - set(_AUTO_ORDER)))
    for name in order:
        if name in BACKENDS.names() and BACKENDS.available(name):
            backend = BACKENDS.get(name)
            if backend.applies(n_budgets):
                return backend
    kind = "general ILP" if general else "installed"
    message = f"backend: no {kind} back-end accepts {n_budgets} budgets"
    raise BackendUnavailable(message, kind="backend", name=AUTO)


def get_backend(name: str, n_budgets: int = 1) -> Backend:
    """Look a back-end up by name ("auto": `auto_backend`). ValueError listing the valid names when
    unknown or when it takes fewer budgets; BackendUnavailable when its library is not installed."""
    if name == AUTO:
        return auto_backend(n_budgets)
    backend = BACKENDS.get(name)
    if not backend.applies(n_budgets):
        limit = backend.max_budgets
        raise ValueError(f"backend: {name!r} accepts at most {limit} budget(s), got {n_budgets}")
    return backend
