"""Exceptions of the workers part. `WorkersError` is the root; the service maps them at its edge.

Bad arguments (an unknown candidate name, a malformed hyperparameter) raise plain `ValueError`
whose message starts with the field it is about. The subclasses below that also derive from
`ValueError` are about bad *inputs* (files the user uploaded), so either `except` clause works.
"""

from __future__ import annotations


class WorkersError(Exception):
    """Root of every error the workers raise on purpose."""


class RequestError(WorkersError, ValueError):
    """A job request is malformed: a field is missing, unknown or of the wrong shape or value
    (raised only by the `from_dict` of workers.requests; the message starts with the field)."""


class ModelLoadError(WorkersError, ValueError):
    """A model file cannot be read, or does not fit the architecture it was declared with
    (missing / unexpected keys, shape mismatch, not a safetensors / torch.export archive)."""


class DatasetError(WorkersError, ValueError):
    """Calibration data is missing, unreadable or malformed (no `inputs`, non-float inputs,
    targets that are not integer class indices, length mismatch), or a metric that needs data got none."""


class AnalysisError(WorkersError):
    """The analysis itself failed on valid-looking inputs: the model has no quantizable layer,
    the forward pass raised on the calibration data, or the loss / an estimate is not finite."""
