import math

import numpy as np
import pytest
from scipy import stats

from workers.proxy_quality import kendall_tau_b, proxy_quality, rank_agreement, rankdata, spearman


@pytest.mark.parametrize("seed", range(5))
def test_statistics_match_scipy_with_ties(seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 6, 40).astype(float)  # many ties
    y = x + rng.integers(0, 4, 40)
    assert np.allclose(rankdata(x), stats.rankdata(x))
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    assert kendall_tau_b(x, y) == pytest.approx(stats.kendalltau(x, y).statistic, abs=1e-12)


def test_perfect_reversed_and_constant():
    assert spearman([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert kendall_tau_b([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))
    assert rank_agreement([1.0], [2.0]) == {"spearman": None, "kendall_tau_b": None, "n": 1}
    with pytest.raises(ValueError):
        spearman([1, 2], [1, 2, 3])


def _table(values):
    return {
        "metric": "m",
        "layers": [
            {"name": name, "candidates": [{"candidate": c, "damage": d, "raw_damage": d} for c, d in cands.items()]}
            for name, cands in values.items()
        ],
    }


def test_proxy_quality_per_metric_and_frontier():
    measured = _table({"a": {"int4": 1.0, "int8": 0.1}, "b": {"int4": 3.0, "int8": 0.2}, "c": {"int4": 2.0, "int8": 0.3}})
    good = _table({"a": {"int4": 10.0, "int8": 1.0}, "b": {"int4": 30.0, "int8": 2.0}, "c": {"int4": 20.0, "int8": 3.0}})
    bad = _table({"a": {"int4": 3.0, "int8": 0.3}, "b": {"int4": 1.0, "int8": 0.2}, "c": {"int4": 2.0, "int8": 0.1}})
    out = proxy_quality(
        {"good": good, "bad": bad},
        measured,
        frontier_points=[{"predicted_damage": d, "measured": {"loss": m}} for d, m in [(1, 0.5), (2, 0.7), (3, 0.6)]],
    )
    assert out["metrics"]["good"]["pairs"]["spearman"] == pytest.approx(1.0)
    assert out["metrics"]["good"]["per_candidate"]["int4"]["kendall_tau_b"] == pytest.approx(1.0)
    assert out["metrics"]["bad"]["per_candidate"]["int4"]["spearman"] == pytest.approx(-1.0)
    assert out["frontier"]["spearman"] == pytest.approx(stats.spearmanr([1, 2, 3], [0.5, 0.7, 0.6]).statistic)
