"""The one registry of export formats; implementations are imported on first lookup."""

from __future__ import annotations

import importlib
from functools import cache

from workers.exports._base import Exporter

_EXPORTERS: dict[str, str] = {
    "json": "workers.exports._configs:PlainJson",
    "gptqmodel": "workers.exports._configs:GptqModelDynamic",
    "llmcompressor": "workers.exports._configs:LlmCompressor",
    "nncf": "workers.exports._configs:NncfBitwidthPerScope",
    "hawq": "workers.exports._configs:HawqBitConfig",
    "llamacpp": "workers.exports._llamacpp:LlamaCppQuantize",
    "llamacpp-types": "workers.exports._llamacpp:LlamaCppTensorTypes",
    "safetensors": "workers.exports._checkpoint:FakeQuantCheckpoint",
}


@cache
def _load(name: str) -> Exporter:
    module, cls = _EXPORTERS[name].split(":")
    return getattr(importlib.import_module(module), cls)()


def exporter_names() -> tuple[str, ...]:
    """Every registered format, available or not."""
    return tuple(_EXPORTERS)


def exporters() -> dict[str, Exporter]:
    """The formats whose dependencies are installed, by name."""
    return {name: _load(name) for name in _EXPORTERS if _load(name).available()}


def get_exporter(name: str) -> Exporter:
    """The exporter `name`; ValueError listing the valid names when unknown or unavailable."""
    if name not in _EXPORTERS:
        raise ValueError(f"format: unknown {name!r} (valid: {', '.join(exporter_names())})")
    exporter = _load(name)
    if not exporter.available():
        raise ValueError(f"format: {name!r} is not available here (a library it needs is missing)")
    return exporter
