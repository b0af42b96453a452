"""The plug-in point for export formats and the plan they all read."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from workers.errors import WorkersError


class ExportError(WorkersError, ValueError):
    """The plan cannot be written in the requested format without changing it (a bit width or
    granularity the format has no way to say, a layer kind it does not quantize), or exported
    content does not read back as that format."""


@dataclass(frozen=True)
class ExportLayer:
    """One layer of the model: its name (module path), kind, weight shape and chosen candidate
    (None: the plan leaves it float)."""

    name: str
    kind: str
    weight_shape: tuple[int, ...]
    candidate: str | None

    @property
    def quantizer(self):
        from workers.quantizers import parse_candidate

        return None if self.candidate is None else parse_candidate(self.candidate)


@dataclass(frozen=True)
class ExportPlan:
    """What every exporter reads: the layers with their formats, plus where the model lives (only
    the checkpoint exporter opens it) and, for formats that name modules by class (NNCF scopes),
    the class of the root module and of named submodules when known."""

    layers: tuple[ExportLayer, ...]
    model: Mapping[str, Any] | None = None
    root_type: str = "Model"
    module_types: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_table(cls, table: Mapping[str, Any], assignment: Mapping[str, str], **kwargs: Any) -> ExportPlan:
        """Layers in the table's order; a layer the assignment omits stays float. Assignment keys
        that are not layers of the table are a ValueError."""
        names = [row["name"] for row in table["layers"]]
        unknown = sorted(set(assignment) - set(names))
        if unknown:
            raise ValueError(f"assignment: layer {unknown[0]!r} is not in the analysis table")
        layers = tuple(
            ExportLayer(row["name"], row["kind"], tuple(int(s) for s in row["weight_shape"]), assignment.get(row["name"]))
            for row in table["layers"]
        )
        return cls(layers=layers, **kwargs)

    @property
    def assignment(self) -> dict[str, str]:
        return {layer.name: layer.candidate for layer in self.layers if layer.candidate is not None}


@dataclass(frozen=True)
class Export:
    """Exported bytes with their media type and a file name; `warnings` say what the format could
    not express exactly (never silent)."""

    content: bytes
    media_type: str
    filename: str
    warnings: tuple[str, ...] = ()


class Exporter(ABC):
    """One export format.

    Rules: stateless and thread-safe; `export` is pure (same plan, same bytes: keys sorted, no
    timestamps) and raises `ExportError` when the plan cannot be written faithfully; `read` parses
    exported content back into {layer: {"bits", "symmetric", "group_size", "strategy"}} (None for
    layers left float / skipped), validating it with the target library's own schema when that
    library is installed. `available()` is False when a library the export itself needs is missing;
    it never raises. `needs_model`: export opens the model (torch), so run it in a job process.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    needs_model: ClassVar[bool] = False

    def available(self) -> bool:
        return True

    @abstractmethod
    def export(self, plan: ExportPlan) -> Export:
        """The plan in this format."""

    @abstractmethod
    def read(self, content: bytes, layers: Sequence[str] = ()) -> dict[str, dict[str, Any] | None]:
        """Exported content back to per-layer weight settings for the modules named in `layers`
        (plus any the content names), the way the engine that reads the format resolves them."""


def weight_settings(candidate: str | None) -> dict[str, Any] | None:
    """Bits, symmetry and granularity of a candidate as the config formats spell them."""
    if candidate is None:
        return None
    from workers.quantizers import parse_candidate

    q = parse_candidate(candidate)
    if getattr(q, "family", None) != "integer":
        raise ExportError(f"candidate {candidate!r}: only integer formats can be exported today")
    return {
        "bits": q.weight_bits,
        "symmetric": q.symmetric,
        "strategy": q.granularity,
        "group_size": q.group_size,
    }
