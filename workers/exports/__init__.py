"""Exports engines read: a plan written in the formats of quantization libraries and engines.

One registry (`EXPORTERS`; `get_exporter`, `exporter_names`); each format is an `Exporter` with a `name`, an
`available()` check, `export(plan)` and `read(content)` (the read-back every format is tested by).
Config formats need no torch; the fake-quantized checkpoint needs the model and torch, so callers in
the API process run it in a child process (`Exporter.needs_model`).
"""

from workers.exports._base import Export, ExportError, Exporter, ExportLayer, ExportPlan
from workers.exports._registry import EXPORTERS, exporter_names, exporters, get_exporter

__all__ = [
    "EXPORTERS",
    "Export",
    "ExportError",
    "ExportLayer",
    "ExportPlan",
    "Exporter",
    "exporter_names",
    "exporters",
    "get_exporter",
]
