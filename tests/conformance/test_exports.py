"""Every registered export format: resolves to a shared `Exporter` instance with the documented
attributes, and without a model either exports deterministically and reads its own export back or
refuses with an ExportError. Per-format details live in tests/workers/test_exports*.py."""

import pytest

from workers.exports import (
    EXPORTERS, Export, ExportError, Exporter, ExportPlan, exporter_names, exporters, get_exporter,
)

LAYERS = [
    {"name": "fc1", "kind": "linear", "weight_shape": [8, 6]},
    {"name": "fc2", "kind": "linear", "weight_shape": [4, 8]},
]


@pytest.fixture(params=exporter_names())
def name(request):
    state = EXPORTERS.available(request.param)
    if not state:
        assert state.reason  # an unavailable format says why
        with pytest.raises(ValueError, match=f"^format: '{request.param}' is not available here \\(.+\\)$"):
            get_exporter(request.param)
        pytest.skip(f"{request.param}: {state.reason}")
    return request.param


def test_resolves_to_a_shared_instance_with_the_documented_attributes(name):
    exporter = get_exporter(name)
    assert isinstance(exporter, Exporter) and exporter.name == name
    assert get_exporter(name) is exporter  # stateless: one instance serves every caller
    assert isinstance(exporter.description, str) and exporter.description
    assert isinstance(exporter.needs_model, bool)
    assert exporters()[name] is exporter


def test_exports_deterministically_and_reads_back_or_refuses(name):
    exporter = get_exporter(name)
    if exporter.needs_model:
        pytest.skip(f"{name} opens the model (covered with one in tests/workers/test_exports.py)")
    plan = ExportPlan.from_table({"layers": LAYERS}, {"fc1": "int4"})
    try:
        exported = exporter.export(plan)
    except ExportError as exc:  # e.g. llama.cpp needs a model directory to name tensors
        assert str(exc)
        return
    assert isinstance(exported, Export) and exported.content and exported.filename and exported.media_type
    assert exporter.export(plan).content == exported.content
    back = exporter.read(exported.content, ["fc1", "fc2"])
    assert back["fc1"]["bits"] == 4 and back["fc2"] is None


def test_unknown_format_lists_every_registered_one():
    listed = ", ".join(exporter_names())
    with pytest.raises(ValueError, match=f"^format: unknown 'onnx' \\(valid: {listed}\\)$"):
        get_exporter("onnx")
