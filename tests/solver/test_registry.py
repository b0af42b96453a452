"""The one registry shape every plug-in point uses (solver/registry.py)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from solver.registry import Availability, Registry, Unavailable, UnknownName


@dataclass(frozen=True)
class Thing:
    name: str
    ok: bool = True

    def available(self) -> bool:
        return self.ok


class Missing(Unavailable):
    pass


def _registry(calls: list[str] | None = None) -> Registry[Thing]:
    def make(name: str, ok: bool = True):
        def build() -> Thing:
            if calls is not None:
                calls.append(name)
            return Thing(name, ok)

        return build

    return Registry(
        "thing", {"a": make("a"), "b": make("b", ok=False)}, requires={"b": "the b library"},
        also_valid=("auto",), unavailable=Missing,
    )


def test_registering_first_keeps_the_built_ins():
    reg = _registry()
    reg.register(Thing("c"))  # before any lookup
    assert reg.names() == ("a", "b", "c")
    assert reg.get("a") == Thing("a") and reg.get("c") == Thing("c")


def test_built_ins_load_on_first_lookup_only_and_once():
    calls: list[str] = []
    reg = _registry(calls)
    assert reg.names() == ("a", "b") and calls == []
    assert reg.get("a") is reg.get("a") and calls == ["a"]


def test_unknown_name_lists_the_valid_ones():
    reg = _registry()
    with pytest.raises(UnknownName, match=r"^thing: unknown 'z' \(valid: auto, a, b\)$") as info:
        reg.get("z")
    assert isinstance(info.value, ValueError) and info.value.valid == ("auto", "a", "b")
    with pytest.raises(UnknownName):
        reg.available("z")


def test_unavailable_entry_says_why():
    reg = _registry()
    assert reg.available("a") == Availability(True) and bool(reg.available("a"))
    assert reg.available("b") == Availability(False, "needs the b library") and not reg.available("b")
    with pytest.raises(Missing, match=r"^thing: 'b' is not available here \(needs the b library\)$") as info:
        reg.get("b")
    assert isinstance(info.value, ValueError)
    assert reg.entries() == {"a": Thing("a")} and reg.available_names() == ("a",)


def test_register_overrides_and_unregister_restores_the_built_in():
    reg = _registry()
    reg.register(Thing("b", ok=True))
    assert reg.get("b") == Thing("b", ok=True)
    reg.unregister("b")
    assert not reg.available("b")
    reg.register(Thing("x", ok=False))
    assert reg.available("x").reason == "a library it needs is not installed"


def test_peek_never_imports():
    calls: list[str] = []
    reg = _registry(calls)
    assert reg.peek("a") is None and calls == []
    reg.get("a")
    assert reg.peek("a") == Thing("a")
    with pytest.raises(UnknownName):
        reg.peek("z")


def test_an_import_error_is_raised_not_called_unavailable():
    reg: Registry[Thing] = Registry("thing", {"broken": "solver._no_such_module:Thing"})
    with pytest.raises(ImportError):
        reg.available("broken")
