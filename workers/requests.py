"""The contract between the service and the job functions: one frozen request per job kind.

Why one place: a request crosses a process boundary as JSON (the job runner writes it to the
child's stdin), so it is plain data with one `to_dict` (what is sent) and one `from_dict` (what is
received), and `from_dict` is the only place a request is checked: the job functions trust what
it returns. A bad field raises `RequestError`, whose message starts with the field. The service
builds requests from its rows with the constructors (no checks, no torch in the API process);
the job child parses them with `from_dict`, which imports the registries it checks names
against (quantizers, metrics, exporters) only when it runs. Checks that need the model or the
data (a latency table's layer names, a dataset's tensors) stay where those are loaded.

Adding a job kind: its request here, its job function in workers, and its entry in
service.jobs.kinds.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from workers.errors import RequestError
from workers.metrics import DEFAULT_METRIC

__all__ = [
    "ANALYSIS_OPTIONS", "BASELINES", "EVALUATION_OPTIONS", "AnalysisRequest", "EvaluationRequest", "ExportRequest", "ModelSource",
    "RequestError", "check_analysis_option_values", "damage_predicts",
]

MODEL_FORMATS = ("safetensors", "pt2", "hf")

# options keys the analysis itself reads (defaults); every other key goes to the metric.
#   batch_size    largest calibration mini-batch (lowered to fit the free memory, halved on out-of-memory)
#   max_samples   cap on calibration samples (text: windows, default 64)
#   max_length    cap on sequence length (text: window length in tokens, default 128)
#   device        "auto" (CUDA when available, else CPU) | "cpu" | "cuda" | "cuda:N"
#   hardware      roofline latency: "t4" | "a100" | "h100" | {name, peak_ops: {bits: ops/s}, bandwidth}
#                 (without a dataset, MACs come from a zero sample of the recorded input shape)
#   latency_table {layer: {candidate: ms}} measured latencies (instead of `hardware`)
#   grouping      "layer" | "block" | [name prefixes]: decision units
#   ties          "auto" (tie fusable projections found in the traced pass) | "none"
#   refine_bits   average bits: after the analysis, solve there and correct the plan for
#                 interactions measured on the calibration data (workers.refine); the rounds,
#                 predicted vs measured, land in the table's provenance["refinement"]
#   refine_rounds rounds of that loop (one forward + backward each), default 3
#   spot_checks   layers whose single-layer loss change is measured for each candidate of ≤ 4 weight bits,
#                 to correct the second-order damage of large roundings (workers.spot_check); 0 = off
#   shards        split the calibration samples over this many sub-jobs (workers.sharding), each run by
#                 whichever worker is free, their sums merged exactly; only metrics that shard
ANALYSIS_OPTIONS: dict[str, Any] = {
    "batch_size": 256,
    "max_samples": None,
    "max_length": None,
    "device": "auto",
    "hardware": None,
    "latency_table": None,
    "grouping": "layer",
    "ties": "auto",
    "refine_bits": None,
    "refine_rounds": 3,
    "spot_checks": 8,
    "shards": 1,
}
EVALUATION_OPTIONS: dict[str, Any] = {"batch_size": 256, "max_samples": None, "output_loss": "kl"}
BASELINES = ("uniform", "greedy", "hawq_v3")  # what workers.evaluation_jobs.baseline_plans builds
# metrics whose damage predicts (second order) or measures a layer's KL to the float model per output
# row, under the losses listed: an evaluation compares a plan's measured KL with their sum. The
# Gauss-Newton matrix of cross-entropy in the logits is KL's, so the GN metrics predict KL under both.
KL_DAMAGE_METRICS = {
    "sampled_gauss_newton": ("kl_label_free", "cross_entropy"),
    "gauss_newton": ("kl_label_free", "cross_entropy"),
    "loss_delta": ("kl_label_free",),
}


def damage_predicts(table: Mapping[str, Any] | None) -> str | None:
    """"kl" when an analysis table's damages are in units of the KL to the float model per output row
    (EvaluationRequest.predicts), else None."""
    table = table or {}
    return "kl" if table.get("loss") in KL_DAMAGE_METRICS.get(table.get("metric"), ()) else None


@dataclass(frozen=True)
class ModelSource:
    """Where a model lives and how to read it (workers.models loads it)."""

    format: str
    path: str
    architecture: str | None = None
    hyperparams: dict[str, Any] | None = None

    @classmethod
    def from_dict(cls, data: Any) -> ModelSource:
        _fields(data, "model", ("format", "path", "architecture", "hyperparams"))
        fmt, path = data.get("format"), data.get("path")
        if fmt not in MODEL_FORMATS:
            raise RequestError(f"model.format: must be one of {', '.join(MODEL_FORMATS)}, got {fmt!r}")
        if not isinstance(path, str) or not path:
            raise RequestError("model.path: must be a non-empty string")
        arch, hyper = data.get("architecture"), data.get("hyperparams")
        if fmt == "hf" and arch is not None:
            raise RequestError("model.architecture: an 'hf' directory names its own architecture in config.json")
        if fmt == "safetensors" and not isinstance(arch, str):
            raise RequestError("model.architecture: required for a safetensors model")
        if arch is not None and not isinstance(arch, str):
            raise RequestError("model.architecture: must be a string")
        if hyper is not None and not isinstance(hyper, Mapping):
            raise RequestError("model.hyperparams: must be a JSON object")
        return cls(fmt, path, arch, dict(hyper) if hyper is not None else None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class AnalysisRequest:
    """One sensitivity analysis (workers.jobs.run_analysis_job). `candidates` None: the default
    set; `options`: ANALYSIS_OPTIONS keys, the rest go to the metric. Model format "hf" takes a
    Hugging Face directory, and then `dataset_path` may be text (JSONL or lines) tokenized by its
    tokenizer.

    A sharded analysis (`options.shards` > 1) runs as sub-jobs: each with `shard` = (index, count)
    measures its share of the samples (workers.jobs.run_shard_job), then the analysis itself runs
    with every shard's sums in `shard_sums` and measures nothing (workers.sharding)."""

    model: ModelSource
    dataset_path: str | None = None
    candidates: tuple[str, ...] | None = None
    metric: str = DEFAULT_METRIC
    seed: int = 0
    options: Mapping[str, Any] = field(default_factory=dict)
    shard: tuple[int, int] | None = None
    shard_sums: tuple[Mapping[str, Any], ...] | None = None

    @property
    def analysis_options(self) -> dict[str, Any]:
        """Every ANALYSIS_OPTIONS key, given or default."""
        return {k: self.options.get(k, v) for k, v in ANALYSIS_OPTIONS.items()}

    @property
    def metric_options(self) -> dict[str, Any]:
        return {k: v for k, v in self.options.items() if k not in ANALYSIS_OPTIONS}

    @classmethod
    def from_dict(cls, data: Any) -> AnalysisRequest:
        _fields(data, "request", tuple(f.name for f in fields(cls)))
        if "model" not in data:
            raise RequestError("model: required")
        model = ModelSource.from_dict(data["model"])
        names = data.get("candidates")
        if names is not None:
            from workers.quantizers import parse_candidates

            _checked(lambda: parse_candidates(names), "candidates")
            names = tuple(names)
        metric = data.get("metric") or DEFAULT_METRIC
        if not isinstance(metric, str):
            raise RequestError(f"metric: must be a name, got {metric!r}")
        seed = 0 if data.get("seed") is None else data["seed"]
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
            raise RequestError(f"seed: must be a non-negative integer, got {seed!r}")
        dataset_path = data.get("dataset_path")
        if dataset_path is not None and (not isinstance(dataset_path, str) or not dataset_path):
            raise RequestError("dataset_path: must be a non-empty string or null")
        options = _mapping(data.get("options"), "options")
        request = cls(model, dataset_path, names, metric, seed, options)
        _check_analysis_options(request)
        return _with_shard_fields(request, data)

    def to_dict(self) -> dict[str, Any]:
        out = {"model": self.model.to_dict(), "dataset_path": self.dataset_path,
               "candidates": None if self.candidates is None else list(self.candidates), "metric": self.metric,
               "seed": self.seed, "options": dict(self.options)}
        if self.shard is not None:
            out["shard"] = list(self.shard)
        if self.shard_sums is not None:
            out["shard_sums"] = [dict(part) for part in self.shard_sums]
        return out


def _with_shard_fields(request: AnalysisRequest, data: Mapping[str, Any]) -> AnalysisRequest:
    """`shard` (a sub-job's index and count) or `shard_sums` (the merge's input), checked against options.shards."""
    from dataclasses import replace

    count, shard, sums = request.analysis_options["shards"], data.get("shard"), data.get("shard_sums")
    if shard is not None and sums is not None:
        raise RequestError("shard: a shard measures, the merge reads shard_sums; not both")
    if shard is not None:
        if (not isinstance(shard, list | tuple) or len(shard) != 2
                or any(isinstance(v, bool) or not isinstance(v, int) for v in shard)
                or not (0 <= shard[0] < shard[1] == count)):
            raise RequestError(f"shard: must be [index, count] with 0 ≤ index < count = options.shards ({count}),"
                               f" got {shard!r}")
        return replace(request, shard=(shard[0], shard[1]))
    if sums is not None:
        if not isinstance(sums, list | tuple) or len(sums) != count or not all(isinstance(p, Mapping) for p in sums):
            raise RequestError(f"shard_sums: must be one JSON object per shard ({count}), as the shards returned")
        return replace(request, shard_sums=tuple(dict(p) for p in sums))
    return request


def _check_analysis_options(request: AnalysisRequest) -> None:
    from workers.metrics import get_metric, metric_needs_data

    check_analysis_option_values(request.options, has_dataset=request.dataset_path is not None)
    if _checked(lambda: metric_needs_data(request.metric), "metric") and request.dataset_path is None:
        raise RequestError(f"dataset: the {request.metric} metric needs calibration data")
    _check_shards(request.analysis_options["shards"], request.metric)
    _checked(lambda: get_metric(request.metric, request.metric_options), "options")


def check_analysis_option_values(options: Mapping[str, Any], *, has_dataset: bool) -> None:
    """The values of the analysis's own options (ANALYSIS_OPTIONS; the metric checks its own), a
    RequestError naming the option: the service calls this at submit, the job again."""
    from workers.costs import parse_hardware
    from workers.units import validate_grouping, validate_ties

    opts = {k: options.get(k, v) for k, v in ANALYSIS_OPTIONS.items()}
    _positive_int(opts["batch_size"], "options.batch_size")
    for name in ("max_samples", "max_length"):
        if opts[name] is not None:
            _positive_int(opts[name], f"options.{name}")
    device = opts["device"]
    if device is not None and not (isinstance(device, str) and device in ("auto", "cpu", "cuda")
                                   or isinstance(device, str) and device.startswith("cuda:")):
        raise RequestError(f"options.device: must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if opts["hardware"] is not None:
        _checked(lambda: parse_hardware(opts["hardware"]), "options.hardware")
        if opts["latency_table"] is not None:
            raise RequestError("options.latency_table: give either a latency table or a hardware profile, not both")
    if opts["latency_table"] is not None:
        _mapping(opts["latency_table"], "options.latency_table")
    _checked(lambda: validate_grouping(opts["grouping"]), "options.grouping")
    _checked(lambda: validate_ties(opts["ties"]), "options.ties")
    bits, rounds = opts["refine_bits"], opts["refine_rounds"]
    if bits is not None:
        if isinstance(bits, bool) or not isinstance(bits, int | float) or not 0 < bits < 64:
            raise RequestError(f"options.refine_bits: must be average bits per weight in (0, 64), got {bits!r}")
        if not has_dataset:
            raise RequestError("options.refine_bits: the refinement measures plans on calibration data: give a dataset")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or not 0 <= rounds <= 20:
        raise RequestError(f"options.refine_rounds: must be an integer in 0..20, got {rounds!r}")
    checks = opts["spot_checks"]
    if isinstance(checks, bool) or not isinstance(checks, int) or not 0 <= checks <= 64:
        raise RequestError(f"options.spot_checks: must be an integer in 0..64, got {checks!r}")


def _check_shards(shards: Any, metric: str) -> None:
    """options.shards: a positive integer, above 1 only for a metric that shards (the sample count is
    checked where the samples are loaded)."""
    from workers.metrics import metric_shards
    from workers.metrics._registry import SHARDABLE

    _positive_int(shards, "options.shards")
    if shards > 1 and not metric_shards(metric):
        raise RequestError(f"options.shards: the {metric} metric cannot be split across workers (adaptive stopping"
                           f" or no per-sample sums); metrics that shard: {', '.join(SHARDABLE)}")


@dataclass(frozen=True)
class EvaluationRequest:
    """Measured truth (workers.evaluation_jobs). Two shapes, told apart by `assignment`:
    - one plan (`target` "plan"): `assignment` (unit → candidate), with the baselines at its
      budget (`baselines` None: all when a `problem` is given) and the plain HAWQ-v3 one from
      `hawq_table`;
    - a frontier (`target` "frontier"): `plans` (assignments, e.g. a stored frontier's points),
      or `points` evenly spaced ones of the `problem`'s frontier within `min_bits`..`max_bits`;
      `refine_trials` Optuna trials around it.
    `groups` is the analysis table's unit → layers (empty: every unit is one layer); `options`
    are EVALUATION_OPTIONS keys; `predicts` "kl" when the problem's damages are the KL to the float
    model per output row (`damage_predicts`), so a plan's measured KL can be set against them.
    `refine` (one plan only): {"rounds", "analysis": the AnalysisRequest whose calibration data the
    interactions loop measures on, "table": its sensitivity table}: the plan is refined at its own
    bytes (workers.refine) and the refined plan measured on the evaluation data beside it."""

    model: ModelSource
    dataset_path: str
    problem: Mapping[str, Any] | None = None
    groups: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)
    assignment: Mapping[str, str] | None = None
    hawq_table: Mapping[str, Any] | None = None
    baselines: tuple[str, ...] | None = None
    plans: tuple[Mapping[str, str], ...] | None = None
    points: int | None = None
    min_bits: float | None = None
    max_bits: float | None = None
    refine_trials: int = 0
    predicts: str | None = None
    refine: Mapping[str, Any] | None = None

    @property
    def target(self) -> str:
        return "plan" if self.assignment is not None else "frontier"

    @property
    def evaluation_options(self) -> dict[str, Any]:
        """Every EVALUATION_OPTIONS key, given or default."""
        return {k: self.options.get(k, v) for k, v in EVALUATION_OPTIONS.items()}

    @classmethod
    def from_dict(cls, data: Any) -> EvaluationRequest:
        _fields(data, "request", tuple(f.name for f in fields(cls)))
        if "model" not in data:
            raise RequestError("model: required")
        model = ModelSource.from_dict(data["model"])
        path = data.get("dataset_path")
        if not isinstance(path, str) or not path:
            raise RequestError("dataset_path: required (evaluation data: a safetensors file with inputs, optional targets)")
        options = _mapping(data.get("options"), "options")
        unknown = sorted(set(options) - set(EVALUATION_OPTIONS))
        if unknown:
            raise RequestError(f"options.{unknown[0]}: unknown option (valid: {', '.join(EVALUATION_OPTIONS)})")
        groups = data.get("groups") or {}
        if not isinstance(groups, Mapping) or not all(
            isinstance(unit, str) and isinstance(layers, list | tuple) and layers and all(isinstance(n, str) for n in layers)
            for unit, layers in groups.items()
        ):
            raise RequestError("groups: must be a JSON object of unit → non-empty list of layer names")
        problem = data.get("problem")
        if problem is not None:
            from solver import problem_from_dict

            _checked(lambda: problem_from_dict(problem), "problem")
        plan_only = ("hawq_table", "baselines", "refine")
        frontier_only = ("plans", "points", "min_bits", "max_bits", "refine_trials")
        if data.get("assignment") is not None:
            for name in frontier_only:
                if name in data:
                    raise RequestError(f"{name}: not allowed with assignment (one plan is measured)")
            shape = _plan_fields(data, problem)
        else:
            for name in plan_only:
                if name in data:
                    raise RequestError(f"{name}: only with assignment (the baselines are those of one plan)")
            shape = _frontier_fields(data, problem)
        predicts = data.get("predicts")
        if predicts not in (None, "kl"):
            raise RequestError(f"predicts: must be null or 'kl', got {predicts!r}")
        request = cls(model, path, problem, {u: tuple(ls) for u, ls in groups.items()}, options, **shape,
                      predicts=predicts)
        opts = request.evaluation_options
        _positive_int(opts["batch_size"], "options.batch_size")
        if opts["max_samples"] is not None:
            _positive_int(opts["max_samples"], "options.max_samples")
        from workers.evaluation import LABEL_FREE_LOSSES

        if opts["output_loss"] not in LABEL_FREE_LOSSES:
            raise RequestError(
                f"options.output_loss: must be one of {', '.join(LABEL_FREE_LOSSES)}, got {opts['output_loss']!r}")
        return request

    def to_dict(self) -> dict[str, Any]:
        out = {"model": self.model.to_dict(), "dataset_path": self.dataset_path, "problem": self.problem,
               "groups": {u: list(ls) for u, ls in self.groups.items()}, "options": dict(self.options),
               "predicts": self.predicts}
        if self.target == "plan":
            refine = None if self.refine is None else {**self.refine, "analysis": self.refine["analysis"].to_dict()}
            return {**out, "assignment": dict(self.assignment), "hawq_table": self.hawq_table,
                    "baselines": None if self.baselines is None else list(self.baselines), "refine": refine}
        if self.plans is not None:
            return {**out, "plans": [dict(p) for p in self.plans], "refine_trials": self.refine_trials}
        return {**out, "points": self.points, "min_bits": self.min_bits, "max_bits": self.max_bits,
                "refine_trials": self.refine_trials}


def _plan_fields(data: Mapping[str, Any], problem: Any) -> dict[str, Any]:
    table = data.get("hawq_table")
    if table is not None:
        _mapping(table, "hawq_table")
        if table.get("statistic") != "hessian_trace":
            raise RequestError(
                f"hawq_table: must be a Hutchinson (hessian_trace) table, got statistic {table.get('statistic')!r}")
    names = data.get("baselines")
    if names is not None:
        if not isinstance(names, list | tuple) or not all(isinstance(n, str) for n in names):
            raise RequestError("baselines: must be a list of names")
        for n in names:
            if n not in BASELINES:
                raise RequestError(f"baselines: unknown {n!r} (valid: {', '.join(BASELINES)})")
        names = tuple(names)
    if names and problem is None:
        raise RequestError("problem: required to build baselines")
    return {"assignment": _assignment(data["assignment"], "assignment"), "hawq_table": table, "baselines": names,
            "refine": _refine_field(data.get("refine"), problem)}


REFINE_MAX_ROUNDS = 10


def _refine_field(refine: Any, problem: Any) -> dict[str, Any] | None:
    """An evaluation's `refine`: rounds in 1..REFINE_MAX_ROUNDS, the analysis request whose calibration
    data it measures on, and that analysis's table."""
    if refine is None:
        return None
    refine = _mapping(refine, "refine")
    unknown = sorted(set(refine) - {"rounds", "analysis", "table"})
    if unknown:
        raise RequestError(f"refine.{unknown[0]}: unknown field (valid: rounds, analysis, table)")
    rounds = refine.get("rounds")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or not 1 <= rounds <= REFINE_MAX_ROUNDS:
        raise RequestError(f"refine.rounds: must be an integer in 1..{REFINE_MAX_ROUNDS}, got {rounds!r}")
    if problem is None:
        raise RequestError("problem: required to refine (the plan is re-solved at its bytes)")
    try:
        analysis = AnalysisRequest.from_dict(refine.get("analysis"))
    except RequestError as exc:
        raise RequestError(f"refine.analysis.{exc}") from None
    if analysis.dataset_path is None:
        raise RequestError("refine.analysis.dataset_path: required (the loop measures on the calibration data)")
    table = _mapping(refine.get("table"), "refine.table")
    if not table.get("layers"):
        raise RequestError("refine.table: required (the analysis's sensitivity table)")
    return {"rounds": rounds, "analysis": analysis, "table": table}


def _frontier_fields(data: Mapping[str, Any], problem: Any) -> dict[str, Any]:
    if problem is None:
        raise RequestError("problem: required")
    trials = data.get("refine_trials") or 0
    if isinstance(trials, bool) or not isinstance(trials, int) or not 0 <= trials <= 10_000:
        raise RequestError(f"refine_trials: must be an integer in 0..10000, got {trials!r}")
    given = data.get("plans")
    if given is not None:
        for name in ("points", "min_bits", "max_bits"):
            if name in data:
                raise RequestError(f"{name}: not allowed with plans (the plans are the points)")
        if not isinstance(given, list | tuple) or not given:
            raise RequestError("plans: must be a non-empty list of assignments")
        plans = tuple(_assignment(a, f"plans[{i}]") for i, a in enumerate(given))
        return {"plans": plans, "refine_trials": trials}
    points = 8 if data.get("points") is None else data["points"]
    if isinstance(points, bool) or not isinstance(points, int) or not 1 <= points <= 200:
        raise RequestError(f"points: must be an integer in 1..200, got {points!r}")
    bits = {}
    for name in ("min_bits", "max_bits"):
        value = data.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or value <= 0):
            raise RequestError(f"{name}: must be a positive number of bits per weight")
        bits[name] = value
    return {"points": points, **bits, "refine_trials": trials}


@dataclass(frozen=True)
class ExportRequest:
    """One plan written in an export format (workers.jobs.run_export_job): the analysis `table`
    the plan's units come from, the plan's `assignment` (unit → candidate), the model, and the
    file to write (`out`, inside the job's scratch folder). `root_type` is the class name of the
    model's root module, for formats that name modules by class."""

    format: str
    table: Mapping[str, Any]
    assignment: Mapping[str, str]
    model: ModelSource
    out: str
    root_type: str = "Model"

    @classmethod
    def from_dict(cls, data: Any) -> ExportRequest:
        _fields(data, "request", tuple(f.name for f in fields(cls)))
        for name in ("format", "table", "assignment", "model", "out"):
            if name not in data:
                raise RequestError(f"{name}: required")
        from workers.exports import get_exporter

        fmt = data["format"]
        if not isinstance(fmt, str):
            raise RequestError(f"format: must be a name, got {fmt!r}")
        _checked(lambda: get_exporter(fmt), "format")
        table = _mapping(data["table"], "table")
        if not isinstance(table.get("layers"), list):
            raise RequestError("table.layers: must be a list (an analysis table)")
        out, root = data["out"], data.get("root_type", "Model")
        if not isinstance(out, str) or not out:
            raise RequestError("out: must be a non-empty path")
        if not isinstance(root, str) or not root:
            raise RequestError("root_type: must be a class name")
        return cls(fmt, table, _assignment(data["assignment"], "assignment"), ModelSource.from_dict(data["model"]),
                   out, root)

    def to_dict(self) -> dict[str, Any]:
        return {"format": self.format, "table": self.table, "assignment": dict(self.assignment),
                "model": self.model.to_dict(), "out": self.out, "root_type": self.root_type}


def _fields(data: Any, where: str, valid: tuple[str, ...]) -> None:
    if not isinstance(data, Mapping):
        raise RequestError(f"{where}: must be a JSON object")
    unknown = sorted(set(data) - set(valid))
    if unknown:
        prefix = "" if where == "request" else f"{where}."
        what = "request field" if where == "request" else "field"
        raise RequestError(f"{prefix}{unknown[0]}: unknown {what} (valid: {', '.join(valid)})")


def _mapping(value: Any, name: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise RequestError(f"{name}: must be a JSON object")
    return dict(value)


def _assignment(value: Any, name: str) -> dict[str, str]:
    if not isinstance(value, Mapping) or not value:
        raise RequestError(f"{name}: must be a non-empty JSON object of unit → candidate")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise RequestError(f"{name}: unit names and candidates must be strings")
    return dict(value)


def _positive_int(value: Any, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise RequestError(f"{name}: must be a positive integer, got {value!r}")


def _checked(check: Callable[[], Any], name: str) -> Any:
    """Run a registry's own check; its ValueError (whose message names the field already, e.g.
    "candidate 'nf4': ...") becomes a RequestError, prefixed with `name` when it does not."""
    try:
        return check()
    except RequestError:
        raise
    except ValueError as exc:
        message = str(exc)
        if not message.startswith((name, name.rstrip("s"))):
            message = f"{name}: {message}"
        raise RequestError(message) from exc
