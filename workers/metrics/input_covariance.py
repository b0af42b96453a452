"""Probe-free damage from the layer's input covariance (the statistic GPTQ uses), optionally
weighted per output channel by a sampled Fisher (a K-FAC Gauss-Newton form with a diagonal
output factor).

For a layer Y = X Wᵀ stored as candidate c, ΔW = Q_c(W) − W (rounded exactly as the analysis
rounds, LayerInfo.quantize). With A = Σ_tokens x xᵀ, summed over every position at which the
layer sees an input on the calibration set (one forward pass, forward hooks, float64), the damage is

    d(l, c) = ½ Σ_o B_oo · ΔW_o A ΔW_oᵀ = ½ vec(ΔW)ᵀ (A ⊗ diag B) vec(ΔW)   (ΔW_o: output row o)

`weighting`:
- "none": B = I, so d = ½ Σ_tokens ‖ΔW x‖², the layer's own output error (forward only; its
  scale is that of the layer's outputs, so layers are compared by raw output error).
- "fisher" (default): B_oo = (1/R) · mean over tokens of (∂ℓ/∂y_o)², from `fisher_batches`
  backward passes of the summed loss ℓ = Σ_rows CE(f(x), ŷ) with labels ŷ ~ softmax(f(x)) drawn
  from the float model itself (seeded), R the calibration set's output rows. E[g gᵀ] for such a
  label is the output-space Gauss-Newton matrix (diag p − ppᵀ, that of KL and of cross-entropy),
  so d ≥ 0 and d ≈ gauss_newton's ½ΔWᵀGΔW under the K-FAC factorisation G ≈ (1/R) A ⊗ E[δδᵀ]
  with the output factor kept diagonal and averaged over positions. Cheap: a few backwards,
  no per-candidate passes through the model.

Layers: nn.Linear and HF Conv1D (transposed linear); nn.Conv1d / nn.Conv2d from unfolded input
patches, one A per group (depthwise: kernel-sized A's), accumulated batch by batch; nn.Embedding
with A = diag(token counts). A weight used by several modules (tied embedding / LM head) sums
the damage of every use (the cross terms between uses are ignored). Any other module owning a
layer weight is an AnalysisError naming the layer.

Confidence interval: the calibration samples are split into `folds` (a seeded permutation), each
fold's A is kept apart (memory: folds × Σ_l d_in² float64 values), each fold gives its own
estimate of d, and the 95% half-width is 1.96 · s / √folds over those estimates. B is shared by
the folds, so the interval covers the input statistic, not the Fisher draws.

Statistic: the largest d(l, c) over the candidates (the layer's worst case), its half-width and
the number of folds; damage is d(l, c) for the candidate asked.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from workers.errors import AnalysisError
from workers.metrics._base import LayerStatistic, Metric, MetricContext
from workers.metrics._common import (
    Z95, calibrated_params, check_loss, check_positive_ints, grad_only_for, measured_damage,
)
from workers.metrics._loss import forward, uses_label_free

if TYPE_CHECKING:
    from workers.quantizers import Quantizer

WEIGHTINGS = ("fisher", "none")


@dataclass
class InputCovariance(Metric):
    """Options: `weighting` ("fisher" or "none"; see the module docstring); `folds` the calibration
    samples are split into for the confidence interval; `fisher_batches` calibration batches whose
    backward pass (with labels drawn from the model) gives the output weights B; `loss` as for the
    other metrics (it only names the table's loss: the Gauss-Newton matrix of cross-entropy and of
    KL is the same, so the weights are the same)."""

    weighting: str = "fisher"
    folds: int = 8
    fisher_batches: int = 4
    loss: str = "auto"

    name: ClassVar[str] = "input_covariance"
    statistic: ClassVar[str] = "max_quadratic_damage"
    needs_data: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"options.weighting: must be one of {', '.join(WEIGHTINGS)}, got {self.weighting!r}")
        check_positive_ints(self, "folds", "fisher_batches")
        if self.folds < 2:
            raise ValueError("options.folds: at least 2 folds are needed for a confidence interval")
        check_loss(self.loss)

    def measure(self, ctx: MetricContext) -> list[LayerStatistic]:
        params = calibrated_params(self.name, ctx)
        calibration = ctx.calibration
        uses_label_free(ctx.model, calibration, self.loss)  # validates options.loss against the data
        uses = [_uses(ctx.model, info, weight) for info, weight in ctx.layers]
        samples = calibration.samples
        folds = min(self.folds, samples)
        gen = torch.Generator().manual_seed(int(ctx.seed))
        fold_of = torch.empty(samples, dtype=torch.long)
        fold_of[torch.randperm(samples, generator=gen)] = torch.arange(samples) % folds
        fisher_batches = min(self.fisher_batches, len(calibration)) if self.weighting == "fisher" else 0
        steps = fisher_batches + len(calibration)
        started = time.perf_counter()

        def progress(done: int, what: str) -> None:
            eta = (time.perf_counter() - started) / done * (steps - done)
            ctx.report(done / steps, f"input_covariance: {what}, ETA {eta:.0f} s")

        with grad_only_for(ctx.model, params if fisher_batches else []):
            if fisher_batches:
                self._output_weights(ctx, uses, fisher_batches, gen, progress)
            rows = 0
            for layer in uses:
                for use in layer:
                    use.start(folds)
            hooks = [use.module.register_forward_hook(use.capture) for layer in uses for use in layer]
            try:
                with torch.no_grad():
                    start = 0
                    for b, (x, _) in enumerate(calibration.batches()):
                        n = x.shape[0]
                        owner = fold_of[start : start + n]
                        for g in owner.unique().tolist():
                            for layer in uses:
                                for use in layer:
                                    use.fold = g
                            out = forward(ctx.model, x[owner == g])
                            rows += out[..., 0].numel()
                        start += n
                        progress(fisher_batches + b + 1, f"batch {b + 1} of {len(calibration)} (input covariance)")
            finally:
                for h in hooks:
                    h.remove()
        if fisher_batches:
            for layer in uses:
                for use in layer:
                    use.finish_weights(rows)
        sizes = torch.bincount(fold_of, minlength=folds).to(torch.float64)
        stats = []
        for (info, weight), layer in zip(ctx.layers, uses, strict=True):
            damage, half = {}, {}
            for q in ctx.candidates:
                with torch.no_grad():
                    w = weight.detach().to(torch.float32)
                    delta = (info.quantize(q, w) - w).to(torch.float64)
                per_fold = sum(use.fold_damages(delta) for use in layer)
                damage[q.name], half[q.name] = _damage_ci(per_fold, sizes)
            for use in layer:
                use.release()
            if not all(math.isfinite(v) for v in (*damage.values(), *half.values())):
                raise AnalysisError("input_covariance: the damage is not finite (NaN/inf in the activations)")
            worst = max(damage, key=damage.__getitem__) if damage else None
            stats.append(
                LayerStatistic(
                    mean=damage[worst] if worst is not None else 0.0,
                    ci_halfwidth=half[worst] if worst is not None else 0.0,
                    samples=folds,
                    converged=True,
                    extra={"damage": damage, "ci": half, "worst": worst},
                )
            )
        ctx.report(
            1.0,
            f"input_covariance: {len(params)} layers × {len(ctx.candidates)} candidates, {samples} samples,"
            f" weighting {self.weighting}",
        )
        return stats

    def _output_weights(self, ctx, uses, batches, gen, progress) -> None:
        """Σ (∂ℓ/∂y_o)² and the positions it sums over, for every use (B once the output rows are
        known), ℓ the summed cross-entropy of labels drawn from the model's own softmax."""
        flat = [use for layer in uses for use in layer]
        outputs: dict[int, list[torch.Tensor]] = {}

        def keep(i: int):
            def hook(module, inputs, out):
                outputs.setdefault(i, []).append(out)

            return hook

        for b, (x, _) in enumerate(ctx.calibration.batches()):
            if b >= batches:
                break
            outputs.clear()
            hooks = [use.module.register_forward_hook(keep(i)) for i, use in enumerate(flat)]
            try:
                out = forward(ctx.model, x)
            finally:
                for h in hooks:
                    h.remove()
            logits = out.reshape(-1, out.shape[-1]).to(torch.float32)
            with torch.no_grad():
                probs = torch.softmax(logits.detach(), dim=-1).cpu().to(torch.float64)
            drawn = torch.multinomial(probs, 1, generator=gen).squeeze(1).to(logits.device)
            value = F.cross_entropy(logits, drawn, reduction="sum")
            order = [(i, t) for i in sorted(outputs) for t in outputs[i] if t.requires_grad]
            grads = torch.autograd.grad(value, [t for _, t in order], allow_unused=True) if order else []
            for (i, t), g in zip(order, grads, strict=True):
                flat[i].add_gradient(torch.zeros_like(t) if g is None else g.detach())
            progress(b + 1, f"batch {b + 1} of {batches} (sampled Fisher)")

    def damage(
        self, stat: LayerStatistic, candidate: Quantizer, weight: torch.Tensor, quantized: torch.Tensor
    ) -> float:
        return measured_damage(self.name, stat, candidate)


def _damage_ci(per_fold: torch.Tensor, sizes: torch.Tensor) -> tuple[float, float]:
    """The total over folds, and the 95% half-width of the folds' own estimates of it (each fold's
    damage scaled up by samples / fold size)."""
    value = float(per_fold.sum())
    g = per_fold.numel()
    if g < 2:
        return value, math.inf
    estimates = (per_fold * (sizes.sum() / sizes)).tolist()
    mean = math.fsum(estimates) / g
    var = math.fsum((e - mean) ** 2 for e in estimates) / (g - 1)
    return value, Z95 * math.sqrt(var / g)


class _Use:
    """One module's use of a layer weight: its per-fold input statistic A and output weights B.
    Subclasses know how the module's input maps to rows x (and its weight to ΔW rows)."""

    def __init__(self, module: nn.Module, transposed: bool = False):
        self.module = module
        self.transposed = transposed
        self.fold = 0
        self.a: torch.Tensor | None = None
        self.b_sum: torch.Tensor | None = None
        self.b_positions = 0
        self.b: torch.Tensor | None = None  # None: weighting "none" (B = I)

    # --- output weights
    def add_gradient(self, g: torch.Tensor) -> None:
        per_channel, positions = self._output_squares(g.to(torch.float64))
        self.b_sum = per_channel if self.b_sum is None else self.b_sum + per_channel
        self.b_positions += positions

    def _output_squares(self, g: torch.Tensor) -> tuple[torch.Tensor, int]:
        flat = g.reshape(-1, g.shape[-1])
        return flat.pow(2).sum(dim=0), flat.shape[0]

    def finish_weights(self, rows: int) -> None:
        if self.b_sum is None:
            self.b = torch.zeros(self.out_channels(), dtype=torch.float64, device=self.weight().device)
        else:
            self.b = self.b_sum / max(self.b_positions, 1) / rows
        self.b_sum = None

    # --- input statistic
    def weight(self) -> torch.Tensor:
        return self.module.weight

    def out_channels(self) -> int:
        w = self.weight()
        return int(w.shape[1] if self.transposed else w.shape[0])

    def start(self, folds: int) -> None:
        raise NotImplementedError

    def capture(self, module, inputs, out) -> None:
        raise NotImplementedError

    def fold_damages(self, delta: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def release(self) -> None:
        self.a = None


class _LinearUse(_Use):
    def start(self, folds: int) -> None:
        w = self.weight()
        d_in = int(w.shape[0] if self.transposed else w.shape[1])
        self.a = torch.zeros(folds, d_in, d_in, dtype=torch.float64, device=w.device)

    def capture(self, module, inputs, out) -> None:
        x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).to(torch.float64)
        self.a[self.fold].addmm_(x.T, x)

    def fold_damages(self, delta: torch.Tensor) -> torch.Tensor:
        dw = (delta.T if self.transposed else delta).to(self.a.device)  # (out, in)
        weighted = dw if self.b is None else dw * self.b.unsqueeze(1)
        m = weighted.T @ dw  # Σ_o B_o ΔW_oᵀ ΔW_o
        return 0.5 * (self.a * m).sum(dim=(1, 2)).cpu()


class _ConvUse(_Use):
    """nn.Conv1d / nn.Conv2d: rows x are the unfolded input patches of one group."""

    def _output_squares(self, g: torch.Tensor) -> tuple[torch.Tensor, int]:
        flat = g.transpose(0, 1).reshape(g.shape[1], -1)  # (out channels, batch × positions)
        return flat.pow(2).sum(dim=1), flat.shape[1]

    def start(self, folds: int) -> None:
        w = self.weight()
        k = int(w[0].numel())  # in/groups × kernel
        self.a = torch.zeros(folds, self.module.groups, k, k, dtype=torch.float64, device=w.device)

    def capture(self, module, inputs, out) -> None:
        x = inputs[0].detach()
        m = self.module
        one_d = isinstance(m, nn.Conv1d)
        if x.dim() == (2 if one_d else 3):  # an unbatched input
            x = x.unsqueeze(0)
        pad = m._reversed_padding_repeated_twice
        if any(pad):
            x = F.pad(x, pad, mode="constant" if m.padding_mode == "zeros" else m.padding_mode)
        kernel, dilation, stride = m.kernel_size, m.dilation, m.stride
        if one_d:
            x = x.unsqueeze(2)
            kernel, dilation, stride = (1, *kernel), (1, *dilation), (1, *stride)
        patches = F.unfold(x, kernel, dilation=dilation, stride=stride)  # (N, C·k, L)
        groups = m.groups
        k = patches.shape[1] // groups
        patches = patches.reshape(patches.shape[0], groups, k, -1).permute(1, 0, 3, 2).reshape(groups, -1, k)
        patches = patches.to(torch.float64)
        self.a[self.fold].baddbmm_(patches.transpose(1, 2), patches)

    def fold_damages(self, delta: torch.Tensor) -> torch.Tensor:
        groups = self.module.groups
        dw = delta.to(self.a.device).reshape(groups, delta.shape[0] // groups, -1)  # (G, out/G, k)
        weighted = dw if self.b is None else dw * self.b.reshape(groups, -1, 1)
        m = weighted.transpose(1, 2) @ dw  # (G, k, k)
        return 0.5 * (self.a * m.unsqueeze(0)).sum(dim=(1, 2, 3)).cpu()


class _EmbeddingUse(_Use):
    """nn.Embedding: y = W[token], so x is one-hot, A = diag(token counts) and output channel o
    is column o of the (vocab, dim) weight."""

    def out_channels(self) -> int:
        return int(self.weight().shape[1])

    def start(self, folds: int) -> None:
        w = self.weight()
        self.a = torch.zeros(folds, int(w.shape[0]), dtype=torch.float64, device=w.device)

    def capture(self, module, inputs, out) -> None:
        ids = inputs[0].detach().reshape(-1)
        self.a[self.fold].add_(torch.bincount(ids, minlength=self.a.shape[1]).to(torch.float64))

    def fold_damages(self, delta: torch.Tensor) -> torch.Tensor:
        sq = delta.to(self.a.device).pow(2)  # (vocab, dim)
        per_token = sq.sum(dim=1) if self.b is None else sq @ self.b
        return 0.5 * (self.a @ per_token).cpu()


def _uses(model: nn.Module, info, weight: nn.Parameter) -> list[_Use]:
    """Every module of `model` whose weight is this layer's; AnalysisError naming the layer when
    one of them is of a kind this metric cannot handle, or when no module owns it."""
    from workers.hf import is_conv1d

    found: list[_Use] = []
    for name, module in model.named_modules(remove_duplicate=False):
        if getattr(module, "weight", None) is not weight:
            continue
        if any(u.module is module for u in found):
            continue
        if is_conv1d(module) and weight.dim() == 2:
            found.append(_LinearUse(module, transposed=True))
        elif isinstance(module, nn.Linear):
            found.append(_LinearUse(module))
        elif isinstance(module, nn.Conv1d | nn.Conv2d):
            found.append(_ConvUse(module))
        elif isinstance(module, nn.Embedding):
            found.append(_EmbeddingUse(module))
        else:
            raise AnalysisError(
                f"input_covariance: layer {name or info.name!r} is a {type(module).__name__}, which this"
                " metric cannot handle (nn.Linear, Conv1D, nn.Conv1d, nn.Conv2d, nn.Embedding)"
            )
    if not found:
        raise AnalysisError(
            f"input_covariance: layer {info.name!r}: no module owns its weight (a functional use, e.g. an"
            " exported graph), so its inputs cannot be captured"
        )
    return found
