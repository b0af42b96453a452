"""One registry shape for every plug-in point: solver back-ends, queue back-ends, quantizer
families, sensitivity metrics and export formats.

Why one: five hand-written registries had five behaviours (one lost its built-ins when something
was registered first, one returned classes, one dropped unavailable entries without saying why).
It lives in solver/ because that is the bottom package (pure, no optional imports), so workers/ and
service/ can share it.

The shape: `register(entry)`, `names()`, `available(name)` (whether it can run here, and why not),
`get(name)` (the entry instance; an error listing the valid names otherwise). Built-ins are named
up front as "module:attr" targets (attr called with no arguments gives the entry) and imported on
first lookup, so building a registry costs nothing at import and an optional library that is
missing never breaks an import; a built-in's availability is checked once. They are always
present: `register` adds or overrides a name, `unregister` removes only what was registered, so a
built-in of the same name comes back.

Entries are instances with a `name` and an `available()` that is cheap and never raises. Entries
are shared: one instance serves every caller, so they must be immutable or stateless. Thread-safe.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

__all__ = ["Availability", "Entry", "Registry", "RegistryError", "Unavailable", "UnknownName"]


class Entry(Protocol):
    name: str

    def available(self) -> bool: ...


T = TypeVar("T", bound=Entry)


@dataclass(frozen=True)
class Availability:
    """Whether an entry can run here; `reason` says why not (None when it can)."""

    ok: bool
    reason: str | None = None

    def __bool__(self) -> bool:
        return self.ok


class RegistryError(ValueError):
    """A lookup failed: a bad argument, so a ValueError; `valid` is what the caller could have asked for."""

    def __init__(self, message: str, *, kind: str = "", name: str = "", valid: Iterable[str] = ()):
        super().__init__(message)
        self.kind, self.name, self.valid = kind, name, tuple(valid)


class UnknownName(RegistryError):
    """No entry has that name; the message lists the valid names."""


class Unavailable(RegistryError):
    """The entry is registered but cannot run here (an optional library is missing); the message says why."""


class Registry(Generic[T]):
    """The entries of one plug-in point, by name, in registration order (built-ins first).

    `kind` starts every message ("metric: unknown 'x' (valid: ...)"). `requires` says, per built-in,
    what it needs when it is unavailable (an entry may also carry a `requires` attribute).
    `also_valid` are names the caller resolves itself (the solver's "auto"), listed among the valid
    ones. `unavailable` is the error class `get` raises for an unavailable entry.
    """

    def __init__(
        self,
        kind: str,
        builtins: Mapping[str, str | Callable[[], T]],
        *,
        requires: Mapping[str, str] | None = None,
        also_valid: Iterable[str] = (),
        unavailable: type[Unavailable] = Unavailable,
    ):
        self.kind = kind
        self._builtins = dict(builtins)
        self._requires = dict(requires or {})
        self._also_valid = tuple(also_valid)
        self._unavailable = unavailable
        self._loaded: dict[str, T] = {}
        self._builtin_state: dict[str, Availability] = {}
        self._registered: dict[str, T] = {}
        self._lock = threading.RLock()

    def register(self, entry: T) -> T:
        """Add `entry` under its name (overriding an entry of the same name); returns it."""
        with self._lock:
            self._registered[entry.name] = entry
        return entry

    def unregister(self, name: str) -> None:
        """Remove a registered entry (a built-in of the same name is visible again)."""
        with self._lock:
            del self._registered[name]

    def names(self) -> tuple[str, ...]:
        """Every name, available here or not: built-ins first, then registered ones, in order."""
        with self._lock:
            return tuple(dict.fromkeys([*self._builtins, *self._registered]))

    def valid_names(self) -> tuple[str, ...]:
        """What an error message lists: `also_valid`, then every name."""
        return (*self._also_valid, *self.names())

    def available(self, name: str) -> Availability:
        """Whether entry `name` can run here, with the reason when not; UnknownName when there is none."""
        entry = self._entry(name)
        with self._lock:
            known = self._builtin_state.get(name) if name not in self._registered else None
        if known is not None:
            return known
        if entry.available():
            state = Availability(True)
        else:
            needs = getattr(entry, "requires", None) or self._requires.get(name)
            state = Availability(False, f"needs {needs}" if needs else "a library it needs is not installed")
        if name not in self._registered:  # installed libraries do not change while the process runs
            with self._lock:
                self._builtin_state[name] = state
        return state

    def get(self, name: str) -> T:
        """The entry `name`; UnknownName listing the valid names, or Unavailable saying why it cannot run."""
        state = self.available(name)
        if not state:
            raise self._unavailable(
                f"{self.kind}: {name!r} is not available here ({state.reason})",
                kind=self.kind, name=name, valid=self.available_names(),
            )
        return self._entry(name)

    def peek(self, name: str) -> T | None:
        """The entry if it is registered or already imported, else None: never imports (so torch-free
        callers can prefer an entry's own answer and fall back to facts recorded with the built-in)."""
        with self._lock:
            if name not in self._registered and name not in self._builtins:
                self._entry(name)  # raises UnknownName
            return self._registered.get(name, self._loaded.get(name))

    def entries(self) -> dict[str, T]:
        """The entries that can run here, by name, in `names()` order."""
        return {name: self._entry(name) for name in self.names() if self.available(name)}

    def available_names(self) -> tuple[str, ...]:
        return tuple(self.entries())

    def _entry(self, name: str) -> T:
        """The entry, loading a built-in on first use; UnknownName when there is none."""
        with self._lock:
            if name in self._registered:
                return self._registered[name]
            if name in self._loaded:
                return self._loaded[name]
            if name not in self._builtins:
                valid = self.valid_names()
                message = f"{self.kind}: unknown {name!r} (valid: {', '.join(valid)})"
                raise UnknownName(message, kind=self.kind, name=name, valid=valid)
            target = self._builtins[name]
            # An ImportError here is not "unavailable": modules import their optional libraries
            # lazily, so it is a real failure (a broken install, or no memory to map torch) and is
            # raised as such.
            entry = _load(target)() if isinstance(target, str) else target()
            self._loaded[name] = entry
            return entry


def _load(target: str) -> Callable[[], T]:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)
