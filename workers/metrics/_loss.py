"""The loss the data-driven metrics differentiate: the calibration-set mean, batch by batch.

Label-free output matching against the float model's own outputs at the weights it had when this
object was built (θ₀): KL(p_θ₀ ‖ p_θ) over the last output dimension ("kl", for classifiers) or
½‖f_θ − f_θ₀‖² ("mse", for other outputs). Both have zero gradient at θ₀ and a Gauss-Newton
(positive semi-definite) Hessian there, so traces and damages are ≥ 0 by construction.

Which loss (`options.loss`): "auto" (the default) is label-free unless the data has class targets
for a classifier; a language model (a causal LM, or token-id inputs with one target per position)
is label-free even with next-token targets, because the next-token cross-entropy of any real LM is
far from a minimum and its Hessian is indefinite (negative traces). "cross_entropy" asks for the
true cross-entropy Hessian (needs targets); "label_free" forces output matching.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from workers.data import Calibration
from workers.errors import AnalysisError

OUTPUT_LOSSES = ("kl", "mse")
LOSSES = ("auto", "label_free", "cross_entropy")


def model_device(model: nn.Module) -> torch.device:
    """Where the model's weights live (the CPU for a model without parameters; streamed weights on the
    meta device do not count)."""
    return next((p.device for p in model.parameters() if not p.is_meta), torch.device("cpu"))


def forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's output tensor; AnalysisError naming the batch shape when the forward fails.
    Calibration data is held on the CPU; each batch moves to the model's device here."""
    return output_of(model, x.to(model_device(model)), "a calibration batch")


def output_of(model: nn.Module, x: torch.Tensor, batch: str) -> torch.Tensor:
    """`model(x)` as one floating-point (batch, ..., classes) tensor (the first of a tuple); an
    AnalysisError naming `batch` and its shape when the forward fails or gives anything else."""
    try:
        out = model(x)
    except Exception as exc:  # noqa: BLE001 - user models fail in arbitrary ways
        raise AnalysisError(
            f"model forward failed on {batch} of shape {list(x.shape)}: {type(exc).__name__}: {exc}"
        ) from exc
    if isinstance(out, tuple | list) and out and isinstance(out[0], torch.Tensor):
        out = out[0]
    if not isinstance(out, torch.Tensor) or not out.dtype.is_floating_point:
        raise AnalysisError("model output: must be a floating-point tensor (or a tuple starting with one)")
    if out.dim() < 2:
        raise AnalysisError(f"model output: expected (batch, ..., classes), got shape {list(out.shape)}")
    return out


def is_language_model(model: nn.Module, calibration: Calibration) -> bool:
    """A causal LM (workers.hf marks them), or token-id inputs with one target per position."""
    if getattr(model, "bitplan_causal_lm", False):
        return True
    targets = calibration.targets
    return bool(calibration.token_ids and targets is not None and targets.dim() > 1)


def uses_label_free(model: nn.Module, calibration: Calibration, loss: str = "auto") -> bool:
    """Whether `loss` (an `options.loss` value) differentiates output matching on this model and data;
    ValueError for an unknown value or "cross_entropy" without targets."""
    if loss not in LOSSES:
        raise ValueError(f"options.loss: must be one of {', '.join(LOSSES)}, got {loss!r}")
    if loss == "cross_entropy":
        if calibration.targets is None:
            raise ValueError("options.loss: 'cross_entropy' needs a dataset with targets")
        return False
    if loss == "label_free" or calibration.targets is None:
        return True
    return is_language_model(model, calibration)


def loss_name(label_free: bool, output_loss: str) -> str:
    """The table's `loss` field: "cross_entropy", "kl_label_free" or "mse_label_free"."""
    return f"{output_loss}_label_free" if label_free else "cross_entropy"


class CalibrationLoss:
    """Yields one loss tensor per calibration batch; their sum is the dataset-mean loss."""

    def __init__(self, model: nn.Module, calibration: Calibration, *, output_loss: str = "kl", loss: str = "auto"):
        if output_loss not in OUTPUT_LOSSES:
            raise ValueError(f"options.output_loss: must be one of {', '.join(OUTPUT_LOSSES)}, got {output_loss!r}")
        self.model = model
        self.calibration = calibration
        self.output_loss = output_loss
        self.label_free = uses_label_free(model, calibration, loss)
        self.name = loss_name(self.label_free, output_loss)
        self._references: list[torch.Tensor] = []
        if self.label_free:
            with torch.no_grad():
                for x, _ in calibration.batches():
                    out = forward(model, x).detach().to(torch.float32)
                    ref = torch.log_softmax(out, dim=-1) if output_loss == "kl" else out
                    self._references.append(ref.reshape(-1, out.shape[-1]))
            self.rows = sum(r.shape[0] for r in self._references)
        else:
            self.rows = sum(int(y.numel()) for _, y in calibration.batches())

    def reference(self, batch: int) -> torch.Tensor:
        """Label-free only: the float model's (rows, classes) log-probabilities ("kl") or outputs
        ("mse") on calibration batch `batch`."""
        return self._references[batch]

    def batch_losses(self) -> Iterator[torch.Tensor]:
        for i, (x, y) in enumerate(self.calibration.batches()):
            out = forward(self.model, x)
            logits = out.reshape(-1, out.shape[-1]).to(torch.float32)
            if not self.label_free:
                target = y.reshape(-1).to(logits.device)
                if target.shape[0] != logits.shape[0]:
                    raise AnalysisError(
                        f"targets: {target.shape[0]} per batch but the model gives {logits.shape[0]} output rows"
                    )
                if int(target.max()) >= logits.shape[1]:
                    raise AnalysisError(
                        f"targets: class index {int(target.max())} but the model has {logits.shape[1]} classes"
                    )
                loss = F.cross_entropy(logits, target, reduction="sum")
            elif self.output_loss == "kl":
                ref = self._references[i]
                loss = F.kl_div(torch.log_softmax(logits, dim=-1), ref, reduction="sum", log_target=True)
            else:
                loss = 0.5 * (logits - self._references[i]).pow(2).sum()
            yield loss / self.rows
