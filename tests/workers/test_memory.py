"""Memory budgeting: batch sizes from the free memory, real allocator failures lower the batch."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from workers.errors import AnalysisError
from workers.memory import SAFETY, PassCost, choose_batches, free_memory, is_allocator_failure

ROOT = Path(__file__).resolve().parents[2]


def _cost(**terms) -> PassCost:
    base = dict(constant=100e6, per_sample=10e6, per_probe=20e6, per_sample_probe=2e6, reference_per_sample=0.0)
    base.update(terms)
    return PassCost(measured=(), **base)


def test_the_chosen_batches_fit_the_free_memory_and_a_larger_batch_would_not():
    cost = _cost()
    free = 1_000_000_000
    plan = choose_batches(cost, free, samples=128, batch_cap=256, probe_cap=16)
    assert plan.fits
    assert plan.estimated_bytes <= SAFETY * free
    assert plan.batch_size < 128  # the whole set does not fit at any probe batch
    assert cost.need(plan.batch_size + 1, plan.probe_batch, 128) > SAFETY * free


def test_plenty_of_memory_keeps_the_whole_set_in_one_batch_at_the_probe_cap():
    plan = choose_batches(_cost(), 10**12, samples=128, batch_cap=256, probe_cap=16)
    assert (plan.batch_size, plan.probe_batch, plan.fits) == (128, 16, True)
    assert choose_batches(_cost(), None, samples=500, batch_cap=256, probe_cap=16).batch_size == 256


def test_static_batch_is_kept_and_only_the_probe_batch_moves():
    cost = _cost(per_sample_probe=50e6)
    plan = choose_batches(cost, 1_000_000_000, samples=128, batch_cap=256, probe_cap=16, static_batch=4)
    assert plan.batch_size == 4
    assert plan.probe_batch < 16
    assert cost.need(4, plan.probe_batch * 2, 128) > SAFETY * 1_000_000_000


def test_nothing_fits_gives_the_smallest_pair_marked_as_not_fitting():
    plan = choose_batches(_cost(constant=10e9), 1_000_000_000, samples=64, batch_cap=64, probe_cap=8)
    assert (plan.batch_size, plan.probe_batch, plan.fits) == (1, 1, False)


def test_free_memory_on_the_cpu_names_its_bounds():
    free, bounds = free_memory(torch.device("cpu"))
    assert "mem_available" in bounds
    assert free == min(bounds.values()) > 0


def test_real_allocator_failures_are_recognised():
    with pytest.raises(RuntimeError) as cpu:
        torch.empty(2**62, dtype=torch.uint8)  # the CPU allocator refuses 4 EiB
    assert is_allocator_failure(cpu.value)
    wrapped = AnalysisError("model forward failed")
    wrapped.__cause__ = cpu.value
    assert is_allocator_failure(wrapped)
    assert is_allocator_failure(MemoryError())
    assert is_allocator_failure(torch.OutOfMemoryError("CUDA out of memory"))
    assert not is_allocator_failure(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))


_CHILD = r"""
import json, resource, sys, torch
from torch import nn
torch.set_num_threads(1)
from workers.analysis import analyse
from workers.data import Calibration
from workers.memory import _status
from workers.metrics import get_metric
from workers.quantizers import parse_candidates

torch.manual_seed(0)
# 256 KiB of activation per sample: 64 samples x 16 probes of double backward need ~0.7 GiB.
model = nn.Sequential(nn.Linear(6, 65536), nn.Tanh(), nn.Linear(65536, 4)).eval()
x = torch.randn(64, 6)
limit = _status()["VmSize"] + 400 * 2**20
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
metric = get_metric("hutchinson", {"min_probes": 16, "max_probes": 16, "probe_batch": 16})
table = analyse(model, Calibration(x, None, batch_size=64), parse_candidates(["int4"]), metric,
                plan_memory=sys.argv[1] == "plan")
p = table.provenance
print(json.dumps({"batch": p["batch_size"], "probe": p["probe_batch"], "memory": p["memory"],
                  "samples": [row.samples for row in table.layers]}))
"""


def _run_tight(mode: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", _CHILD, mode], capture_output=True, text=True, timeout=300,
                          cwd=ROOT, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_real_cpu_allocator_failure_lowers_the_batch_instead_of_failing():
    """Under a 400 MiB address-space allowance, without planning, 64 × 16 fails in the CPU allocator;
    the analysis halves and finishes."""
    out = _run_tight("no-plan")
    backoffs = out["memory"]["backoffs"]
    assert backoffs[0] == "out of memory at batch size 64 on cpu; retrying with 32"
    assert out["batch"]["used"] * out["probe"]["used"] < 64 * 16
    assert len(out["samples"]) == 2  # the analysis finished: every layer measured


def test_planning_under_an_address_space_limit_sizes_the_batches_to_it():
    out = _run_tight("plan")
    memory = out["memory"]
    assert "rlimit_as" in memory["free_bounds"]
    assert memory["free_bytes"] == memory["free_bounds"]["rlimit_as"] < 400 * 2**20
    assert memory["plan"]["fits"]
    assert out["batch"]["used"] * out["probe"]["used"] < 64 * 16
    assert memory["plan"]["estimated_bytes"] <= SAFETY * memory["free_bytes"]
    assert memory["peak_rss_bytes"] > 0
    assert len(out["samples"]) == 2  # the analysis finished: every layer measured


def test_planning_measures_four_passes_at_batch_and_probe_batch_at_most_two():
    """No doubling (issue 10): whatever the caps, the pass runs at b, p ∈ {1, 2} only, and the fit
    never lies below a measured point."""
    from torch import nn

    from workers.data import Calibration
    from workers.memory import measure_pass_cost

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 32), nn.Tanh(), nn.Linear(32, 4)).eval()
    params = [model[0].weight, model[2].weight]
    cost = measure_pass_cost(model, params, Calibration(torch.randn(64, 6), None, batch_size=64), kind="hvp",
                             output_loss="kl", device=torch.device("cpu"), batch_cap=64, probe_cap=16)
    assert sorted((b, p) for b, p, _ in cost.measured) == [(1, 1), (1, 2), (2, 1), (2, 2)]
    for b, p, peak in cost.measured:
        assert cost.need(b, p, 64) >= peak
