"""Exact second-order damage along each candidate's own perturbation (the Gauss-Newton quadratic form).

For layer l stored as candidate c, ΔW = Q_c(W_l) − W_l. Its linearised output change on calibration
row r is Δz_r = J_r · ΔW (J_r: the Jacobian of that row's outputs in W_l), and the predicted loss
increase is the Gauss-Newton quadratic form

    d(l, c) = ½ · (1/R) Σ_r Δz_rᵀ H_r Δz_r = ½ ΔWᵀ G ΔW,   G = (1/R) Σ_r J_rᵀ H_r J_r,

with H_r the Hessian of the loss in the outputs: diag(p_r) − p_r p_rᵀ (softmax of the float model's
output) for "kl" and for cross-entropy (whose Hessian in the logits is the same for any target), the
identity for "mse". It is ≥ 0 by construction and, unlike Tr(H)/n · ‖ΔW‖², sees which directions
the rounding error takes and how they meet the activations. R is the number of output rows, so the
scale is that of loss_delta's measured change (L(θ₀ + ΔW) ≈ d for small ΔW in label-free mode).

How Δz is computed: forward-mode products, `torch.func.jvp` of the model in W_l with tangent ΔW,
vmapped over `candidate_batch` candidates at once, so the part of the network before layer l runs
once per batch and layer, and only the tangents pay per candidate. Models whose ops vmap cannot
batch fall back to one jvp per candidate; ops without a forward-mode formula fall back to the
reverse-mode identity J·t = ∂/∂u ⟨∂⟨f, u⟩/∂W, t⟩ (two backward passes, same numbers). Tied weights
(one Parameter used twice, e.g. embedding and LM head) are perturbed in every use at once.

Deterministic: no sampling; the value is exact on the calibration set. The 95% half-width says how
much another calibration set of the same size could move it: the samples are split into `groups`
consecutive groups, each group's damage is computed alone, and half = 1.96 · s / √g.

Statistic: the largest d(l, c) over the candidates (the layer's worst case), its half-width and the
number of groups; damage is d(l, c) for the candidate asked.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn

from workers.errors import AnalysisError
from workers.metrics._base import LayerStatistic, Metric, MetricContext
from workers.metrics._common import (
    candidate_statistic,
    measured_damage,
    calibrated_params,
    check_loss,
    check_output_loss,
    check_positive_ints,
    grad_only_for,
    group_damage_ci,
)
from workers.metrics._loss import forward, model_device, uses_label_free

if TYPE_CHECKING:
    from workers.quantizers import Quantizer

__all__ = ["FORMS", "GaussNewton", "output_quadratic", "reverse_jvp", "row_losses"]

FORMS = ("quadratic", "linearised")

Fn = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class GaussNewton(Metric):
    """Options: `loss` ("auto", "label_free" or "cross_entropy", as for the other metrics; the
    Gauss-Newton matrix of cross-entropy is that of "kl"); `output_loss` for label-free mode ("kl"
    or "mse"); `form` ("quadratic": ½ΔzᵀHΔz, or "linearised": the output loss at z₀ + JΔW, equal
    to second order); `groups` of calibration samples
    the confidence interval is computed over; `candidate_batch` candidates whose tangents share one
    vectorised forward-mode pass (memory: that many copies of the activations after the layer)."""

    loss: str = "auto"
    output_loss: str = "kl"
    form: str = "quadratic"
    groups: int = 16
    candidate_batch: int = 8

    name: ClassVar[str] = "gauss_newton"
    statistic: ClassVar[str] = "max_quadratic_damage"
    needs_data: ClassVar[bool] = True

    def __post_init__(self) -> None:
        check_loss(self.loss)
        check_output_loss(self.output_loss)
        if self.form not in FORMS:
            raise ValueError(f"options.form: must be one of {', '.join(FORMS)}, got {self.form!r}")
        check_positive_ints(self, "groups", "candidate_batch")
        if self.groups < 2:
            raise ValueError("options.groups: at least 2 groups are needed for a confidence interval")

    def measure(self, ctx: MetricContext) -> list[LayerStatistic]:
        params = calibrated_params(self.name, ctx)
        calibration = ctx.calibration
        label_free = uses_label_free(ctx.model, calibration, self.loss)
        kind = self.output_loss if label_free else "kl"  # cross-entropy's Hessian in the logits is KL's
        samples = calibration.samples
        per_sample = [torch.zeros(len(ctx.candidates), samples, dtype=torch.float64) for _ in params]
        rows = 0
        products = _Products(ctx.model, params)
        batches = math.ceil(samples / calibration.batch_size)
        total = batches * len(params)
        done = 0
        started = time.perf_counter()
        with grad_only_for(ctx.model, []):
            deltas = [_perturbations(info, weight, ctx.candidates) for info, weight in ctx.layers]
            start = 0
            for b, (x, _) in enumerate(calibration.batches()):
                x = x.to(model_device(ctx.model))
                with torch.no_grad():
                    reference = forward(ctx.model, x).detach()
                n = x.shape[0]
                rows += reference[..., 0].numel()
                for i, weight in enumerate(params):
                    for lo in range(0, len(ctx.candidates), self.candidate_batch):
                        tangents = deltas[i][lo : lo + self.candidate_batch]
                        dz = products(i, x, tangents)
                        q = row_losses(dz, reference, kind, self.form)  # (k, n, rows per sample) summed below
                        summed = q.reshape(len(tangents), n, -1).sum(dim=2, dtype=torch.float64)
                        per_sample[i][lo : lo + len(tangents), start : start + n] = summed.cpu()
                    done += 1
                    eta = (time.perf_counter() - started) / done * (total - done)
                    ctx.report(
                        done / total,
                        f"gauss_newton: batch {b + 1} of {batches}, layer {i + 1} of {len(params)},"
                        f" {len(ctx.candidates)} candidates, ETA {eta:.0f} s",
                    )
                start += n
        per_row = rows / samples
        stats = []
        for i, values in enumerate(per_sample):
            damage, half = {}, {}
            for j, q in enumerate(ctx.candidates):
                damage[q.name], half[q.name] = group_damage_ci(values[j], per_row, self.groups)
            stats.append(candidate_statistic(self.name, damage, half, min(self.groups, samples), "the model's outputs"))
        ctx.report(
            1.0, f"gauss_newton: {len(params)} layers × {len(ctx.candidates)} candidates, {samples} samples"
        )
        return stats

    def damage(
        self, stat: LayerStatistic, candidate: Quantizer, weight: torch.Tensor, quantized: torch.Tensor
    ) -> float:
        return measured_damage(self.name, stat, candidate)


def _perturbations(info, weight: nn.Parameter, candidates: Sequence[Quantizer]) -> torch.Tensor:
    """(candidates, *weight.shape) stack of Q(W) − W in the Parameter's layout and dtype, rounded
    exactly as the analysis rounds (LayerInfo.quantize)."""
    w = weight.detach().to(torch.float32)
    return torch.stack([(info.quantize(q, w) - w) for q in candidates]).to(weight.dtype)


def row_losses(dz: torch.Tensor, reference: torch.Tensor, kind: str, form: str) -> torch.Tensor:
    """Per output row, the damage of the output change `dz` (k, *out) at the float outputs
    `reference` (*out): ½ Δzᵀ H Δz ("quadratic"), or the output loss itself at z₀ + Δz
    ("linearised": KL(p₀ ‖ softmax(z₀ + Δz)), or ½‖Δz‖² for "mse", where the two agree)."""
    if form == "quadratic" or kind == "mse":
        return 0.5 * output_quadratic(dz, reference, kind)
    z0 = reference.to(torch.float32)
    log_p = torch.log_softmax(z0, dim=-1)
    log_q = torch.log_softmax(z0.to(dz.dtype) + dz, dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=-1).clamp_min(0.0)


def output_quadratic(dz: torch.Tensor, reference: torch.Tensor, kind: str) -> torch.Tensor:
    """Δzᵀ H Δz per output row: `dz` (k, *out) output changes, `reference` (*out) the float outputs.
    "kl": Var_p(Δz) = Σ p Δz² − (Σ p Δz)², written as Σ p (Δz − E_p Δz)² so float32 does not cancel;
    "mse": ‖Δz‖². Returns (k, *out[:-1])."""
    if kind == "mse":
        return dz.pow(2).sum(dim=-1)
    p = torch.softmax(reference.to(torch.float32), dim=-1).to(dz.dtype)
    centred = dz - (p * dz).sum(dim=-1, keepdim=True)
    return (p * centred.pow(2)).sum(dim=-1)


def _output(out) -> torch.Tensor:
    if isinstance(out, tuple | list) and out and isinstance(out[0], torch.Tensor):
        out = out[0]
    if not isinstance(out, torch.Tensor):
        raise AnalysisError("model output: must be a floating-point tensor (or a tuple starting with one)")
    return out


def reverse_jvp(f: Fn, w: torch.Tensor, tangents: torch.Tensor) -> torch.Tensor:
    """J·t for each t in `tangents` with reverse mode only: g(u) = Jᵀu is linear in u, so
    J·t = ∂⟨g(u), t⟩/∂u. For ops that lack a forward-mode formula."""
    with torch.enable_grad():
        w = w.detach().requires_grad_(True)
        out = f(w)
        u = torch.zeros_like(out, requires_grad=True)
        (g,) = torch.autograd.grad(out, w, grad_outputs=u, create_graph=True)
        result = []
        for j in range(tangents.shape[0]):
            last = j == tangents.shape[0] - 1
            (jt,) = torch.autograd.grad(g, u, grad_outputs=tangents[j], retain_graph=not last)
            result.append(jt.detach())
    return torch.stack(result)


class _Products:
    """Δz = J_l · t for a stack of tangents t of layer l's weight: vmapped jvp, else a jvp per
    tangent, else reverse mode (see the module docstring). Once a path fails it is not retried."""

    def __init__(self, model: nn.Module, params: list[nn.Parameter]):
        self.model = model
        by_storage: dict[int, list[str]] = {}
        for name, p in model.named_parameters(remove_duplicate=False):
            by_storage.setdefault(id(p), []).append(name)
        self.names = [by_storage.get(id(p), []) for p in params]
        if any(not names for names in self.names):
            raise AnalysisError("gauss_newton: a layer weight is not a parameter of the model")
        self.params = params
        self.mode = "vmap"

    def _function(self, i: int, x: torch.Tensor) -> Fn:
        from torch.func import functional_call

        names = self.names[i]

        def f(w: torch.Tensor) -> torch.Tensor:
            return _output(functional_call(self.model, {n: w for n in names}, (x,)))

        return f

    def __call__(self, i: int, x: torch.Tensor, tangents: torch.Tensor) -> torch.Tensor:
        # Fused attention kernels (flash / memory-efficient SDPA) have neither forward-mode nor
        # double-backward formulas; the math kernel is ordinary ops that have both.
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel([SDPBackend.MATH]):
            return self._products(i, x, tangents)

    def _products(self, i: int, x: torch.Tensor, tangents: torch.Tensor) -> torch.Tensor:
        from torch.func import jvp, vmap

        f = self._function(i, x)
        w = self.params[i].detach()
        if self.mode == "vmap":
            try:
                return vmap(lambda t: jvp(f, (w,), (t,))[1])(tangents).detach()
            except (RuntimeError, NotImplementedError, TypeError, ValueError) as exc:
                _reraise_out_of_memory(exc)
                self.mode = "jvp"  # an op or control flow vmap cannot batch
        if self.mode == "jvp":
            try:
                return torch.stack([jvp(f, (w,), (t,))[1] for t in tangents]).detach()
            except (RuntimeError, NotImplementedError) as exc:
                _reraise_out_of_memory(exc)
                self.mode = "reverse"  # an op without a forward-mode formula
        return reverse_jvp(f, w, tangents)


def _reraise_out_of_memory(exc: BaseException) -> None:
    """An allocator failure is not a missing batching rule: let the analysis lower the batch."""
    if isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower():
        raise exc
