"""Speed, probe counts and memory of the sensitivity metrics on real (small) trained networks.

    .venv/bin/python bench/sensitivity.py [--labels] [--threads N] [--device cpu|cuda]

Models: the digits MLP (64-128-64-10) and CNN (conv 16, conv 32, linear head) of workers/digits.py,
and a wider MLP (64-512-512-256-10, ~430k weights) trained here on the same digits. Calibration:
256 training images; label-free (KL to the float model's outputs) unless --labels.

Printed per model:
- probe / fwd+bwd: seconds of one Hutchinson probe over all layers (16 probes share one batched
  double backward) divided by one forward + backward of the calibration loss; for
  is_grads_batched (what the metric uses) with the gradient graph rebuilt each call (several
  calibration batches) and reused (one batch, the metric caches it), and for torch.func vmap over
  jvp(grad) (the alternative, which needs a functional model). Target ≤ 3.
- probes to a 10% CI on every layer (adaptive, with and without dropping converged layers) and
  as a ratio to NNCF's fixed 200 Hutchinson iterations (< 1: fewer probes than NNCF spends).
- per metric: seconds for the whole analysis (measure + damage table), peak resident memory
  above the start of the run (sampled every 2 ms: torch's CPU tensors bypass tracemalloc, so
  tracemalloc would miss them), CUDA max_memory_allocated on CUDA, and Spearman rank correlation
  of its damage with measured loss_delta over layer × candidate (how well the proxy ranks).
Bounded to a few minutes on two busy cores.
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


# ------------------------------------------------------------------------------------------ main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", action="store_true", help="cross-entropy on the digit labels")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        models, x, y = digits_models(Path(tmp))
    candidates = parse_candidates(CANDIDATES)
    print(f"bitplan sensitivity bench · torch {torch.__version__} · {device} · {torch.get_num_threads()} thread(s)")
    print(f"calibration: {x.shape[0]} digits, loss {'cross-entropy' if args.labels else 'label-free KL'};"
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

        for shrink in (True, False):
            metric = get_metric("hutchinson", {"shrink": shrink})
            t0 = time.perf_counter()
            stats = metric.measure(_ctx(model, layers, calibration, candidates))
            seconds = time.perf_counter() - t0
            used = max(s.samples for s in stats)
            per_layer = " ".join(f"{info.name}={s.samples}" for (info, _), s in zip(layers, stats, strict=True))
            print(f"hutchinson to 10% CI, {'dropping converged layers' if shrink else 'all layers every probe '}:"
                  f" {used} probes (ratio to NNCF's {NNCF_ITERATIONS}: {used / NNCF_ITERATIONS:.2f}),"
                  f" all converged {all(s.converged for s in stats)}, {seconds:.1f} s; per layer {per_layer}")
            if not shrink:  # the CI shrinks as 1/√k: what NNCF's fixed budget would have reached
                at_nncf = max(s.ci_halfwidth / abs(s.mean) * (s.samples / NNCF_ITERATIONS) ** 0.5 for s in stats)
                print(f"  (with {NNCF_ITERATIONS} probes the worst layer's relative 95% CI would be ≈ {at_nncf:.0%})")

        tables = {}
        rows = []
        for name in ["loss_delta", *[n for n in metric_names() if n != "loss_delta"]]:
            with PeakRss() as mem:
                t0 = time.perf_counter()
                table = analyse(model, calibration, candidates, get_metric(name), seed=0)
                seconds = time.perf_counter() - t0
            tables[name] = [c.raw_damage for row in table.layers for c in row.candidates]
            cuda = f", CUDA peak {mem.cuda / 2**20:.0f} MiB" if mem.cuda is not None else ""
            rows.append((name, seconds, mem.extra_mib, cuda, table))
        for name, seconds, extra, cuda, table in rows:
            rho = spearman(tables[name], tables["loss_delta"])
            stat = " ".join(f"{r.mean:.3g}" for r in table.layers)
            print(f"  {name:<10} {seconds:6.2f} s  peak RSS +{extra:6.1f} MiB{cuda}  Spearman vs loss_delta"
                  f" {rho:5.2f}  {table.statistic}: {stat}")
        model.cpu()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(f"\nprocess max RSS {usage.ru_maxrss / 1024:.0f} MiB; total {time.perf_counter() - started:.0f} s")


def _ctx(model, layers, calibration, candidates):
    from workers.metrics import MetricContext

    return MetricContext(model, layers, calibration, candidates, seed=0)


if __name__ == "__main__":
    main()
