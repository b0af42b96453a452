import copy
import re

import pytest
import torch
import torch.nn.functional as F

from tests.utils.workers_factories import trained_mlp
from workers.analysis import analyse
from workers.data import Calibration
from workers.errors import AnalysisError
from workers.metrics import MetricContext, get_metric
from workers.models import find_layers
from workers.quantizers import parse_candidates

CANDIDATES = parse_candidates(["int2", "int4", "int8"])


def direct(model, layer, candidate, x, y):
    """Independent reference: quantize a copy's layer and compare the mean losses."""
    quantized = copy.deepcopy(model)
    weight = getattr(quantized, layer).weight
    with torch.no_grad():
        weight.copy_(candidate.quantize(weight.detach()))
        if y is not None:
            return float(F.cross_entropy(quantized(x), y) - F.cross_entropy(model(x), y))
        ref = torch.log_softmax(model(x), -1)
        return float(F.kl_div(torch.log_softmax(quantized(x), -1), ref, reduction="batchmean", log_target=True))


@pytest.mark.parametrize("labels", [True, False], ids=["cross_entropy", "label_free"])
def test_matches_a_direct_measurement(labels):
    model, x, y = trained_mlp()
    target = y if labels else None
    table = analyse(model, Calibration(x, target, batch_size=24), CANDIDATES, get_metric("loss_delta"))
    for layer in ("fc1", "fc2"):
        row = table.layer(layer)
        for q in CANDIDATES:
            assert row.candidate(q.name).raw_damage == pytest.approx(direct(model, layer, q, x, target), rel=1e-4, abs=1e-7)
        assert row.mean == max(c.raw_damage for c in row.candidates)
        assert row.ci_halfwidth is None and row.samples is None


def test_deterministic_restores_weights_and_reports_eta():
    model, x, y = trained_mlp()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    messages = []
    ctx = MetricContext(model, find_layers(model), Calibration(x, y), CANDIDATES, 0, report=lambda f, m: messages.append((f, m)))
    first = [s.extra["delta"] for s in get_metric("loss_delta").measure(ctx)]
    second = [s.extra["delta"] for s in get_metric("loss_delta").measure(MetricContext(model, find_layers(model), Calibration(x, y), CANDIDATES, 9))]
    assert first == second
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert len(messages) == 6 and messages[-1][0] == 1.0
    assert re.fullmatch(r"loss_delta: 1 of 6 evaluations \(fc1 × int2\), ETA \d+ s", messages[0][1])


def test_weights_restored_when_a_quantizer_fails():
    model, x, y = trained_mlp()
    state = {k: v.clone() for k, v in model.state_dict().items()}

    class Broken:
        name = "broken"

        def quantize(self, weight):
            raise RuntimeError("boom")

    ctx = MetricContext(model, find_layers(model), Calibration(x, y), [CANDIDATES[0], Broken()], 0)
    with pytest.raises(RuntimeError, match="boom"):
        get_metric("loss_delta").measure(ctx)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_unmeasured_candidate_is_an_error():
    model, x, y = trained_mlp()
    stat = get_metric("loss_delta").measure(MetricContext(model, find_layers(model), Calibration(x, y), CANDIDATES[:1], 0))[0]
    w = model.fc1.weight.detach()
    with pytest.raises(AnalysisError, match="int8"):
        get_metric("loss_delta").damage(stat, CANDIDATES[2], w, w)
