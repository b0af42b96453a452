"""Registry of solver back-ends. `get_backend("auto", n)` picks the fastest exact one that applies."""

from __future__ import annotations

from solver.backends.base import Backend, Outcome
from solver.errors import BackendUnavailable

__all__ = ["Backend", "Outcome", "available_backends", "backend_names", "get_backend", "register"]

_REGISTRY: dict[str, Backend] = {}
_AUTO_ORDER = ("mckp", "mckp2", "highs", "cbc")


def register(backend: Backend) -> Backend:
    """Add a back-end (replacing one of the same name); returns it so it can decorate instances."""
    _REGISTRY[backend.name] = backend
    return backend


def _builtin() -> dict[str, Backend]:
    if not _REGISTRY:
        from solver.backends._cbc import CbcBackend
        from solver.backends._highs import HighsBackend
        from solver.backends._lattice import DpBackend
        from solver.backends._mckp import MckpBackend
        from solver.backends._two import Mckp2Backend

        for backend in (MckpBackend(), Mckp2Backend(), DpBackend(), HighsBackend(), CbcBackend()):
            _REGISTRY.setdefault(backend.name, backend)
    return _REGISTRY


def backend_names() -> list[str]:
    return sorted(_builtin())


def available_backends() -> list[str]:
    return [name for name, b in sorted(_builtin().items()) if b.available()]


def get_backend(name: str, n_budgets: int = 1) -> Backend:
    """Look a back-end up by name; "auto" gives the fastest available one accepting `n_budgets`."""
    registry = _builtin()
    if name == "auto":
        order = [n for n in _AUTO_ORDER if n in registry] + sorted(set(registry) - set(_AUTO_ORDER))
        for candidate in order:
            backend = registry[candidate]
            if backend.applies(n_budgets) and backend.available():
                return backend
        raise BackendUnavailable(f"no installed back-end accepts {n_budgets} budgets")
    if name not in registry:
        valid = ", ".join(["auto", *sorted(registry)])
        raise ValueError(f"unknown solver back-end {name!r}; valid names: {valid}")
    backend = registry[name]
    if not backend.available():
        raise BackendUnavailable(f"solver back-end {name!r} is not installed")
    if not backend.applies(n_budgets):
        raise ValueError(f"solver back-end {name!r} accepts at most {backend.max_budgets} budget(s), got {n_budgets}")
    return backend
