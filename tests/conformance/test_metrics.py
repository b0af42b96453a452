"""One suite run against every registered metric: the same table shape, seeded, side-effect free."""

import math
import subprocess
import sys

import pytest
import torch

from tests.utils.workers_factories import trained_mlp
from workers.analysis import analyse
from workers.data import Calibration
from workers.errors import DatasetError
from workers.metrics import (
    METRICS, LayerStatistic, Metric, MetricContext, get_metric, metric_names, metric_needs_data, metric_options,
)
from workers.metrics._registry import DEFAULT_METRIC, NEEDS_DATA, OPTION_NAMES, SHARDABLE
from workers.models import find_layers
from workers.quantizers import parse_candidates

# Cheap settings so the whole suite stays fast; every metric's defaults are exercised elsewhere.
FAST = {"hutchinson": {"tolerance": 0.3, "max_probes": 64}, "eigen": {"max_iterations": 20}}
CANDIDATES = ["int2", "int4", "int8", "int4_asym"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def metric(name, **options):
    return get_metric(name, {**FAST.get(name, {}), **options})


def table(name, model, calibration, seed=0, **options):
    return analyse(model, calibration, parse_candidates(CANDIDATES), metric(name, **options), seed=seed)


@pytest.fixture(params=metric_names())
def name(request):
    state = METRICS.available(request.param)
    if not state:
        assert state.reason  # an unavailable metric says why
        pytest.skip(f"{request.param}: {state.reason}")
    return request.param


def test_registry_lists_the_metrics():
    assert set(metric_names()) >= {"hutchinson", "eigen", "fisher", "gauss_newton", "mse", "loss_delta"}
    assert [n for n in metric_names() if not metric_needs_data(n)] == ["mse"]
    assert set(NEEDS_DATA) == set(OPTION_NAMES) == set(metric_names())  # every built-in answers without torch
    assert DEFAULT_METRIC in metric_names()
    with pytest.raises(ValueError, match="^metric: unknown 'hessian' .*valid: eigen, fisher, gauss_newton, hutchinson"):
        get_metric("hessian")
    with pytest.raises(ValueError, match="^metric: unknown 'x'.*loss_delta"):
        metric_needs_data("x")


def test_registry_lookups_need_no_torch():
    code = (
        "import sys; from workers.metrics import metric_names, metric_needs_data;"
        " assert [metric_needs_data(n) for n in metric_names()];"
        " from workers.metrics import metric_option_names; assert [metric_option_names(n) for n in metric_names()];"
        " assert 'torch' not in sys.modules, 'torch loaded'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_class_agrees_with_registry(name):
    m = get_metric(name)
    assert isinstance(m, Metric) and m.name == name and m.statistic
    assert isinstance(m.name, str) and isinstance(m.statistic, str) and isinstance(m.needs_data, bool)
    assert m.needs_data is NEEDS_DATA[name] is metric_needs_data(name)  # the torch-free record agrees
    assert OPTION_NAMES[name] == metric_options(name)  # so the API refuses the same unknown options
    assert m.shardable is (name in SHARDABLE)  # options.shards is refused at submit for the same metrics
    if m.shardable:
        assert callable(m.measure_share) and callable(m.merge_shares)
    assert get_metric(name) is not get_metric(name)  # options are per instance: never the shared entry
    assert METRICS.get(name).name == name


def test_defaults_are_valid_options(name):
    m = get_metric(name)
    defaults = {option: getattr(m, option) for option in metric_options(name)}
    assert get_metric(name, defaults) == m


def test_a_registered_metric_answers_for_itself():
    class Probe(type(get_metric("mse"))):
        name = "probe_metric"
        needs_data = True

    METRICS.register(Probe())
    try:
        assert "probe_metric" in metric_names() and metric_needs_data("probe_metric") is True
        assert type(get_metric("probe_metric", {"normalize": "model"})) is Probe
        assert metric_needs_data("mse") is False  # the built-ins are still there
    finally:
        METRICS.unregister("probe_metric")
    with pytest.raises(ValueError, match="^metric: unknown 'probe_metric'"):
        get_metric("probe_metric")


@pytest.mark.parametrize("labels", [True, False], ids=["targets", "label_free"])
def test_fills_the_same_table_shape(name, labels):
    model, x, y = trained_mlp()
    t = table(name, model, Calibration(x, y if labels else None, batch_size=32))
    assert t.metric == name and t.candidates == CANDIDATES
    assert [row.name for row in t.layers] == ["fc1", "fc2"]
    expected_loss = "none" if not metric_needs_data(name) else ("cross_entropy" if labels else "kl_label_free")
    assert t.loss == expected_loss
    for row in t.layers:
        assert math.isfinite(row.mean)
        assert row.ci_halfwidth is None or (math.isfinite(row.ci_halfwidth) and row.ci_halfwidth >= 0)
        assert row.samples is None or row.samples > 0
        assert [c.candidate for c in row.candidates] == CANDIDATES
        for c in row.candidates:
            assert math.isfinite(c.damage) and math.isfinite(c.raw_damage)
            if name != "loss_delta" or not labels:  # a measured cross-entropy change may be negative
                assert c.raw_damage >= 0
        assert row.candidate("int2").damage >= row.candidate("int4").damage >= row.candidate("int8").damage
    assert t.to_problem().units[0].name == "fc1"


def test_reproducible_from_the_seed(name):
    model, x, y = trained_mlp()
    runs = [table(name, model, Calibration(x, None, batch_size=32), seed=7).to_dict() for _ in range(2)]
    for run in runs:  # what the machine had free and used is a measurement of the run, not of the model
        assert run["provenance"].pop("memory")["peak_rss_bytes"] > 0
    assert runs[0] == runs[1]


def test_restores_requires_grad_training_mode_and_weights(name):
    model, x, y = trained_mlp(steps=0)
    model.train()
    model.fc1.bias.requires_grad_(False)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    ctx = MetricContext(model, find_layers(model), Calibration(x, y), parse_candidates(CANDIDATES), seed=0)
    stats = metric(name).measure(ctx)
    assert len(stats) == 2 and all(isinstance(s, LayerStatistic) for s in stats)
    assert model.training and not model.fc1.bias.requires_grad
    assert model.fc1.weight.requires_grad and model.fc2.weight.requires_grad
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_without_data(name):
    model, _, _ = trained_mlp(steps=0)
    ctx = MetricContext(model, find_layers(model), None, parse_candidates(["int4"]), seed=0)
    if metric_needs_data(name):
        with pytest.raises(DatasetError, match=f"^dataset: the {name} metric needs calibration data"):
            metric(name).measure(ctx)
    else:
        assert len(metric(name).measure(ctx)) == 2


def test_progress_is_monotone_and_ends_at_one(name):
    model, x, y = trained_mlp()
    seen = []
    ctx = MetricContext(
        model, find_layers(model), Calibration(x, None, batch_size=16), parse_candidates(CANDIDATES), seed=0,
        report=lambda f, m: seen.append((f, m)),
    )
    metric(name).measure(ctx)
    fractions = [f for f, _ in seen]
    assert fractions and fractions[-1] == 1.0 and all(0 <= f <= 1 for f in fractions)
    assert fractions == sorted(fractions)
    assert all(m.startswith(name) for _, m in seen)


def test_scaled_up_layer_scores_more_sensitive(name):
    """Scaling fc1's weights up changes the function; each metric must notice. mse's default
    ("tensor", a noise-to-signal ratio) is scale-invariant by design, so its "model" form is used."""
    options = {"normalize": "model"} if name == "mse" else {}
    int4 = parse_candidates(["int4"])
    model, x, _ = trained_mlp()
    before = analyse(model, Calibration(x), int4, metric(name, **options)).layer("fc1").candidate("int4").damage
    with torch.no_grad():
        model.fc1.weight.mul_(4.0)
    after = analyse(model, Calibration(x), int4, metric(name, **options)).layer("fc1").candidate("int4").damage
    assert after > 1.5 * before, (before, after)


def test_unknown_option_names_the_valid_ones(name):
    with pytest.raises(ValueError, match=f"^options.bogus: unknown option for metric '{name}' \\(valid: "):
        get_metric(name, {"bogus": 1})
