"""Diagonal Fisher information per weight (SqueezeLLM / ModelOpt style sensitivity).

F_ii = (1/R) Σ_s (∂ℓ_s/∂w_i)², the mean of squared *per-sample* gradients (ℓ_s: sample s's summed
loss, R: output rows, i.e. samples, or samples × positions for sequence outputs) so that F is on
the scale of the Hessian of the mean loss the other metrics use. Per-sample rather than per-batch
gradients because B·ḡ_B² carries a bias (B−1)·ḡ² from the mean gradient. How they are computed:
- a plain nn.Linear on (samples, features) inputs: in closed form from one ordinary backward per
  batch, since g_s = δ_s a_sᵀ gives Σ_s g_s² = (δ²)ᵀ(a²) (δ: output gradient, a: input);
- every other layer (convolutions, embeddings, sequence inputs, tied weights): one vectorised
  backward per chunk (torch.func vmap over grad), `sample_chunk` gradients at a time to bound
  memory (chunk × layer weights floats); models vmap cannot trace fall back to a per-sample
  loop (same numbers, slower).

Which gradients:
- with targets, the empirical Fisher on the real labels (what SqueezeLLM uses). Known limitation
  (Kunstner et al. 2019): on a model that fits its labels confidently the per-sample gradients
  are tiny, so it can be far below the Hessian; ranking layers still mostly works (the ΔW term).
- label-free, the gradient of the output-matching loss is exactly zero at θ₀, so the empirical
  Fisher would be zero. The Fisher of the float model's own output distribution is used instead,
  which is exactly the Gauss-Newton matrix, i.e. the Hessian the other metrics see in label-free
  mode. For a classifier head (one output row per sample) with at most `exact_outputs` outputs it
  is computed exactly, one gradient per (sample, output): for "kl", g_sc = Jᵀ√p_c(e_c − p), so
  Σ_c g_sc² = diag(Jᵀ(diag p − ppᵀ)J); for "mse", g_sk = Jᵀe_k. Otherwise (sequences, large
  vocabularies) each row gets one seeded pseudo-target drawn from the model (y ~ softmax(f_θ₀(x)),
  or f_θ₀(x) + N(0, I)) whose g gᵀ has that matrix as its expectation ("Monte Carlo Fisher").
  Measured on a confident classifier the draws are very noisy (a rare class gives a huge
  gradient), hence the exact path wherever it is affordable.

Statistic: Tr(F_ll) = Σ_i F_ii of the layer, comparable to hutchinson's Tr(H_ll). Real labels and
the exact expansion are exact on the calibration set (no CI); with drawn pseudo-targets the 95% CI
is over the samples (independent draws) and `samples` counts them. Damage ≈ ½ Σ_i F_ii ΔW_i².
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
from workers.metrics._common import Z95, calibrated_params, check_loss, check_output_loss, grad_only_for, perturbation
from workers.metrics._loss import CalibrationLoss, forward

if TYPE_CHECKING:
    from workers.quantizers import Quantizer

# Per-sample loss kinds: cross-entropy on class indices, ½‖f − t‖² on real targets, ⟨f, u⟩.
_CE, _HALF_SQ, _LINEAR = "ce", "half_sq", "linear"


@dataclass
class Fisher(Metric):
    """Options: `sample_chunk` per-sample gradients held at once; `exact_outputs` largest output
    width for the exact label-free Fisher (0: always draw pseudo-targets); `output_loss` for
    label-free mode ("kl" or "mse"); `loss` which loss ("auto", "label_free", "cross_entropy";
    see workers.metrics._loss)."""

    sample_chunk: int = 64
    exact_outputs: int = 64
    output_loss: str = "kl"
    loss: str = "auto"

    name: ClassVar[str] = "fisher"
    statistic: ClassVar[str] = "fisher_trace"
    needs_data: ClassVar[bool] = True

    def __post_init__(self) -> None:
        for field_name, low in (("sample_chunk", 1), ("exact_outputs", 0)):
            value = getattr(self, field_name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"options.{field_name}: must be an integer ≥ {low}, got {value!r}")
        check_output_loss(self.output_loss)
        check_loss(self.loss)

    def measure(self, ctx: MetricContext) -> list[LayerStatistic]:
        params = calibrated_params(self.name, ctx)
        gen = torch.Generator().manual_seed(int(ctx.seed))
        diag = [torch.zeros(p.shape, dtype=torch.float64, device=p.device) for p in params]
        per_sample: list[list[torch.Tensor]] = [[] for _ in params]  # Σ_i g_si² per sample, for the CI
        drawn = False
        with grad_only_for(ctx.model, params):
            loss = CalibrationLoss(ctx.model, ctx.calibration, output_loss=self.output_loss, loss=self.loss)
            first, _ = next(ctx.calibration.batches())
            fast = _plain_linears(ctx.model, params, first[:3])
            slow = [i for i in range(len(params)) if i not in fast]
            grads = _PerSampleGrads(ctx.model, [params[i] for i in slow])
            total = ctx.calibration.samples
            done = 0
            started = time.perf_counter()
            for b, (x, y) in enumerate(ctx.calibration.batches()):
                kind, targets, columns = self._targets(loss, b, x, y, gen)
                drawn = drawn or (loss.label_free and kind != _LINEAR)
                x = x.to(diag[0].device)
                targets = targets.to(x.device)
                if fast:
                    closed = _linear_fisher(ctx.model, fast, x, targets, kind, columns)
                    for i, (add, norms) in closed.items():
                        diag[i].add_(add)
                        per_sample[i].append(norms)
                step = max(1, self.sample_chunk // columns)
                for start in range(0, x.shape[0], step) if slow else ():
                    xs = x[start : start + step]
                    ts = targets[start * columns : (start + xs.shape[0]) * columns]
                    xs_rep = xs.repeat_interleave(columns, dim=0) if columns > 1 else xs
                    for i, g in zip(slow, grads(xs_rep, ts, kind), strict=True):
                        sq = g.pow(2).reshape(xs.shape[0], columns, *g.shape[1:]).sum(dim=1)
                        diag[i].add_(sq.sum(dim=0, dtype=torch.float64))
                        per_sample[i].append(sq.flatten(1).sum(dim=1, dtype=torch.float64))
                    _progress(ctx, done + start + xs.shape[0], total, started)
                done += x.shape[0]
                _progress(ctx, done, total, started)
        stats = []
        for i in range(len(params)):
            diag[i].div_(loss.rows)
            norms = torch.cat(per_sample[i]).cpu()
            n = norms.numel()
            mean = float(diag[i].sum())
            half = None
            if drawn:  # Tr(F_ll) = (n/R) · mean_s ‖g_s‖² over independent draws: a sample mean's CI
                half = Z95 * float(norms.std()) / math.sqrt(n) * n / loss.rows if n > 1 else math.inf
            if not (math.isfinite(mean) and (half is None or math.isfinite(half))):
                raise AnalysisError("fisher: the estimate is not finite (NaN/inf in the loss or gradients)")
            stats.append(
                LayerStatistic(
                    mean=mean,
                    ci_halfwidth=half,
                    samples=n if drawn else None,
                    extra={"diag": diag[i].to(device="cpu", dtype=torch.float32)},
                )
            )
        ctx.report(1.0, f"fisher: {total} samples")
        return stats

    def damage(
        self, stat: LayerStatistic, candidate: Quantizer, weight: torch.Tensor, quantized: torch.Tensor
    ) -> float:
        delta = perturbation(weight, quantized)
        diag = stat.extra["diag"].to(device=delta.device, dtype=torch.float64).reshape(delta.shape)
        return 0.5 * float((diag * delta.pow(2)).sum())

    def _targets(
        self, loss: CalibrationLoss, batch: int, x: torch.Tensor, y: torch.Tensor | None, gen: torch.Generator
    ) -> tuple[str, torch.Tensor, int]:
        """(loss kind, targets with `columns` consecutive rows per sample, columns): real labels,
        the exact label-free expansion, or drawn pseudo-targets (see the module docstring)."""
        if not loss.label_free:
            return _CE, y.reshape(x.shape[0], -1), 1
        ref = loss.reference(batch)  # (rows, outputs): log-probabilities ("kl") or outputs ("mse")
        rows, outputs = ref.shape
        if rows == x.shape[0] and outputs <= self.exact_outputs:
            eye = torch.eye(outputs, dtype=ref.dtype, device=ref.device)
            if self.output_loss == "kl":
                p = ref.exp()  # u_sc = √p_sc (e_c − p_s): rows (s, c) flattened sample-major
                u = (eye.unsqueeze(0) - p.unsqueeze(1)) * p.sqrt().unsqueeze(2)
            else:
                u = eye.expand(rows, outputs, outputs)
            return _LINEAR, u.reshape(rows * outputs, 1, outputs), outputs
        if self.output_loss == "kl":
            drawn = torch.multinomial(ref.exp().cpu(), 1, generator=gen).squeeze(1)
            return _CE, drawn.reshape(x.shape[0], -1), 1
        drawn = ref + torch.randn(ref.shape, generator=gen, dtype=ref.dtype).to(ref.device)
        return _HALF_SQ, drawn.reshape(x.shape[0], -1, outputs), 1


def _progress(ctx: MetricContext, done: int, total: int, started: float) -> None:
    eta = (time.perf_counter() - started) / done * (total - done)
    ctx.report(done / total, f"fisher: {done} of {total} samples, ETA {eta:.0f} s")


def _plain_linears(model: nn.Module, params: list[nn.Parameter], x: torch.Tensor) -> dict[int, nn.Linear]:
    """Layers whose per-sample gradients have a closed form: an nn.Linear that owns its weight
    alone (no tying) and is called once per forward on a (samples, features) input. Its
    per-sample gradient is δ_s a_sᵀ, so Σ_s g_s² = (δ²)ᵀ(a²) and ‖g_s‖² = ‖δ_s‖²‖a_s‖²: one
    ordinary backward instead of a vectorised per-sample one. Found by forwards on rows of `x`."""
    owners: dict[int, list[nn.Module]] = {}
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if isinstance(weight, nn.Parameter):
            owners.setdefault(id(weight), []).append(module)
    candidates = {}
    for i, p in enumerate(params):
        found = owners.get(id(p), [])
        if len(found) == 1 and type(found[0]) is nn.Linear:
            candidates[i] = found[0]
    fast = dict(candidates)
    # Two batch sizes, so a dimension that only happens to equal the sample count once is not
    # taken for the sample dimension.
    for size in sorted({min(len(x), 2), min(len(x), 3)}):
        calls: dict[int, list[bool]] = {i: [] for i in fast}
        hooks = [
            m.register_forward_hook(
                lambda mod, inp, out, i=i, size=size: calls[i].append(inp[0].dim() == 2 and len(inp[0]) == size)
            )
            for i, m in fast.items()
        ]
        try:
            with torch.no_grad():
                forward(model, x[:size])
        finally:
            for h in hooks:
                h.remove()
        fast = {i: m for i, m in fast.items() if calls[i] == [True]}
    return fast


def _linear_fisher(
    model: nn.Module,
    linears: dict[int, nn.Linear],
    x: torch.Tensor,
    targets: torch.Tensor,
    kind: str,
    columns: int,
) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """For each closed-form layer: (Σ_s g_s², ‖g_s‖² per sample) over the batch `x`, summed over
    the `columns` targets per sample. Relies on each sample's loss depending on that sample
    only (true in eval mode for feed-forward models; the vmap path assumes the same)."""
    captured: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    hooks = [
        m.register_forward_hook(lambda mod, inp, out, i=i: captured.__setitem__(i, (inp[0].detach(), out)))
        for i, m in linears.items()
    ]
    try:
        out = forward(model, x)
    finally:
        for h in hooks:
            h.remove()
    order = list(captured)
    outputs = [captured[i][1] for i in order]
    squares = {i: captured[i][0].pow(2) for i in order}
    result = {
        i: (
            torch.zeros(m.weight.shape, dtype=torch.float64, device=x.device),
            torch.zeros(x.shape[0], dtype=torch.float64, device=x.device),
        )
        for i, m in linears.items()
    }
    per_column = targets.reshape(x.shape[0], columns, -1)
    for c in range(columns):
        value = _PerSampleGrads._loss(out, per_column[:, c], kind)
        deltas = torch.autograd.grad(value, outputs, retain_graph=c < columns - 1, allow_unused=True)
        for i, delta in zip(order, deltas, strict=True):
            if delta is None:
                continue
            d2 = delta.detach().pow(2)
            result[i][0].add_((d2.T @ squares[i]).to(torch.float64))
            result[i][1].add_((d2.sum(dim=1) * squares[i].sum(dim=1)).to(torch.float64))
    return result


class _PerSampleGrads:
    """Per-sample gradients of the layer weights, one vectorised backward per chunk."""

    def __init__(self, model: nn.Module, params: list[nn.Parameter]):
        self.model = model
        self.params = params
        names = {id(p): n for n, p in model.named_parameters()}
        self.names = [names[id(p)] for p in params]
        self.vectorised = True

    @staticmethod
    def _loss(
        out: torch.Tensor, target: torch.Tensor, kind: str, *, check_values: bool = True
    ) -> torch.Tensor:
        """One sample's summed loss. Under vmap the class-index check cannot run (it reads values);
        an out-of-range target then fails inside vmap, the loop takes over and raises the message."""
        logits = out.reshape(-1, out.shape[-1]).to(torch.float32)
        if kind == _LINEAR:
            return (logits * target.reshape(logits.shape)).sum()
        if kind == _HALF_SQ:
            return 0.5 * (logits - target.reshape(logits.shape)).pow(2).sum()
        target = target.reshape(-1)
        if target.shape[0] != logits.shape[0]:
            raise AnalysisError(
                f"targets: {target.shape[0]} per sample but the model gives {logits.shape[0]} output rows"
            )
        if check_values and int(target.max()) >= logits.shape[1]:
            raise AnalysisError(
                f"targets: class index {int(target.max())} but the model has {logits.shape[1]} classes"
            )
        return F.cross_entropy(logits, target, reduction="sum")

    def __call__(self, x: torch.Tensor, targets: torch.Tensor, kind: str) -> list[torch.Tensor]:
        if not self.params:
            return []
        if self.vectorised:
            try:
                return self._vmapped(x, targets, kind)
            except (RuntimeError, NotImplementedError, TypeError):
                self.vectorised = False  # an op or control flow vmap cannot batch: loop from now on
        columns = []
        for s in range(x.shape[0]):
            value = self._loss(forward(self.model, x[s : s + 1]), targets[s], kind)
            columns.append(torch.autograd.grad(value, self.params, allow_unused=True))
        return [
            torch.stack([torch.zeros_like(p) if col[i] is None else col[i] for col in columns])
            for i, p in enumerate(self.params)
        ]

    def _vmapped(self, x: torch.Tensor, targets: torch.Tensor, kind: str) -> list[torch.Tensor]:
        from torch.func import functional_call, grad, vmap

        weights = tuple(p.detach() for p in self.params)

        def one(ws: tuple[torch.Tensor, ...], xs: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            out = functional_call(self.model, dict(zip(self.names, ws, strict=True)), (xs.unsqueeze(0),))
            if isinstance(out, tuple | list):
                out = out[0]
            return self._loss(out, t, kind, check_values=False)

        # Layers outside self.params keep their live Parameters, so detach the result.
        return [g.detach() for g in vmap(grad(one), in_dims=(None, 0, 0))(weights, x, targets)]
