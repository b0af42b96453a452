"""The one registry of export formats (solver.registry's shape); implementations are imported on
first lookup."""

from __future__ import annotations

from solver.registry import Registry
from workers.exports._base import Exporter

EXPORTERS: Registry[Exporter] = Registry(
    "format",
    {
        "json": "workers.exports._configs:PlainJson",
        "gptqmodel": "workers.exports._configs:GptqModelDynamic",
        "llmcompressor": "workers.exports._configs:LlmCompressor",
        "nncf": "workers.exports._configs:NncfBitwidthPerScope",
        "hawq": "workers.exports._configs:HawqBitConfig",
        "llamacpp": "workers.exports._llamacpp:LlamaCppQuantize",
        "llamacpp-types": "workers.exports._llamacpp:LlamaCppTensorTypes",
        "safetensors": "workers.exports._checkpoint:FakeQuantCheckpoint",
    },
    requires={
        "llamacpp": "the gguf package (pip install gguf)",
        "llamacpp-types": "the gguf package (pip install gguf)",
        "safetensors": "torch and safetensors",
    },
)


def exporter_names() -> tuple[str, ...]:
    """Every registered format, available or not."""
    return EXPORTERS.names()


def exporters() -> dict[str, Exporter]:
    """The formats whose dependencies are installed, by name."""
    return EXPORTERS.entries()


def get_exporter(name: str) -> Exporter:
    """The exporter `name`; ValueError listing the valid names when unknown, saying why when unavailable."""
    return EXPORTERS.get(name)
