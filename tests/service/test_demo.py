"""Quick start 1 (`bitplan demo`) end to end: trains, uploads, analyses with the default metric, plans."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.utils.servers import free_port
from workers.metrics import DEFAULT_METRIC

ROOT = Path(__file__).resolve().parents[2]


def test_demo_runs_end_to_end_and_prints_a_plan_it_can_stand_behind(tmp_path):
    env = {**os.environ, "BITPLAN_DATA_DIR": str(tmp_path / "var"), "PYTHONPATH": str(ROOT)}
    env.pop("BITPLAN_DATABASE_URL", None)
    out = subprocess.run([sys.executable, "-m", "service.cli", "demo", "--port", str(free_port())], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout
    assert f"metric {DEFAULT_METRIC}" in text
    rows = [line.split() for line in text.splitlines() if line.startswith(("fc1 ", "fc2 ", "fc3 "))]
    assert [r[0] for r in rows] == ["fc1", "fc2", "fc3"]
    total = float(next(line for line in text.splitlines() if "predicted damage" in line).split()[-1])
    assert sum(float(r[2]) for r in rows) == pytest.approx(total, rel=1e-3)  # the rows add up
    assert "/v1/plans/" in text and (tmp_path / "var").is_dir()
