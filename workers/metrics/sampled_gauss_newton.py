"""The Gauss-Newton quadratic form along each candidate's perturbation, estimated from sampled-label
gradients: no Kronecker or diagonal approximation, and one backward per draw for every layer and
candidate at once.

For a sample s (a calibration image, or a text window) draw a label ŷ_r ~ softmax(z_r) for each of
its output rows r (z: the float model's logits), and let g_s = ∇_W Σ_r CE(z_r, ŷ_r) be the gradient
of that sampled loss in a layer's weight. Its output-space factor p_r − e_ŷ has covariance
diag p_r − p_r p_rᵀ = H_r (the Hessian of KL and of cross-entropy in the logits), and the rows'
draws are independent, so for any ΔW

    E_ŷ[⟨g_s, ΔW⟩²] = Σ_{r ∈ s} Δz_rᵀ H_r Δz_r,   Δz_r = J_r · ΔW,

the exact Gauss-Newton form of gauss_newton, cross terms between output channels, positions and
(for tied weights) uses included.

Drawing ŷ ~ p directly fails on a confident model: with p_top = 0.9997 (a trained digits MLP; an
ImageNet CNN on most photos, an LM on most tokens) four draws almost never pick another label, and
those rare labels carry nearly all of H, so the estimate came out ~500× below the exact form with a
tight interval. So each draw is split in two backward passes over the identity
H = p_t (e_t − p)(e_t − p)ᵀ + (1 − p_t) E_{k ~ p, k ≠ t}[(e_k − p)(e_k − p)ᵀ] (t: the row's most
likely label): part 0 takes label t with weight √p_t, part 1 a label drawn from the other labels'
probabilities with weight √(1 − p_t), and every row gets a random sign s_r = ±1 so that the rows'
cross terms still vanish in expectation. The sum of the two parts' ⟨g, ΔW⟩² has the same
expectation, and the rare labels' share enters with its weight every time instead of by chance. The damage is d(l, c) = ½ · (1/R) Σ_s mean over `draws` of
⟨g_s, Q_c(W) − W⟩² (R: output rows), ≥ 0 by construction. "mse" output loss: the label is a
Rademacher vector u_r (E[u uᵀ] = I), the loss Σ_r ⟨u_r, z_r⟩.

Why this and not input_covariance's K-FAC form: on SmolLM2-135M the K-FAC form's error against
the measured single-layer KL depended on the layer's role (v_proj over-predicted ~2×, MLP and
o_proj under-predicted 2–3×, a product of averaging the output factor over positions), which moved
bits from the MLPs to attention and gave a plan worse than uniform int4; this form's error is nearly
the same factor for every role (README, Benchmarks).

Cost: per sample, one forward at batch 1 and 2 × `draws` backward passes through it ("mse": `draws`) (a model with a
fixed batch dimension is run at its calibration batch, and each sample's backward pays for the whole
batch); each weight gradient is dotted with every candidate's ΔW as soon as it is accumulated and
then freed. Memory: the model, one sample's graph, and ΔW of every layer and candidate: float32, or,
when that stack would pass `DELTA_FLOAT32_BYTES`, int8 codes with one float32 scale per `CODE_BLOCK`
weights (1.06 bytes a weight instead of 4). The codes' rounding error e is about 0.4% of ΔW, random
and uncorrelated with the gradient, so it moves E⟨g, ΔW + e⟩² by E⟨g, e⟩², about 10⁻⁵ of the value:
far below the sampling error. It needs a backward through the whole model, so it does not stream
block by block (input_covariance does).

Confidence interval: over `groups` consecutive groups of samples, each group's estimate of the
damage, 1.96 · s / √groups; it covers both the finite calibration set and the label draws.

Statistic: the largest d(l, c) over the candidates (the layer's worst case), its half-width and the
number of groups; damage is d(l, c) for the candidate asked.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F

from workers.data import batches
from workers.errors import AnalysisError
from workers.metrics._base import LayerStatistic, Metric, MetricContext
from workers.metrics._common import (
    LABEL_CHUNK_ELEMENTS,
    candidate_statistic,
    calibrated_params, check_loss, check_output_loss, check_positive_ints, grad_only_for, group_damage_ci,
    measured_damage,
)
from workers.metrics._loss import forward, model_device, uses_label_free

if TYPE_CHECKING:
    from workers.quantizers import Quantizer

# above this many bytes (as float32) the stack of every layer's and candidate's ΔW is kept as int8 codes
DELTA_FLOAT32_BYTES = 2**26
# weights that share one scale in the int8 stack
CODE_BLOCK = 64
# weights per slice when int8 codes are widened to float32 for the product: small enough that the
# widened slice of every candidate stays in cache (2^16: 2.4× a float32 product; 2^22: 12×)
WIDEN_ELEMENTS = 2**16
# ΔW values coded at once: the coding's temporaries stay a few MB, not a few copies of the layer
CODING_ELEMENTS = 2**20


@dataclass
class SampledGaussNewton(Metric):
    """Options: `draws` per calibration sample, each two backward passes (the variance falls as
    1/(samples × draws)); `groups` of samples the confidence interval is computed over; `loss` ("auto",
    "label_free" or "cross_entropy": the Gauss-Newton matrix of cross-entropy is that of "kl") and
    `output_loss` ("kl" or "mse") as for gauss_newton."""

    draws: int = 2
    groups: int = 16
    loss: str = "auto"
    output_loss: str = "kl"

    name: ClassVar[str] = "sampled_gauss_newton"
    statistic: ClassVar[str] = "max_quadratic_damage"
    needs_data: ClassVar[bool] = True
    shardable: ClassVar[bool] = True  # a sum over samples seeded per sample (measure_share / merge_shares)

    def __post_init__(self) -> None:
        check_positive_ints(self, "draws", "groups")
        if self.groups < 2:
            raise ValueError("options.groups: at least 2 groups are needed for a confidence interval")
        check_loss(self.loss)
        check_output_loss(self.output_loss)

    def measure(self, ctx: MetricContext) -> list[LayerStatistic]:
        params = calibrated_params(self.name, ctx)
        squares, rows = self._squares(ctx, params, range(ctx.calibration.samples))
        return self._statistics(squares, rows, ctx.calibration.samples, ctx.candidates)

    def measure_share(self, ctx: MetricContext, share: range) -> dict:
        """The per-sample sums of one share of the calibration samples (a shard's), JSON-able, for
        `merge_shares`. Samples keep their global index, which seeds their draws and picks their CI
        group, so the shares of a split run add up to exactly what `measure` computes."""
        params = calibrated_params(self.name, ctx)
        squares, rows = self._squares(ctx, params, share)
        part = [values[:, share.start : share.stop] for values in squares]
        if not all(bool(torch.isfinite(values).all()) for values in part):
            raise AnalysisError(f"{self.name}: the damage is not finite (NaN/inf in the model's gradients)")
        return {"start": share.start, "stop": share.stop, "rows": rows, "run": dict(self.run_info),
                "squares": [values.tolist() for values in part]}

    def merge_shares(self, ctx: MetricContext, shares: list[dict]) -> list[LayerStatistic]:
        """The statistics of the whole calibration set from every share's `measure_share`: the sums
        put back in global sample order, then what `measure` does with its own."""
        samples = ctx.calibration.samples
        ordered = sorted(shares, key=lambda part: part["start"])
        bounds = [(part["start"], part["stop"]) for part in ordered]
        if [lo for lo, _ in bounds] != [0, *(hi for _, hi in bounds[:-1])] or bounds[-1][1] != samples:
            raise AnalysisError(f"{self.name}: the shards cover samples {bounds}, not 0..{samples} once each")
        squares = [torch.cat([torch.tensor(part["squares"][i], dtype=torch.float64).reshape(len(ctx.candidates), -1)
                              for part in ordered], dim=1) for i in range(len(ctx.layers))]
        self.run_info = {**ordered[0]["run"], "shards": len(ordered)}
        return self._statistics(squares, sum(part["rows"] for part in ordered), samples, ctx.candidates)

    def _squares(self, ctx: MetricContext, params, share: range) -> tuple[list[torch.Tensor], int]:
        """Per layer, (candidates, samples) sums of ⟨g, ΔW⟩² over the draws, filled for the samples in
        `share` (zero elsewhere), and the output rows of those samples."""
        calibration = ctx.calibration
        label_free = uses_label_free(ctx.model, calibration, self.loss)
        kind = self.output_loss if label_free else "kl"  # cross-entropy's Hessian in the logits is KL's
        samples = len(share)
        squares = [torch.zeros(len(ctx.candidates), calibration.samples, dtype=torch.float64) for _ in params]
        started = time.perf_counter()

        def progress(end: int) -> None:
            done = end - share.start
            eta = (time.perf_counter() - started) / done * (samples - done)
            ctx.report(done / samples, f"{self.name}: {done} of {samples} samples × {self.draws} draws, ETA {eta:.0f} s")

        with grad_only_for(ctx.model, params):
            deltas = _perturbations(ctx)
            inner = _InnerProducts(params, deltas)
            rows, start = 0, share.start
            alone = None
            with inner.hooked():
                for x, _ in batches(calibration.inputs[share.start : share.stop], None, calibration.batch_size):
                    x = x.to(model_device(ctx.model))
                    if alone is None:
                        alone = x.shape[0] == 1 or (getattr(ctx.model, "bitplan_static_batch", None) is None
                                                    and _runs_alone(ctx.model, x[:1]))
                    rows += self._batch(ctx.model, x, start, alone, kind, ctx.seed, inner, squares, progress)
                    start += x.shape[0]
        # what ran, for the analysis's provenance (metric_run)
        self.run_info = {"forward_batch": 1 if alone else calibration.batch_size, "draws": self.draws,
                         "perturbations": deltas[0].kind,
                         "perturbation_mib": round(sum(d.nbytes for d in deltas) / 2**20, 1)}
        return squares, rows

    def _statistics(self, squares: list[torch.Tensor], rows: int, samples: int, candidates) -> list[LayerStatistic]:
        per_row = rows / samples
        stats = []
        for values in squares:
            damage, half = {}, {}
            for j, q in enumerate(candidates):
                damage[q.name], half[q.name] = group_damage_ci(0.5 * values[j] / self.draws, per_row, self.groups)
            stats.append(candidate_statistic(self.name, damage, half, min(self.groups, samples), "the model's gradients"))
        return stats

    def _batch(self, model, x, start, alone, kind, seed, inner, squares, progress) -> int:
        """Every sample of batch `x` (forwarded one at a time when the model allows): each draw's
        ⟨g, ΔW⟩² added to `squares`; returns the batch's output rows. Sample s draws from its own
        generator, seeded from (seed, s), so the numbers do not depend on the batch size."""
        n = x.shape[0]
        pieces = [(x[i : i + 1], [start + i]) for i in range(n)] if alone else [(x, list(range(start, start + n)))]
        rows = 0
        for inputs, columns in pieces:
            out = forward(model, inputs)
            logits = out.reshape(out.shape[0], -1, out.shape[-1]).to(torch.float32)
            rows += logits.shape[0] * logits.shape[1]
            gens = [torch.Generator().manual_seed((seed * 1_000_003 + column) % 2**63) for column in columns]
            parts = range(2) if kind == "kl" else range(1)
            steps = [(b, column, part) for _ in range(self.draws) for part in parts for b, column in enumerate(columns)]
            for t, (b, column, part) in enumerate(steps):
                sampled = _sampled_loss(logits[b], kind, gens[b], part)
                inner.reset()
                sampled.backward(retain_graph=t < len(steps) - 1)
                for products, acc in zip(inner.take(), squares, strict=True):
                    acc[:, column] += products.pow(2)
            del out, logits
            progress(columns[-1] + 1)
        return rows

    def damage(
        self, stat: LayerStatistic, candidate: Quantizer, weight: torch.Tensor, quantized: torch.Tensor
    ) -> float:
        return measured_damage(self.name, stat, candidate)


def _runs_alone(model, x1: torch.Tensor) -> bool:
    """Whether the model takes one sample at a time (an exported model may fix its batch size)."""
    try:
        with torch.no_grad():
            forward(model, x1)
    except AnalysisError:
        return False
    return True


def _sampled_loss(logits: torch.Tensor, kind: str, gen: torch.Generator, part: int) -> torch.Tensor:
    """Σ over this sample's rows of a loss whose gradient in the logits, summed over the `parts` of
    a draw, has covariance H (labels and signs drawn on the CPU, so a seed gives the same draws on
    every device). "kl": part 0 is each row's most likely label t weighted by √p_t, part 1 a label
    drawn from the rest of its softmax weighted by √(1 − p_t), each row with a random sign (module
    docstring)."""
    if kind == "mse":
        u = torch.randint(0, 2, logits.shape, generator=gen).to(logits).mul_(2).sub_(1)
        return (logits * u).sum()
    labels, weights = _split_labels(logits, gen, part)
    signs = torch.randint(0, 2, (logits.shape[0],), generator=gen, dtype=torch.float64).mul_(2).sub_(1)
    per_row = F.cross_entropy(logits, labels.to(logits.device), reduction="none")
    return (per_row * (signs * weights).to(per_row)).sum()


def _split_labels(logits: torch.Tensor, gen: torch.Generator, part: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Part 0: (argmax, √p_top) per row; part 1: (a label drawn ∝ p among the others, √(their mass)),
    in float64 a few rows at a time (as sample_labels)."""
    step = max(1, LABEL_CHUNK_ELEMENTS // max(1, logits.shape[-1]))
    labels, weights = [], []
    with torch.no_grad():
        for lo in range(0, logits.shape[0], step):
            probs = torch.softmax(logits[lo : lo + step].detach().to(torch.float64), dim=-1).cpu()
            top, at = probs.max(dim=-1)
            if part == 0:
                labels.append(at)
                weights.append(top.sqrt())
                continue
            rest = probs.scatter(1, at[:, None], 0.0)
            mass = rest.sum(dim=-1)
            certain = mass <= 0  # nothing else has probability: weight 0, any label
            rest[certain] = 1.0
            labels.append(torch.multinomial(rest, 1, generator=gen).squeeze(1))
            weights.append(mass.sqrt())
    return torch.cat(labels), torch.cat(weights)


def _perturbations(ctx: MetricContext) -> list[_Deltas | _CodedDeltas]:
    """Per layer, (candidates, weights) of Q_c(W) − W flattened in the Parameter's layout, rounded
    exactly as the analysis rounds (LayerInfo.quantize); int8-coded when the stack is large."""
    total = sum(w.numel() for _, w in ctx.layers) * len(ctx.candidates) * 4
    store = _Deltas if total <= DELTA_FLOAT32_BYTES else _CodedDeltas
    out = []
    for info, weight in ctx.layers:
        w = weight.detach().to(torch.float32)
        # one candidate's ΔW at a time: SmolLM2's embedding's all at once were 790 MB in float32
        rows = ((info.quantize(q, w) - w).reshape(-1) for q in ctx.candidates)
        out.append(store(w.numel(), len(ctx.candidates), rows, device=w.device))
    return out


class _Deltas:
    """Every candidate's ΔW of one layer in float32: `matvec(g)` = (⟨g, ΔW_c⟩ for each c)."""

    kind = "float32"

    def __init__(self, weights: int, candidates: int, rows: Iterable[torch.Tensor], *, device: torch.device):
        self.values = torch.stack(list(rows))
        self.nbytes = self.values.numel() * 4
        self.candidates = candidates

    def matvec(self, g: torch.Tensor) -> torch.Tensor:
        return self.values @ g


class _CodedDeltas:
    """Every candidate's ΔW of one layer as int8 codes × one float32 scale per CODE_BLOCK weights
    (absmax / 127), widened a slice at a time for the product (no fast int8 or bfloat16
    matrix-vector product on CPUs)."""

    kind = "int8_blocks"

    def __init__(self, weights: int, candidates: int, rows: Iterable[torch.Tensor], *, device: torch.device):
        """`rows`: each candidate's ΔW (`weights` values), coded as it comes, a slice at a time."""
        self.weights = weights
        self.candidates = candidates
        blocks = -(-weights // CODE_BLOCK)
        self.codes = torch.empty(candidates, blocks, CODE_BLOCK, dtype=torch.int8, device=device)
        self.scales = torch.empty(candidates, blocks, 1, dtype=torch.float32, device=device)
        step = max(1, CODING_ELEMENTS // CODE_BLOCK)
        for c, delta in enumerate(rows):
            padded = F.pad(delta, (0, blocks * CODE_BLOCK - weights)).view(blocks, CODE_BLOCK)
            for lo in range(0, blocks, step):
                part = padded[lo : lo + step]
                scale = part.abs().amax(dim=1, keepdim=True) / 127
                self.scales[c, lo : lo + step] = scale
                codes = torch.round(part / scale.clamp_min(torch.finfo(torch.float32).tiny)).clamp_(-127, 127)
                self.codes[c, lo : lo + step] = codes
        self.nbytes = self.codes.numel() + self.scales.numel() * 4

    def matvec(self, g: torch.Tensor) -> torch.Tensor:
        """`g` read in slices as it is, not a padded copy (SmolLM2's embedding gradient: 113 MB);
        the last slice's padding codes are cut off instead."""
        blocks, block = self.codes.shape[1], self.codes.shape[2]
        step = max(1, WIDEN_ELEMENTS // block)
        out = torch.zeros(self.candidates, dtype=torch.float32, device=g.device)
        for lo in range(0, blocks, step):
            part = g[lo * block : (lo + step) * block]
            wide = self.codes[:, lo : lo + step].to(torch.float32).mul_(self.scales[:, lo : lo + step])
            out += wide.reshape(self.candidates, -1)[:, : part.numel()] @ part
        return out


class _InnerProducts:
    """⟨∂loss/∂W, ΔW_c⟩ for every layer and candidate, taken from each weight's gradient as soon
    as the backward has accumulated it, which is then freed (so no copy of all gradients is held)."""

    def __init__(self, params, deltas):
        self.params = params
        self.deltas = deltas
        self.values: list[torch.Tensor | None] = [None] * len(params)
        self.uses: dict[int, list[int]] = {}
        for i, p in enumerate(params):
            self.uses.setdefault(id(p), []).append(i)

    def reset(self) -> None:
        self.values = [None] * len(self.params)

    def take(self) -> list[torch.Tensor]:
        zero = torch.zeros(self.deltas[0].candidates, dtype=torch.float64)
        return [zero if v is None else v for v in self.values]

    def _on_grad(self, p: torch.Tensor) -> None:
        g = p.grad.reshape(-1).to(torch.float32)
        for i in self.uses[id(p)]:
            self.values[i] = self.deltas[i].matvec(g).to(torch.float64).cpu()
        p.grad = None

    def hooked(self):
        from contextlib import ExitStack

        stack = ExitStack()
        for indices in self.uses.values():
            p = self.params[indices[0]]
            p.grad = None
            stack.callback(p.register_post_accumulate_grad_hook(self._on_grad).remove)
        return stack
