"""Typed request and response bodies of API v1. ORM rows are converted here, never returned raw."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from service.core.budgets import budget_limits
from workers.metrics import DEFAULT_METRIC


class LayerOut(BaseModel):
    name: str
    kind: str
    weight_shape: list[int]
    parameters: int


class ModelOut(BaseModel):
    id: str
    name: str
    sha256: str
    format: Literal["safetensors", "pt2", "hf"]
    architecture: str | None
    hyperparams: dict[str, Any] | None
    size_bytes: int
    parameters: int = Field(description="Quantizable weights over all layers.")
    layers: list[LayerOut]
    inputs: dict[str, Any] | None = Field(
        None, description='What one call takes: {"takes": "tensor", "shape" (null: any size; first = batch), "dtype",'
                          ' "static_batch"} or {"takes": "token_ids", "vocab_size", "max_positions"}; datasets are'
                          ' checked against it when an analysis is submitted.')
    created_at: datetime


class DatasetOut(BaseModel):
    id: str
    name: str
    sha256: str
    size_bytes: int
    samples: int
    input_shape: list[int]
    input_dtype: str
    has_targets: bool
    max_token_id: int | None = Field(None, description="Largest value of integer inputs (token ids); null otherwise.")
    created_at: datetime


class AnalysisIn(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model_id: str = Field(min_length=1, max_length=64)
    dataset_id: str | None = Field(None, max_length=64)
    candidates: list[str] | None = Field(
        None, min_length=1, max_length=64, description="Candidate formats; default INT2/3/4/6/8 per-channel."
    )
    metric: str = Field(DEFAULT_METRIC, min_length=1, max_length=50)
    seed: int = Field(0, ge=0, le=2**31 - 1)
    options: dict[str, float | int | str | bool | list[float] | dict[str, Any]] = Field(
        default_factory=dict,
        description="Analysis and metric options, e.g. tolerance, max_probes, batch_size; hardware (a name or"
                    " {name, peak_ops, bandwidth}); latency_table {layer: {candidate: milliseconds}}; shards (split"
                    " the calibration samples over N sub-jobs on any free workers, merged exactly; sampled_gauss_newton);"
                    " spot_checks (layers measured per candidate of ≤ 4 bits to correct the second-order damage;"
                    " default 8, 0 = off).",
    )

    @model_validator(mode="after")
    def _check_costs(self) -> AnalysisIn:
        """Objects only where an option takes one; a bad latency entry named at the edge, not in the job."""
        for key, value in self.options.items():
            if isinstance(value, dict) and key not in ("latency_table", "hardware"):
                raise ValueError(f"options.{key}: must be a number, string, boolean or list of numbers, not an object")
        if "latency_table" in self.options:
            check_latency_table(self.options["latency_table"])
        return self


def check_latency_table(table: Any) -> None:
    """options.latency_table: {layer: {candidate: milliseconds}}; layer and candidate coverage is
    checked by the job, which knows the model's layers."""
    example = '{"fc1": {"int4": 0.21, "int8": 0.12}, "fc2": {"int4": 0.05, "int8": 0.03}}'
    if isinstance(table, str):
        raise ValueError(f"options.latency_table: send a JSON object, not a string (neither a path nor JSON text"
                         f" is read here), e.g. {example}")
    if not isinstance(table, dict) or not table:
        raise ValueError(f"options.latency_table: must be a non-empty object {{layer: {{candidate: ms}}}}, e.g. {example}")
    for layer, row in table.items():
        if not isinstance(row, dict) or not row:
            raise ValueError(f"options.latency_table.{layer}: must be an object {{candidate: milliseconds}}, got {row!r}")
        for cand, ms in row.items():
            if isinstance(ms, bool) or not isinstance(ms, int | float) or not (0 <= ms < float("inf")):
                raise ValueError(f"options.latency_table.{layer}.{cand}: must be a finite number of ms ≥ 0, got {ms!r}")


class Progress(BaseModel):
    fraction: float
    message: str


STARTED_AT = "When its first attempt started; a retry, or a sharded analysis's merge, keeps it."


class WarningOut(BaseModel):
    """A number the analysis cannot fully stand behind, machine-readable (workers.table)."""

    code: str = Field(description="negative_trace, negative_statistic, ci_straddles_zero, not_converged,"
                                  " stopped_early, low_confidence, confidence_unavailable, cost_unavailable,"
                                  " damage_under_predicted; on evaluations measured_above_predicted,"
                                  " worse_than_baseline")
    layer: str | None = Field(None, description="The layer or unit it is about; null for the whole analysis or plan.")
    message: str
    values: dict[str, Any] = Field(default_factory=dict)


class UncertainUnit(BaseModel):
    unit: str
    share: float = Field(description="Share of redraws that disagree with the plan and give this unit another candidate.")


class PlanConfidence(BaseModel):
    """Share of redraws of every unit's damage (from its sampling distribution) whose re-solved
    optimum is this plan, or one within `tolerance` of its damage; 1.0 with `exact` for exact metrics."""

    confidence: float
    redraws: int
    tolerance: float
    exact: bool
    uncertain_units: list[UncertainUnit]


class ShardOut(BaseModel):
    """One sub-job of a sharded analysis (options.shards > 1): its share of the calibration samples."""

    id: str = Field(description="The sub-job's id (as in worker logs).")
    index: int = Field(description="0-based; shard i of n takes the i-th of n consecutive shares of the samples.")
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    progress: Progress
    error: str | None
    attempts: int
    started_at: datetime | None = Field(description=STARTED_AT)
    finished_at: datetime | None


class AnalysisOut(BaseModel):
    id: str
    model_id: str
    dataset_id: str | None
    candidates: list[str]
    metric: str
    seed: int
    options: dict[str, Any]
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    progress: Progress
    error: str | None
    attempts: int
    created_at: datetime
    started_at: datetime | None = Field(description=STARTED_AT)
    finished_at: datetime | None
    links: dict[str, str]
    warnings: list[WarningOut] | None = Field(
        None, description="A succeeded analysis's warnings (GET /v1/analyses/{id}; null in lists and before success)."
    )
    shards: list[ShardOut] | None = Field(
        None, description="A sharded analysis's sub-jobs once they exist (GET /v1/analyses/{id}; null in lists and"
                          " for an analysis run as one job)."
    )


class CandidateCell(BaseModel):
    candidate: str
    damage: float
    bytes: float
    bits_per_weight: float
    details: dict[str, Any] = Field(default_factory=dict)


class TableRow(BaseModel):
    layer: str
    kind: str
    weights: int
    statistics: dict[str, Any]
    candidates: list[CandidateCell]


class TableOut(BaseModel):
    analysis_id: str
    metric: str
    layers: list[TableRow]
    provenance: dict[str, Any]
    warnings: list[WarningOut] = Field(default_factory=list)


class BudgetIn(BaseModel):
    """Upper limits: `bytes` or `avg_bits` (bits per weight, scale overhead included; `average_bits`
    is accepted as an alias), plus any other cost the analysis has (e.g. `bops`, `latency_ms`) as
    `name: limit`. Read by the solver's one budget parser (solver._budget, via service.core.budgets), the
    same as the CLI and batch files; whether each word is a cost of the analysis is checked at solve."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"additionalProperties": {"type": "number"}})

    bytes: float | None = Field(None, description="Total bytes, ≥ 0.")
    avg_bits: float | None = Field(None, description="Average bits per quantizable weight, > 0.")

    @model_validator(mode="before")
    @classmethod
    def _parse(cls, data: Any) -> Any:
        return budget_limits(data, title=cls.__name__)


class PlanIn(BaseModel):
    """A `budget` (the solver picks the least-damage plan) or an `assignment` (you pick it)."""

    model_config = ConfigDict(extra="forbid")

    budget: BudgetIn | None = None
    assignment: dict[str, str] | None = Field(
        None, description="Unit → candidate, every unit once: a plan you chose instead of solving for one (a"
                          " baseline an evaluation measured better, a hand edit). It is checked against the"
                          " analysis's candidates, pins and ties (422 naming assignment.<unit>), stored with the"
                          " table's sums (solver status `given`, `bound`/`gap` against the best plan at its bytes,"
                          " `budget` its own bytes) and evaluated and exported like any plan.")
    backend: str = Field("auto", max_length=20)
    time_limit_s: float | None = Field(None, gt=0, le=600)


class FrontierRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cost: str = Field("bytes", min_length=1, max_length=50)
    points: int = Field(50, ge=2, le=1000)


class SolveIn(BaseModel):
    """A problem in the documented JSON format (docs/problem-format.md) with a budget, a frontier
    request, or both."""

    model_config = ConfigDict(extra="forbid")

    problem: dict[str, Any]
    budget: BudgetIn | None = None
    frontier: FrontierRequest | None = None
    backend: str = Field("auto", max_length=20)
    time_limit_s: float | None = Field(None, gt=0, le=60)

    @model_validator(mode="after")
    def _something(self) -> "SolveIn":
        if self.budget is None and self.frontier is None:
            raise ValueError("give a budget, a frontier request, or both")
        return self


class LayerChoice(BaseModel):
    """One decision unit's choice under the name clients have read since v1: `layer` is the unit's
    name (a layer's own name unless the analysis grouped layers; read `PlanOut.units`)."""

    layer: str = Field(description="The decision unit's name (the layer's, with grouping \"layer\").")
    candidate: str
    damage: float
    bytes: float


class UnitChoice(BaseModel):
    """One decision unit's choice and the layers it applies to: with grouping "block" a unit is a
    whole block whose layers all take its candidate; otherwise its one layer."""

    unit: str
    candidate: str
    damage: float = Field(description="The unit's predicted damage: its layers' sum.")
    bytes: float = Field(description="The unit's bytes: its layers' sum.")
    layers: list[str] = Field(description="The model's layers (module names) that take this candidate.")


class PlanOut(BaseModel):
    id: str
    analysis_id: str
    budget: dict[str, Any]
    total_bytes: float
    average_bits: float
    predicted_damage: float
    costs: dict[str, float]
    solver: dict[str, Any] = Field(description=(
        "status: optimal (proven within `tolerance`, the proof's relative tolerance: no plan meeting the budget"
        " has less damage than damage − tolerance·|damage|), feasible (meets the budget; an ILP back-end called"
        " it optimal but bitplan could not confirm it within its tolerance: see `bound` and `gap`), time_limit"
        " (the best plan found; `bound` a proven lower bound, `gap` relative) or given (an `assignment` you chose;"
        " `bound` the least damage reachable at its bytes, `gap` how far above it the table puts it); gap,"
        " tolerance, bound (null when not known), backend, solve_seconds."))
    layers: list[LayerChoice] = Field(description=(
        "One entry per decision unit, `layer` holding the unit's name: kept as it was for clients; `units`"
        " says the same per unit and lists each unit's layers."))
    units: list[UnitChoice] = Field(description="The plan per decision unit with the layers each applies to.")
    created_at: datetime
    links: dict[str, str]
    confidence: PlanConfidence | None = Field(
        None, description="How sure the plan is (null if it could not be computed, and for a given plan: nothing was solved).")
    warnings: list[WarningOut] = Field(default_factory=list, description="The analysis's warnings and the plan's own.")


class ErrorOut(BaseModel):
    detail: str
    field: str | None = None


class TokenIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    scopes: list[Literal["read", "submit", "admin"]] = Field(min_length=1, max_length=3)


class TokenOut(BaseModel):
    id: str
    name: str
    prefix: str
    scopes: list[str]
    created_at: datetime
    revoked_at: datetime | None


class TokenCreated(TokenOut):
    secret: str = Field(description="Shown once: only its hash is stored.")


class EvaluationOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    batch_size: int = Field(256, ge=1, le=65536)
    max_samples: int | None = Field(None, ge=1, description="Measure on the first N samples only.")
    output_loss: Literal["kl", "mse"] = Field("kl", description="The loss when the data has no targets.")


class EvaluationIn(BaseModel):
    """Measure a plan on evaluation data (a dataset: `inputs`, and `targets` for loss and accuracy)."""

    model_config = ConfigDict(extra="forbid")

    dataset_id: str = Field(..., min_length=1, max_length=32)
    baselines: bool = Field(True, description="Also measure uniform, greedy and plain HAWQ-v3 at the plan's bytes.")
    refine_rounds: int = Field(0, ge=0, le=10, description=(
        "Also run the interactions loop at the plan's bytes (0: no): each round measures a plan on the analysis's"
        " calibration data (one forward + backward), corrects its units' damages by what it found and re-solves;"
        " the best one it measured is then measured on this dataset like the others (`refined`). No sensitivity is"
        " recomputed; the analysis needs calibration data."))
    options: EvaluationOptions = Field(default_factory=EvaluationOptions)


class FrontierEvaluationIn(BaseModel):
    """Measure `k` evenly spaced points (ends included) of the analysis's stored frontier over
    `points` budgets of `cost` (the one GET /v1/analyses/{id}/frontier serves), in one job."""

    model_config = ConfigDict(extra="forbid")

    dataset_id: str = Field(..., min_length=1, max_length=32)
    cost: str = Field("bytes", min_length=1, max_length=50)
    points: int = Field(50, ge=2, le=1000)
    k: int = Field(5, ge=1, le=100)
    refine_trials: int = Field(0, ge=0, le=1000, description="Optuna trials with the measured loss (needs optuna).")
    options: EvaluationOptions = Field(default_factory=EvaluationOptions)


class MeasuredPoint(BaseModel):
    """One measured plan, ready to overlay on a frontier chart."""

    source: str  # "frontier", "plan", "uniform", "greedy", "hawq_v3", "refined"
    frontier_index: int | None  # index into the stored frontier's points (frontier evaluations)
    costs: dict[str, float]
    average_bits: float | None
    predicted_damage: float | None
    measured: dict[str, Any]  # loss, loss_kind, accuracy, perplexity, top1_agreement, kl, cosine
    measured_over_predicted: float | None = Field(
        None, description="Measured KL to the float model per output row ÷ predicted damage, when the analysis's"
                          " damages are that KL (sampled_gauss_newton, gauss_newton; loss_delta on the label-free"
                          " KL loss); well above 1: the layers' errors compound.")


class EvaluationOut(BaseModel):
    id: str
    target: Literal["plan", "frontier"]
    analysis_id: str
    plan_id: str | None
    dataset_id: str
    request: dict[str, Any]
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    progress: Progress
    error: str | None
    attempts: int
    created_at: datetime
    started_at: datetime | None = Field(description=STARTED_AT)
    finished_at: datetime | None
    float_metrics: dict[str, Any] | None = Field(None, alias="float")
    points: list[MeasuredPoint]
    rank_agreement: dict[str, Any] | None
    warnings: list[WarningOut] = Field(
        default_factory=list, description="What the measurement says about the prediction: measured_above_predicted,"
                                          " worse_than_baseline (workers.evaluation_jobs).")
    result: dict[str, Any] | None = Field(None, description="The whole result (GET /v1/evaluations/{id} only).")
    links: dict[str, str]

    model_config = ConfigDict(populate_by_name=True)


class ExportJobIn(BaseModel):
    """An export built by a job: the formats that open the model (`safetensors`, the fake-quantized
    checkpoint). Config formats answer at once from GET /v1/plans/{id}/export."""

    model_config = ConfigDict(extra="forbid")

    format: str = Field(..., min_length=1, max_length=30)


class ExportOut(BaseModel):
    id: str
    plan_id: str
    format: str
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    progress: Progress
    error: str | None
    attempts: int
    created_at: datetime
    started_at: datetime | None = Field(description=STARTED_AT)
    finished_at: datetime | None
    size_bytes: int | None = Field(None, description="The file's size once the job succeeded.")
    sha256: str | None = Field(None, description="The file's sha256 once the job succeeded.")
    filename: str | None
    warnings: list[str] = Field(default_factory=list, description="What the format could not express exactly.")
    links: dict[str, str]
