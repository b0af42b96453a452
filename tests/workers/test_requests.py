"""The job contract (workers.requests): each kind's request survives JSON both ways, and a bad field
is refused by `from_dict` alone, with a RequestError naming it, before any job loads a model."""

import json

import pytest

from workers.errors import RequestError
from workers.metrics import DEFAULT_METRIC
from workers.evaluation_jobs import evaluate_frontier_job, run_evaluation_job
from workers.jobs import run_analysis_job, run_export_job
from workers.requests import AnalysisRequest, EvaluationRequest, ExportRequest, ModelSource, damage_predicts

MODEL = {"format": "safetensors", "path": "/nowhere/m.safetensors", "architecture": "mlp", "hyperparams": {"hidden": [8]}}
PROBLEM = {"units": [{"name": "fc1", "weights": 4, "options": [{"candidate": "int4", "damage": 1.0, "costs": {"bytes": 2}},
                                                               {"candidate": "int8", "damage": 0.5, "costs": {"bytes": 4}}]}]}
TABLE = {"statistic": "hessian_trace", "layers": []}
REFINE_TABLE = {"statistic": "max_quadratic_damage", "layers": [{"name": "fc1"}]}

REQUESTS = [
    AnalysisRequest.from_dict({"model": MODEL, "dataset_path": "/d.safetensors", "candidates": ["int4", "int8"],
                               "metric": "hutchinson", "seed": 3, "options": {"batch_size": 8, "grouping": "block",
                                                                              "tolerance": 0.2}}),
    AnalysisRequest.from_dict({"model": MODEL, "metric": "mse"}),
    EvaluationRequest.from_dict({"model": MODEL, "dataset_path": "/e.safetensors", "problem": PROBLEM,
                                 "groups": {"fc1": ["fc1"]}, "assignment": {"fc1": "int4"}, "hawq_table": TABLE,
                                 "baselines": ["greedy"], "options": {"output_loss": "mse"}, "predicts": "kl"}),
    EvaluationRequest.from_dict({"model": MODEL, "dataset_path": "/e.safetensors", "problem": PROBLEM,
                                 "plans": [{"fc1": "int4"}, {"fc1": "int8"}], "refine_trials": 4}),
    EvaluationRequest.from_dict({"model": MODEL, "dataset_path": "/e.safetensors", "problem": PROBLEM,
                                 "assignment": {"fc1": "int4"}, "refine": {"rounds": 2, "table": REFINE_TABLE,
                                 "analysis": {"model": MODEL, "dataset_path": "/d.safetensors", "metric": "mse"}}}),
    EvaluationRequest.from_dict({"model": MODEL, "dataset_path": "/e.safetensors", "problem": PROBLEM, "points": 3,
                                 "min_bits": 2.5}),
    ExportRequest.from_dict({"format": "json", "table": TABLE, "assignment": {"fc1": "int4"}, "model": MODEL,
                             "out": "/scratch/export.bin", "root_type": "Sequential"}),
]


@pytest.mark.parametrize("request_", REQUESTS, ids=lambda r: type(r).__name__)
def test_every_request_survives_json_both_ways(request_):
    data = json.loads(json.dumps(request_.to_dict()))
    assert type(request_).from_dict(data) == request_
    assert type(request_).from_dict(data).to_dict() == data


def test_defaults_and_shapes():
    analysis = REQUESTS[1]
    assert analysis.candidates is None and analysis.seed == 0 and analysis.dataset_path is None
    assert analysis.analysis_options["grouping"] == "layer" and analysis.metric_options == {}
    assert REQUESTS[0].metric_options == {"tolerance": 0.2} and REQUESTS[0].analysis_options["batch_size"] == 8
    assert [r.target for r in REQUESTS[2:6]] == ["plan", "frontier", "plan", "frontier"]
    assert REQUESTS[5].points == 3 and REQUESTS[3].points is None
    assert isinstance(REQUESTS[6].model, ModelSource)
    assert REQUESTS[4].refine["analysis"].dataset_path == "/d.safetensors" and REQUESTS[2].refine is None


@pytest.mark.parametrize(
    "kind, data, pattern",
    [
        (AnalysisRequest, {"model": MODEL, "colour": "red"}, "^colour: unknown request field"),
        (AnalysisRequest, {"model": {**MODEL, "format": "onnx"}}, "^model.format: must be one of"),
        (AnalysisRequest, {"model": MODEL, "metric": "mse", "seed": -1}, "^seed: must be a non-negative integer"),
        (AnalysisRequest, {"model": MODEL, "metric": "mse", "candidates": "int4"}, "^candidates: must be a list"),
        (AnalysisRequest, {"model": MODEL, "metric": "mse", "options": {"grouping": "row"}}, "^options.grouping"),
        (AnalysisRequest, {"model": MODEL, "metric": "mse", "options": {"device": "tpu"}}, "^options.device"),
        (AnalysisRequest, {"model": MODEL, "metric": "mse", "options": {"hardware": "z80"}}, "^options.hardware"),
        (AnalysisRequest, {"model": MODEL}, f"^dataset: the {DEFAULT_METRIC} metric needs calibration data"),
        (EvaluationRequest, {"model": MODEL, "dataset_path": "/e", "assignment": {"fc1": 4}}, "^assignment: unit names"),
        (EvaluationRequest, {"model": MODEL, "dataset_path": "/e", "assignment": {"fc1": "int4"}, "points": 3},
         "^points: not allowed with assignment"),
        (EvaluationRequest, {"model": MODEL, "dataset_path": "/e", "problem": PROBLEM, "hawq_table": TABLE},
         "^hawq_table: only with assignment"),
        (EvaluationRequest, {"model": MODEL, "dataset_path": "/e", "problem": PROBLEM, "plans": [{}]},
         r"^plans\[0\]: must be a non-empty"),
        (EvaluationRequest, {"model": MODEL, "dataset_path": "/e", "problem": {"units": 3}}, "^problem"),
        (EvaluationRequest, {"model": MODEL, "dataset_path": "/e", "assignment": {"fc1": "int4"},
                             "options": {"output_loss": "ce"}}, "^options.output_loss: must be one of"),
        (EvaluationRequest, {"model": MODEL, "dataset_path": "/e", "assignment": {"fc1": "int4"}, "predicts": "mse"},
         "^predicts: must be null or 'kl'"),
        (EvaluationRequest, {"model": MODEL, "dataset_path": "/e", "problem": PROBLEM, "assignment": {"fc1": "int4"},
                             "refine": {"rounds": 0, "table": REFINE_TABLE}}, r"^refine.rounds: must be an integer in 1..10"),
        (EvaluationRequest, {"model": MODEL, "dataset_path": "/e", "problem": PROBLEM, "assignment": {"fc1": "int4"},
                             "refine": {"rounds": 1, "table": REFINE_TABLE, "analysis": {"model": MODEL, "metric": "mse"}}},
         r"^refine.analysis.dataset_path: required"),
        (EvaluationRequest, {"model": MODEL, "dataset_path": "/e", "problem": PROBLEM, "plans": [{"fc1": "int4"}],
                             "refine": {"rounds": 1}}, "^refine: only with assignment"),
        (ExportRequest, {"format": "nosuch", "table": TABLE, "assignment": {"fc1": "int4"}, "model": MODEL, "out": "/o"},
         "^format: unknown 'nosuch'"),
        (ExportRequest, {"format": "json", "table": TABLE, "assignment": {"fc1": "int4"}, "model": MODEL}, "^out: required"),
    ],
)
def test_a_bad_field_is_refused_naming_it(kind, data, pattern):
    with pytest.raises(RequestError, match=pattern):
        kind.from_dict(data)


@pytest.mark.parametrize(
    "job, data, pattern",
    [
        (run_analysis_job, {"model": MODEL, "metric": "mse", "seed": "x"}, "^seed"),
        (run_evaluation_job, {"model": MODEL, "dataset_path": "/e", "assignment": {}}, "^assignment"),
        (evaluate_frontier_job, {"model": MODEL, "dataset_path": "/e", "problem": PROBLEM, "points": 0}, "^points"),
        (run_export_job, {"format": "json", "table": TABLE, "assignment": {}, "model": MODEL, "out": "/o"}, "^assignment"),
    ],
)
def test_the_job_functions_refuse_through_from_dict_before_loading_anything(job, data, pattern):
    # the model path does not exist: a RequestError shows the request was refused before any load
    with pytest.raises(RequestError, match=pattern):
        job(data)


def test_an_evaluation_function_refuses_the_other_target():
    with pytest.raises(RequestError, match="^assignment: a frontier evaluation, not a plan one"):
        run_evaluation_job(REQUESTS[3])
    with pytest.raises(RequestError, match="^assignment: a plan evaluation, not a frontier one"):
        evaluate_frontier_job(REQUESTS[2])


@pytest.mark.parametrize(
    "metric, loss, predicts",
    [
        ("sampled_gauss_newton", "kl_label_free", "kl"),
        ("gauss_newton", "cross_entropy", "kl"),  # cross-entropy's Gauss-Newton matrix in the logits is KL's
        ("loss_delta", "kl_label_free", "kl"),
        ("loss_delta", "cross_entropy", None),  # a measured change of cross-entropy, not of KL
        ("sampled_gauss_newton", "mse_label_free", None),
        ("hutchinson", "kl_label_free", None),  # a trace × ‖ΔW‖² proxy, in no loss's units
    ],
)
def test_an_evaluation_sets_measured_kl_against_the_damages_only_when_they_are_kl(metric, loss, predicts):
    assert damage_predicts({"metric": metric, "loss": loss}) == predicts
