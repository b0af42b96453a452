"""Speed, probe counts and memory of the sensitivity metrics: small trained nets and real pretrained models.

    .venv/bin/python bench/sensitivity.py [--models digits,smollm2,efficientnet] [--tables DIR]
        [--labels] [--threads N] [--device cpu|cuda]

Digits models (workers/digits.py): the MLP (64-128-64-10), the CNN (conv 16, conv 32, linear head)
and a wider MLP (64-512-512-256-10, ~430k weights) trained here. Calibration: 256 training images;
label-free (KL to the float model's outputs) unless --labels. Printed per model:
- probe / fwd+bwd: seconds of one Hutchinson probe over all layers (16 probes share one batched
  double backward) divided by one forward + backward of the calibration loss; for
  is_grads_batched (what the metric uses) with the gradient graph rebuilt each call and reused,
  and for torch.func vmap over jvp(grad). Target ≤ 3.
- probes of Hutchinson's default rule (stop on the decision) beside the older rule (10% CI on
  every layer, with and without dropping converged layers), the ratio (target ≥ 5×), whether the
  two give the same plan at 4, 3 and 2.5 average bits, and the plan confidence.
- decided at the budgets asked (`decide_at` 4, 3, 2.5 where reachable; decision_rows): probes,
  seconds and per-budget confidence against the 10% CI rule's probes, ratio and same plan there.
- per metric: seconds for the whole analysis, peak resident memory above the start of the run
  (sampled every 2 ms: torch's CPU tensors bypass tracemalloc), CUDA max_memory_allocated on CUDA,
  and Spearman rank correlation of its damage with measured loss_delta over layer × candidate.

Real models (bench/real_models.py: SmolLM2-135M, Q4_1-dequantized GGUF, as an "hf" directory with
text calibration; EfficientNet-Lite0 as a .pt2 with 128 calibration crops), analysed exactly as a
user's job is (`workers.jobs.run_analysis_job`, default options, default metric). Printed: wall
time (targets: LM ≤ 10 min, CNN ≤ 5 min on 2 cores; the CPU is shared while this runs, so they are
pessimistic), probes and the stopping record (rule, reason, plan confidence), warnings, peak RSS
of the whole job (model load included) against 4 × the fp32 weights + one calibration batch's
activations (the tensors autograd saves in one forward at the batch size the analysis used),
and the probes the 10% CI rule would need, extrapolated from each layer's CI at the stop
(CI ∝ 1/√k), as a ratio to the probes spent. `--tables DIR` keeps the tables for bench/quality.py.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from workers.analysis import analyse  # noqa: E402
from workers.data import Calibration  # noqa: E402
from workers.metrics import get_metric, metric_names  # noqa: E402
from workers.metrics._common import grad_only_for  # noqa: E402
from workers.metrics._loss import CalibrationLoss  # noqa: E402
from workers.models import find_layers  # noqa: E402
from workers.quantizers import parse_candidates  # noqa: E402

CANDIDATES = ["int2", "int3", "int4", "int8", "int4_tensor", "int4_asym"]
NNCF_ITERATIONS = 200
PROBE_BATCH = 16


# ------------------------------------------------------------------------------------------ models
def digits_models(out: Path) -> tuple[list[tuple[str, nn.Module, float | None, tuple[int, ...]]], torch.Tensor, torch.Tensor]:
    """(title, trained model, test accuracy, input shape) per model, and 256 calibration images."""
    from workers.architectures import build_model
    from workers.digits import digits_arrays, train_digits
    from workers.models import load_model

    x_tr, y_tr, _, _ = digits_arrays(0)
    models = []
    for arch in ("mlp", "cnn"):
        d = train_digits(out / arch, architecture=arch)
        model = load_model(
            {"format": "safetensors", "path": str(d.weights_path), "architecture": arch, "hyperparams": d.hyperparams}
        )
        models.append((f"digits {arch}", model, d.accuracy, (-1, 64) if arch == "mlp" else (-1, 1, 8, 8)))
    torch.manual_seed(0)
    wide = build_model("mlp", {"in_features": 64, "hidden": [512, 512, 256], "out_features": 10, "activation": "relu"})
    x, y = torch.from_numpy(x_tr), torch.from_numpy(y_tr)
    opt = torch.optim.Adam(wide.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(15):
        wide.train()
        for idx in torch.randperm(len(x), generator=gen).split(64):
            opt.zero_grad()
            F.cross_entropy(wide(x[idx]), y[idx]).backward()
            opt.step()
    models.append(("wide mlp", wide.eval(), None, (-1, 64)))
    return models, torch.from_numpy(x_tr[:256]), torch.from_numpy(y_tr[:256])


# ------------------------------------------------------------------------------------------ timing
def median_seconds(fn, repeat: int = 15) -> float:
    fn()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def probe_ratios(model: nn.Module, calibration: Calibration) -> tuple[float, float, float, float]:
    """(fwd+bwd seconds, then per probe / fwd+bwd: batched with the graph rebuilt, batched with
    the graph reused (the metric's path when the calibration set is one batch), vmap)."""
    from torch.func import functional_call, grad, jvp, vmap

    params = [p for _, p in find_layers(model)]
    with grad_only_for(model, params):
        loss = CalibrationLoss(model, calibration)

        def fwd_bwd():
            torch.autograd.grad(sum(loss.batch_losses()), params)

        gen = torch.Generator().manual_seed(0)
        probes = [(torch.randint(0, 2, (PROBE_BATCH, *p.shape), generator=gen) * 2 - 1).to(p) for p in params]

        def batched():
            g = torch.autograd.grad(sum(loss.batch_losses()), params, create_graph=True)
            torch.autograd.grad(g, params, grad_outputs=probes, is_grads_batched=True)

        kept = torch.autograd.grad(sum(loss.batch_losses()), params, create_graph=True)

        def reused():
            torch.autograd.grad(kept, params, grad_outputs=probes, is_grads_batched=True, retain_graph=True)

        names = {id(p): n for n, p in model.named_parameters()}
        keys = [names[id(p)] for p in params]
        weights = tuple(p.detach() for p in params)
        (x, y), = calibration.batches()  # the bench uses one calibration batch
        x = x.to(params[0].device)

        def total(ws):  # the same loss as CalibrationLoss, written functionally for torch.func
            out = functional_call(model, dict(zip(keys, ws, strict=True)), (x,))
            logits = out.reshape(-1, out.shape[-1])
            if not loss.label_free:
                return F.cross_entropy(logits, y.to(x.device), reduction="sum") / loss.rows
            log_p = torch.log_softmax(logits, dim=-1)
            return F.kl_div(log_p, loss.reference(0), reduction="sum", log_target=True) / loss.rows

        def hvp(*v):
            return jvp(grad(total), (weights,), (v,))[1]

        def vmapped():
            vmap(hvp)(*probes)

        fb = median_seconds(fwd_bwd)
        per_probe = [median_seconds(f) / PROBE_BATCH / fb for f in (batched, reused, vmapped)]
        return (fb, *per_probe)


# ------------------------------------------------------------------------------------------ memory
class PeakRss:
    """Peak resident set size above the level at entry, sampled on a thread every 2 ms."""

    def __enter__(self):
        _trim()  # hand freed heap back first, or an earlier run's pages would hide this one's peak
        self.base = self.peak = _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        return self

    def _watch(self):
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())
        self.cuda = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None

    @property
    def extra_mib(self) -> float:
        return (self.peak - self.base) / 2**20


def _trim() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def spearman(a: list[float], b: list[float]) -> float:
    def ranks(v):
        v = np.asarray(v, dtype=float)
        order = v.argsort(kind="stable")
        r = np.empty(len(v))
        r[order] = np.arange(len(v))
        for value in np.unique(v):  # ties share their average rank
            r[v == value] = r[v == value].mean()
        return r

    ra, rb = ranks(a), ranks(b)
    return float(np.corrcoef(ra, rb)[0, 1])


# ------------------------------------------------------------------------------------------ plans
BUDGET_BITS = (4.0, 3.0, 2.5)


def plans_at(table, bits=BUDGET_BITS) -> dict[float, dict[str, str]]:
    """The exact plan at each average-bits budget (bytes = bits · weights / 8, scales included)."""
    from solver import Budget, solve
    from solver.errors import InfeasibleBudget

    problem = table.to_problem()
    out = {}
    for b in bits:
        try:
            out[b] = dict(solve(problem, [Budget("bytes", b * problem.total_weights / 8)]).assignment)
        except InfeasibleBudget:
            out[b] = {}
    return out


def plan_differences(a: dict[float, dict[str, str]], b: dict[float, dict[str, str]]) -> str:
    parts = []
    for bits in a:
        diff = sum(1 for u in a[bits] if b[bits].get(u) != a[bits][u])
        parts.append(f"{bits:g}b: {'same' if diff == 0 else f'{diff} units differ'}")
    return ", ".join(parts)


def stopping_line(table) -> str:
    stop = (table.provenance or {}).get("stopping") or {}
    conf = stop.get("confidence")
    conf_text = f"{conf:.0%}" if isinstance(conf, int | float) else "—"
    return (f"rule {stop.get('rule', 'ci (no stopping record)')}, reason {stop.get('reason', '—')},"
            f" probes {stop.get('probes', max((r.samples or 0) for r in table.layers))}, plan confidence {conf_text}")


def ci_probes_needed(table, tolerance: float = 0.1) -> float:
    """Probes every layer would need for a `tolerance` relative 95% CI, from its CI now (∝ 1/√k)."""
    need = 0.0
    for r in table.layers:
        if r.samples and r.ci_halfwidth is not None and r.mean:
            rel = r.ci_halfwidth / abs(r.mean)
            need = max(need, r.samples * (rel / tolerance) ** 2)
    return need


def decision_rows(model, calibration, candidates, loss: dict, ci_table, bits=BUDGET_BITS) -> None:
    """Probes to a plan decided at the budgets asked (`decide_at`) against probes to a 10% CI on every
    layer (`ci_table`, already run), and whether both give the same plan there. Budgets outside what
    the candidates reach are left out (and said so)."""
    problem = ci_table.to_problem()
    lo = sum(min(o.costs["bytes"] for o in u.options) for u in problem.units) * 8 / problem.total_weights
    hi = sum(max(o.costs["bytes"] for o in u.options) for u in problem.units) * 8 / problem.total_weights
    asked = [b for b in bits if lo <= b <= hi]
    skipped = [b for b in bits if b not in asked]
    if not asked:
        print(f"  decide_at: none of {bits} average bits is reachable ({lo:.2f}–{hi:.2f})")
        return
    t0 = time.perf_counter()
    table = analyse(model, calibration, candidates, get_metric("hutchinson", {"decide_at": asked, **loss}), seed=0)
    seconds = time.perf_counter() - t0
    probes = max(r.samples or 0 for r in table.layers)
    ci_probes = max(r.samples or 0 for r in ci_table.layers)
    per_budget = (table.provenance.get("stopping") or {}).get("confidence_per_budget") or {}
    confs = ", ".join(f"{float(k):g}b {v:.0%}" for k, v in per_budget.items())
    note = f" ({', '.join(f'{b:g}' for b in skipped)} b unreachable: {lo:.2f}–{hi:.2f})" if skipped else ""
    print(f"  decided at the budgets asked (decide_at {', '.join(f'{b:g}' for b in asked)}){note}: {probes} probes,"
          f" {seconds:.1f} s, confidence {confs}; 10% CI on every layer: {ci_probes} probes;"
          f" ratio [target ≥ 5×] {ci_probes / max(probes, 1):.1f}×; plans: "
          + plan_differences(plans_at(ci_table, asked), plans_at(table, asked)))


# ------------------------------------------------------------------------------------------ digits
def digits_section(args, device) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        models, x, y = digits_models(Path(tmp))
    candidates = parse_candidates(CANDIDATES)
    print(f"\n## digits models · calibration: {x.shape[0]} digits, loss {'cross-entropy' if args.labels else 'label-free KL'};"
          f" candidates {', '.join(CANDIDATES)}")
    for title, model, accuracy, shape in models:
        calibration = Calibration(x.reshape(shape), y if args.labels else None, batch_size=256)
        model = model.to(device)
        layers = find_layers(model)
        shapes = ", ".join(f"{info.name} {info.parameters}" for info, _ in layers)
        acc = f", test accuracy {accuracy:.3f}" if accuracy is not None else ""
        print(f"\n== {title}: {sum(i.parameters for i, _ in layers):,} weights ({shapes}){acc}")

        fb, batched, reused, vmapped = probe_ratios(model, calibration)
        print(f"one fwd+bwd {fb * 1e3:.2f} ms; one probe / fwd+bwd [target ≤ 3]: is_grads_batched (used)"
              f" {batched:.2f} with the graph rebuilt per 16 probes, {reused:.2f} reused (one calibration batch);"
              f" torch.func vmap(jvp(grad)) {vmapped:.2f}")

        runs = {}
        loss = {"loss": "cross_entropy"} if args.labels else {}
        for label, options in (("decision (default)", {}), ("10% CI, dropping converged", {"stop": "ci"}),
                               ("10% CI, all layers every probe", {"stop": "ci", "shrink": False})):
            t0 = time.perf_counter()
            table = analyse(model, calibration, candidates, get_metric("hutchinson", {**options, **loss}), seed=0)
            seconds = time.perf_counter() - t0
            probes = max(r.samples or 0 for r in table.layers)
            runs[label] = (table, probes)
            per_layer = " ".join(f"{r.name}={r.samples}" for r in table.layers)
            print(f"hutchinson {label}: {probes} probes (ratio to NNCF's {NNCF_ITERATIONS}: {probes / NNCF_ITERATIONS:.2f}),"
                  f" {seconds:.1f} s; {stopping_line(table)}; per layer {per_layer}")
        decided, ci = runs["decision (default)"], runs["10% CI, dropping converged"]
        print(f"  probes, 10% CI rule / decision rule [target ≥ 5×]: {ci[1] / max(decided[1], 1):.1f}×;"
              f" plans: {plan_differences(plans_at(ci[0]), plans_at(decided[0]))}")
        decision_rows(model, calibration, candidates, loss, ci[0])

        tables = {}
        rows = []
        for name in ["loss_delta", *[n for n in metric_names() if n != "loss_delta"]]:
            with PeakRss() as mem:
                t0 = time.perf_counter()
                table = analyse(model, calibration, candidates, get_metric(name, loss if name != "mse" else {}), seed=0)
                seconds = time.perf_counter() - t0
            tables[name] = [c.raw_damage for row in table.layers for c in row.candidates]
            cuda = f", CUDA peak {mem.cuda / 2**20:.0f} MiB" if mem.cuda is not None else ""
            rows.append((name, seconds, mem.extra_mib, cuda, table))
        for name, seconds, extra, cuda, table in rows:
            rho = spearman(tables[name], tables["loss_delta"])
            stat = " ".join(f"{r.mean:.3g}" for r in table.layers)
            print(f"  {name:<12} {seconds:6.2f} s  peak RSS +{extra:6.1f} MiB{cuda}  Spearman vs loss_delta"
                  f" {rho:5.2f}  {table.statistic}: {stat}")
        for name in ("gauss_newton", "sampled_gauss_newton"):
            metric_cost(model, calibration, CANDIDATES, metric_name=name, title=title, options=loss, repeat=1)
        model.cpu()


# ------------------------------------------------------------------------------------------ real models
def activation_bytes(model: nn.Module, batch: torch.Tensor) -> int:
    """Bytes of the tensors autograd saves in one forward of `batch` (what a backward keeps alive)."""
    seen: dict[tuple, int] = {}

    def pack(t):
        try:
            key = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
            seen[key] = t.untyped_storage().nbytes()
        except RuntimeError:
            pass
        return t

    params = [p for _, p in find_layers(model)]
    with grad_only_for(model, params), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(batch)
        del out
    weights = {(p.untyped_storage().data_ptr(), p.untyped_storage().nbytes()) for p in model.parameters()}
    return sum(v for k, v in seen.items() if k not in weights)


def real_section(key: str, args) -> None:
    from bench import real_models
    from workers.data import load_calibration
    from workers.jobs import run_analysis_job
    from workers.models import load_model
    from workers.table import SensitivityTable

    prep = {"smollm2": real_models.prepare_smollm2, "efficientnet": real_models.prepare_efficientnet}[key]()
    print(f"\n== {prep.title}")
    for note in prep.notes:
        print(f"   {note}")
    request = {"model": prep.source, "dataset_path": prep.calibration_path, "options": {}}
    messages: list[str] = []
    with PeakRss() as mem:
        t0 = time.perf_counter()
        result = run_analysis_job(request, lambda f, m: messages.append(m))
        seconds = time.perf_counter() - t0
    table = SensitivityTable.from_dict(result)
    if args.tables is not None:
        args.tables.mkdir(parents=True, exist_ok=True)
        result["bench_commit"] = _commit()
        result["bench_request"] = request
        (args.tables / f"{key}-{table.metric}.json").write_text(__import__("json").dumps(result))
    prov = table.provenance or {}
    # a metric that forwards fewer samples at once than the batches it reads says so (sampled_gauss_newton: 1)
    used = (prov.get("metric_run") or {}).get("forward_batch") or (prov.get("batch_size") or {}).get("used") or 1
    model = load_model(prep.source)
    tokenizer = None
    if prep.source["format"] == "hf":
        from workers.hf import load_tokenizer

        tokenizer = load_tokenizer(prep.source["path"])
    cal = load_calibration(prep.calibration_path, batch_size=used, token_ids=prep.source["format"] == "hf",
                           tokenizer=tokenizer, causal_lm=bool(getattr(model, "bitplan_causal_lm", False)))
    first = next(cal.batches())[0]
    acts = activation_bytes(model, first)
    target = 4 * prep.fp32_weight_bytes + acts
    probes = max(r.samples or 0 for r in table.layers)
    converged = sum(1 for r in table.layers if r.converged)
    timings = result.get("timings") or {}
    print(f"   metric {table.metric} (default), loss {table.loss}, {len(table.layers)} layers,"
          f" {table.calibration_samples} calibration samples, batch size {prov.get('batch_size')}")
    print(f"   wall {seconds:.0f} s [target {'≤ 10 min' if key == 'smollm2' else '≤ 5 min'}; shared CPU, load"
          f" {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores at the end]; phases "
          + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
    kinds = sorted({w.get('kind', w.get('code', '?')) for w in table.warnings})
    if table.metric == "hutchinson":
        print(f"   {stopping_line(table)}; {converged} of {len(table.layers)} layers settled;"
              f" warnings {len(table.warnings)} {kinds}")
    else:  # a probe-free metric: no stopping rule, its pass is in the provenance
        print(f"   pass {prov.get('metric_run')}; warnings {len(table.warnings)} {kinds}")
    need = ci_probes_needed(table) if table.metric == "hutchinson" else 0
    if need:
        print(f"   10% CI on every layer would need ≈ {need:,.0f} probes (from each layer's CI at the stop):"
              f" {need / max(probes, 1):.1f}× the {probes} spent [target ≥ 5×]")
    memory = {k: v for k, v in prov.items() if "memory" in k or "peak" in k}
    print(f"   peak RSS of the job {mem.peak / 2**20:,.0f} MiB (+{mem.extra_mib:,.0f} MiB above its start);"
          f" target 4 × fp32 weights ({prep.fp32_weight_bytes / 2**20:,.0f} MiB) + one batch's activations"
          f" ({acts / 2**20:,.0f} MiB at batch {first.shape[0]}) = {target / 2**20:,.0f} MiB:"
          f" ratio {mem.extra_mib * 2**20 / target:.2f} [target ≤ 1]" + (f"; provenance {memory}" if memory else ""))
    if messages:
        print(f"   last progress message: {messages[-1]}")


def _commit() -> str:
    import subprocess

    out = subprocess.run(["git", "-C", str(Path(__file__).resolve().parents[1]), "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True)
    return out.stdout.strip()


# ------------------------------------------------- cost of the exact quadratic forms (issue 11)
def metric_cost(model: nn.Module, calibration: Calibration, candidates: list[str], *, metric_name: str = "gauss_newton",
                title: str = "", options: dict | None = None, repeat: int = 3) -> dict[str, float]:
    """Seconds of a metric's measure (gauss_newton, sampled_gauss_newton) against one forward + backward
    of the calibration loss over the same batches, printed side by side. Target (issue 11): ≤ 1
    forward+backward per candidate per batch: `per_layer_candidate` ≤ 1 (a pass per layer × candidate,
    gauss_newton's shape), `per_candidate` ≤ 1 (the whole model's layers at once, the stricter reading
    and sampled_gauss_newton's shape). Self-contained: any model, any data."""
    from workers.metrics import MetricContext

    layers = find_layers(model)
    quantizers = parse_candidates(candidates)
    params = [w for _, w in layers]
    with grad_only_for(model, params):
        loss = CalibrationLoss(model, calibration)

        def fwd_bwd() -> None:
            for value in loss.batch_losses():
                torch.autograd.grad(value, params, allow_unused=True)

        fb = median_seconds(fwd_bwd, repeat=repeat)
    metric = get_metric(metric_name, options or {})
    ctx = MetricContext(model=model, layers=layers, calibration=calibration, candidates=quantizers, seed=0)
    gn = median_seconds(lambda: metric.measure(ctx), repeat=max(1, repeat // 2))
    n_layers, n_cands = len(layers), len(quantizers)
    out = {
        "measure_s": gn,
        "fwd_bwd_s": fb,
        "per_layer_candidate": gn / (fb * n_layers * n_cands),
        "per_candidate": gn / (fb * n_cands),
    }
    print(f"  {title or type(model).__name__}: {metric_name} measure {gn:.3f} s, fwd+bwd {fb:.4f} s over"
          f" {len(calibration)} batch(es); {n_layers} layers × {n_cands} candidates →"
          f" {out['per_layer_candidate']:.2f} fwd+bwd per layer × candidate per batch (target ≤ 1),"
          f" {out['per_candidate']:.2f} per candidate (whole model)", flush=True)
    return out


# ------------------------------------------------------------------------------------------ main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="digits,smollm2,efficientnet")
    parser.add_argument("--tables", type=Path, default=None, help="write the real models' tables here (for quality.py)")
    parser.add_argument("--labels", action="store_true", help="cross-entropy on the digit labels")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    started = time.perf_counter()
    print(f"bitplan sensitivity bench · commit {_commit()} · torch {torch.__version__} · {device} ·"
          f" {torch.get_num_threads()} thread(s) · load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores at start")
    for key in args.models.split(","):
        if key == "digits":
            digits_section(args, device)
        else:
            try:
                real_section(key, args)
            except ImportError as exc:
                print(f"\n== {key}: skipped ({exc})")
        sys.stdout.flush()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(f"\nprocess max RSS {usage.ru_maxrss / 1024:.0f} MiB; total {time.perf_counter() - started:.0f} s")


def _ctx(model, layers, calibration, candidates):
    from workers.metrics import MetricContext

    return MetricContext(model, layers, calibration, candidates, seed=0)


if __name__ == "__main__":
    main()
