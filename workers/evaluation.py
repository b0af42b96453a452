"""Measured truth for plans: fake-quantize a model as a plan says and measure it on evaluation data.

A plan maps decision units to candidate formats; a unit is one layer, or with grouping "block" all
layers of one block, which `workers.table.layer_formats` (the table's `groups`) spells out. Applying
it replaces every planned layer's weight by its dequantized round trip through that format (`Quantizer.quantize`), which is exactly what an
engine computes with, so the numbers here are what the quantized model really does (weights only;
activations stay float).

What is measured, over every output row (the last output dimension is the class / vocabulary /
feature axis; every other position is a row):
- `loss`: cross-entropy against integer `targets` when the data has them; next-token cross-entropy
  for language models (integer token inputs, outputs (batch, seq, vocab), no targets); otherwise the
  label-free loss the analysis used: KL(float ‖ quantized) ("kl") or ½‖f_q − f‖² per row ("mse").
- `accuracy` (targets only), `perplexity` = exp(loss) for language models.
- agreement with the float model: `top1_agreement` (argmax equal), `kl` = mean KL(p_float ‖ p_quant)
  of the softmaxed rows, `cosine` = mean cosine similarity of the raw output rows.
- the same loss / accuracy of the float model itself, so a report needs no second run.

`Evaluator` holds one float model, its reference outputs and a cache of quantized weights, so K plans
cost K forward passes plus one quantization per (layer, format) actually used. It mutates one private
working copy of the model and restores nothing the caller owns.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from workers.data import batches, check_batch_size, check_targets, positive_option, read_safetensors
from workers.errors import AnalysisError, DatasetError
from workers.metrics._loss import output_of
from workers.models import find_layers
from workers.table import layer_formats

__all__ = ["EvaluationData", "Evaluator", "apply_plan", "evaluate_plan", "load_evaluation"]

Report = Callable[[float, str], None]
IGNORE_INDEX = -100
LABEL_FREE_LOSSES = ("kl", "mse")


@dataclass
class EvaluationData:
    """Inputs (float features or integer token ids) with optional integer targets, in mini-batches.

    Unlike calibration data, integer inputs are allowed: they are token ids of a language model.
    Targets equal to -100 are ignored (the usual padding convention).
    """

    inputs: torch.Tensor
    targets: torch.Tensor | None = None
    batch_size: int = 256

    def __post_init__(self) -> None:
        if self.inputs.dim() < 1 or self.inputs.shape[0] == 0:
            raise DatasetError("inputs: must hold at least one sample (first dimension = samples)")
        if self.inputs.dtype.is_complex or self.inputs.dtype == torch.bool:
            raise DatasetError(f"inputs: must be floating-point features or integer token ids, got {self.inputs.dtype}")
        if self.inputs.dtype.is_floating_point:
            if not torch.isfinite(self.inputs).all():
                raise DatasetError("inputs: contains NaN or infinite values")
            self.inputs = self.inputs.to(torch.float32)
        else:
            if (self.inputs < 0).any():
                raise DatasetError("inputs: token ids must be ≥ 0")
            self.inputs = self.inputs.to(torch.long)
        if self.targets is not None:
            self.targets = check_targets(self.targets, self.samples, ignore_index=IGNORE_INDEX)
        check_batch_size(self.batch_size)

    @property
    def samples(self) -> int:
        return int(self.inputs.shape[0])

    @property
    def tokens(self) -> bool:
        return not self.inputs.dtype.is_floating_point

    def batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        yield from batches(self.inputs, self.targets, self.batch_size)


def load_evaluation(path: str, *, batch_size: int = 256, max_samples: int | None = None) -> EvaluationData:
    """Read evaluation data: a safetensors file with `inputs` and optional `targets`."""
    if not os.path.isfile(path):
        raise DatasetError(f"dataset: no such file {path!r}")
    inputs, targets = read_safetensors(path)
    if positive_option("max_samples", max_samples) is not None:
        inputs = inputs[:max_samples]
        targets = None if targets is None else targets[:max_samples]
    return EvaluationData(inputs, targets, batch_size)


def _output(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return output_of(model, x, "an evaluation batch").detach().to(torch.float32)


def _is_language_model(data: EvaluationData, x: torch.Tensor, out: torch.Tensor) -> bool:
    """Token inputs whose outputs have one vocabulary row per input position (x: the first batch)."""
    return data.tokens and out.dim() == x.dim() + 1 and tuple(out.shape[:-1]) == tuple(x.shape)


def apply_plan(model: nn.Module, plan: Mapping[str, str], *, groups: Mapping[str, Sequence[str]] | None = None,
               inplace: bool = False, report: Callable[[float, str], None] | None = None) -> nn.Module:
    """The model with every planned layer's weight replaced by its round trip through its format.

    `plan`: unit → candidate, its units spelled out as layers by the analysis table's `groups`
    (none: every unit is a layer, as with grouping "layer" and an export's per-layer formats).
    Works on a deep copy unless `inplace`. Layers the plan does not name stay float; a plan naming a
    layer the model lacks is a `ValueError` (the plan belongs to another model). `report(fraction,
    message)` after each layer: the round trips are most of a checkpoint export's time.
    """
    from workers.quantizers import parse_candidate

    assignment = layer_formats(plan, groups)
    target = model if inplace else copy.deepcopy(model)
    layers = {info.name: (info, weight) for info, weight in find_layers(target)}
    unknown = sorted(set(assignment) - set(layers))
    if unknown:
        raise ValueError(f"assignment: layer {unknown[0]!r} is not a quantizable layer of this model")
    with torch.no_grad():
        for done, (name, candidate) in enumerate(assignment.items(), 1):
            info, weight = layers[name]
            # info.quantize rounds per output channel even where the layout is transposed (HF Conv1D)
            weight.copy_(info.quantize(parse_candidate(candidate), weight).to(weight.dtype))
            if report is not None:
                report(done / len(assignment), f"quantized {name} ({candidate}), {done} of {len(assignment)}")
    return target


class Evaluator:
    """Measures many plans of one model on one data set (see the module docstring for the numbers).

    Rules: owns a deep copy of the model (the caller's is never changed); not thread-safe (one
    working copy whose weights are swapped per plan); `evaluate` is deterministic. `groups` is the
    analysis table's (unit → layers): `evaluate` takes plans as the solver gives them (unit →
    candidate), `evaluate_layers` per-layer formats.
    """

    def __init__(self, model: nn.Module, data: EvaluationData, *, output_loss: str = "kl",
                 groups: Mapping[str, Sequence[str]] | None = None):
        self.groups = {unit: list(members) for unit, members in (groups or {}).items()}
        if output_loss not in LABEL_FREE_LOSSES:
            raise ValueError(f"options.output_loss: must be one of {', '.join(LABEL_FREE_LOSSES)}, got {output_loss!r}")
        self.data = data
        self.output_loss = output_loss
        self.model = copy.deepcopy(model)
        try:
            self.model.eval()
        except NotImplementedError:  # exported GraphModules keep their mode
            pass
        found = find_layers(self.model)
        self.layers = {info.name: weight for info, weight in found}
        self._infos = {info.name: info for info, _ in found}
        if not self.layers:
            raise AnalysisError("model: no quantizable layer found (Linear, Conv1d, Conv2d or Embedding)")
        self._float = {name: w.detach().clone() for name, w in self.layers.items()}
        self._cache: dict[tuple[str, str], torch.Tensor] = {}
        with torch.no_grad():
            self.reference = [_output(self.model, x) for x, _ in data.batches()]
        self.language_model = _is_language_model(data, next(data.batches())[0], self.reference[0])
        self.loss_kind = (
            "cross_entropy" if data.targets is not None else "next_token" if self.language_model else output_loss
        )
        self.float_metrics = self._score(self.reference)

    @property
    def layer_names(self) -> list[str]:
        return list(self.layers)

    def quantized_weight(self, layer: str, candidate: str) -> torch.Tensor:
        key = (layer, candidate)
        if key not in self._cache:
            from workers.quantizers import parse_candidate

            quantized = self._infos[layer].quantize(parse_candidate(candidate), self._float[layer])
            self._cache[key] = quantized.to(self._float[layer].dtype)
        return self._cache[key]

    def evaluate(self, plan: Mapping[str, str]) -> dict[str, float | int | str | None]:
        """The measured numbers of `plan` (unit → candidate; layers of units it omits stay float)."""
        return self.evaluate_layers(layer_formats(plan, self.groups))

    def evaluate_layers(self, assignment: Mapping[str, str]) -> dict[str, float | int | str | None]:
        """The measured numbers of `assignment` (layer → candidate; unnamed layers stay float)."""
        unknown = sorted(set(assignment) - set(self.layers))
        if unknown:
            raise ValueError(f"assignment: layer {unknown[0]!r} is not a quantizable layer of this model")
        with torch.no_grad():
            for name, weight in self.layers.items():
                cand = assignment.get(name)
                weight.copy_(self._float[name] if cand is None else self.quantized_weight(name, cand))
            try:
                outputs = [_output(self.model, x) for x, _ in self.data.batches()]
            finally:
                for name, weight in self.layers.items():
                    weight.copy_(self._float[name])
        metrics = self._score(outputs)
        metrics.update(self._agreement(outputs))
        metrics["float_layers"] = sum(1 for n in self.layers if n not in assignment)
        return metrics

    def _score(self, outputs: list[torch.Tensor]) -> dict[str, float | int | str | None]:
        """Loss (and accuracy / perplexity where they exist) of `outputs` over the whole data set."""
        total, rows, correct, labelled = 0.0, 0, 0, 0
        for out, ref, (x, y) in zip(outputs, self.reference, self.data.batches(), strict=True):
            logits = out.reshape(-1, out.shape[-1]).to(torch.float64)
            if y is not None or self.language_model:
                if y is not None:
                    target = y.reshape(-1)
                    if target.shape[0] != logits.shape[0]:
                        raise AnalysisError(
                            f"targets: {target.shape[0]} per batch but the model gives {logits.shape[0]} output rows"
                        )
                else:  # next token: position t predicts input t + 1
                    logits = out[..., :-1, :].reshape(-1, out.shape[-1]).to(torch.float64)
                    target = x[..., 1:].reshape(-1)
                keep = target != IGNORE_INDEX
                if keep.any() and int(target[keep].max()) >= logits.shape[1]:
                    raise AnalysisError(
                        f"targets: class index {int(target[keep].max())} but the model has {logits.shape[1]} classes"
                    )
                total += float(F.cross_entropy(logits[keep], target[keep], reduction="sum"))
                rows += int(keep.sum())
                if y is not None:
                    correct += int((logits[keep].argmax(dim=1) == target[keep]).sum())
                    labelled += int(keep.sum())
            else:
                reference = ref.reshape(-1, ref.shape[-1]).to(torch.float64)
                if self.output_loss == "kl":
                    total += float(_kl_rows(reference, logits).sum())
                else:
                    total += float(0.5 * (logits - reference).pow(2).sum())
                rows += logits.shape[0]
        loss = total / rows if rows else math.nan
        return {
            "loss": loss,
            "loss_kind": self.loss_kind,
            "accuracy": correct / labelled if labelled else None,
            "perplexity": math.exp(min(loss, 700.0)) if self.language_model else None,
            "rows": rows,
        }

    def _agreement(self, outputs: list[torch.Tensor]) -> dict[str, float]:
        agree, kl, cosine, rows = 0, 0.0, 0.0, 0
        for out, ref in zip(outputs, self.reference, strict=True):
            q = out.reshape(-1, out.shape[-1]).to(torch.float64)
            r = ref.reshape(-1, ref.shape[-1]).to(torch.float64)
            agree += int((q.argmax(dim=1) == r.argmax(dim=1)).sum())
            kl += float(_kl_rows(r, q).sum())
            cosine += float(F.cosine_similarity(q, r, dim=1, eps=1e-12).sum())
            rows += q.shape[0]
        return {"top1_agreement": agree / rows, "kl": kl / rows, "cosine": cosine / rows}


def _kl_rows(reference_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """KL(softmax(reference) ‖ softmax(logits)) per row."""
    log_p = torch.log_softmax(reference_logits, dim=-1)
    log_q = torch.log_softmax(logits, dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=-1).clamp_min(0.0)


def evaluate_plan(
    model: nn.Module, data: EvaluationData, plan: Mapping[str, str], *, output_loss: str = "kl",
    groups: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, float | int | str | None]:
    """One plan (unit → candidate) measured once (build an `Evaluator` to measure several)."""
    return Evaluator(model, data, output_loss=output_loss, groups=groups).evaluate(plan)


def layer_loss_deltas(
    evaluator: Evaluator, candidates: list[str], *, report: Report | None = None
) -> dict[str, dict[str, float]]:
    """Measured per-layer damage (AIMET AMP phase 1): loss with only that layer in that format minus
    the float model's loss, on the evaluator's data. {layer: {candidate: Δloss}}. Use data other
    than the evaluation set (calibration data) when the result will pick plans that are then
    evaluated, or the comparison flatters it."""
    report = report or (lambda fraction, message: None)
    base = float(evaluator.float_metrics["loss"])
    if evaluator.loss_kind in LABEL_FREE_LOSSES:
        base = 0.0  # label-free loss of the float model against itself
    names = evaluator.layer_names
    out: dict[str, dict[str, float]] = {}
    for i, name in enumerate(names):
        report(i / len(names), f"measuring Δloss of layer {i + 1}/{len(names)}")
        out[name] = {c: float(evaluator.evaluate_layers({name: c})["loss"]) - base for c in candidates}
    return out
