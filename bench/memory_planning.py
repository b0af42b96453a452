"""Memory planning before a metric (issue 10): old (doubling B, P until the pass is ≥ 5% of the planned
memory) vs new (four passes at b, p ∈ {1, 2}) side by side: wall time, chosen batches, peak RSS.

    nice -n 5 .venv/bin/python bench/memory_planning.py
"""

import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    import torch

    from workers.data import Calibration
    from workers.digits import digits_arrays, train_digits
    from workers.memory import SAFETY, choose_batches, free_memory, measure_pass_cost, process_peak
    from workers.models import load_model

    torch.set_num_threads(1)
    x_tr, y_tr, _, _ = digits_arrays(0)
    with tempfile.TemporaryDirectory() as tmp:
        d = train_digits(Path(tmp) / "cnn", architecture="cnn")
        model = load_model({"format": "safetensors", "path": str(d.weights_path), "architecture": "cnn",
                            "hyperparams": d.hyperparams})
    x = torch.from_numpy(x_tr[:256]).reshape(-1, 1, 8, 8)
    params = [p for p in model.parameters() if p.dim() > 1]
    free, _ = free_memory(torch.device("cpu"))
    rows = {}
    import gc

    import workers.memory as memory

    young = memory.gc.collect
    for name, grow, full_gc in (("old", 0.05 * SAFETY * free, True), ("new", 0.0, False)):
        # old: a full collection in every trim (as before issue 10); new: young generations only
        memory.gc.collect = (lambda *_: young()) if full_gc else young
        cal = Calibration(x, None, batch_size=256)
        start = time.perf_counter()
        cost = measure_pass_cost(model, params, cal, kind="hvp", output_loss="kl", device=torch.device("cpu"),
                                 batch_cap=256, probe_cap=16, grow_until=grow)
        wall = time.perf_counter() - start
        plan = choose_batches(cost, free_memory(torch.device("cpu"))[0], samples=256, batch_cap=256, probe_cap=16)
        memory.gc.collect = young
        rows[name] = (wall, len(cost.measured), plan, process_peak(torch.device("cpu"))["peak_rss_bytes"])
    for name, (wall, n, plan, rss) in rows.items():
        print(f"{name}: planning {wall:6.2f} s, {n} passes, batch {plan.batch_size}, probe batch {plan.probe_batch},"
              f" est {plan.estimated_bytes / 2**20:.1f} MiB, process peak RSS {rss / 2**20:.0f} MiB")
    print(f"new/old planning wall time: {rows['new'][0] / rows['old'][0]:.3f}")


if __name__ == "__main__":
    main()
