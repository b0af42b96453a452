"""Grouping layers into units and turning layer ties into solver ties."""

import pytest

from workers.table import CandidateRow, LayerRow, SensitivityTable
from workers.units import block_of, group_layers, validate_grouping, validate_ties


def test_block_of():
    assert block_of("model.layers.3.self_attn.q_proj") == "model.layers.3"
    assert block_of("transformer.h.0.attn.c_attn") == "transformer.h.0"
    assert block_of("bert.encoder.layer.1.attention.self.query") == "bert.encoder.layer.1"
    assert block_of("lm_head") is None and block_of("fc1") is None and block_of("3") is None


def test_group_layers():
    names = ["embed", "layers.0.q", "layers.0.k", "layers.1.q", "head"]
    assert group_layers(names, "layer") == {n: [n] for n in names}
    assert group_layers(names, "block") == {"embed": ["embed"], "layers.0": ["layers.0.q", "layers.0.k"],
                                            "layers.1": ["layers.1.q"], "head": ["head"]}
    assert group_layers(names, ["layers.", "head"]) == {"embed": ["embed"], "layers": names[1:4], "head": ["head"]}
    with pytest.raises(ValueError, match="options.grouping"):
        validate_grouping("blocks")
    with pytest.raises(ValueError, match="options.ties"):
        validate_ties("some")
    assert validate_grouping(None) == "layer" and validate_ties(None) == "auto"


def _row(name, weights, damages, bops=None):
    cands = [CandidateRow(c, d, d, b, b * 8 / weights, 0.0, bops=None if bops is None else bops * i)
             for i, (c, d, b) in enumerate(damages, start=1)]
    return LayerRow(name, "linear", [weights], weights, 1.0, None, None, True, cands)


def test_to_problem_merges_groups_and_maps_ties():
    rows = [_row(n, 10, [("int4", 1.0, 5), ("int8", 0.5, 10)], bops=100) for n in ("b.0.q", "b.0.k", "b.1.q", "b.1.k")]
    table = SensitivityTable("m", "s", "l", ["int4", "int8"], rows,
                             groups={"b.0": ["b.0.q", "b.0.k"]}, ties=[["b.0.q", "b.0.k"], ["b.1.q", "b.1.k"]])
    problem = table.to_problem()
    assert [u.name for u in problem.units] == ["b.0", "b.1.q", "b.1.k"]
    merged = problem.unit("b.0")
    assert merged.weights == 20 and merged.option("int8").damage == 1.0
    assert merged.option("int8").costs == {"bytes": 20.0, "bops": 400.0}
    assert problem.ties == (("b.1.q", "b.1.k"),)  # the b.0 tie fell inside one unit
    again = SensitivityTable.from_dict(table.to_dict())
    assert again.to_problem() == problem


def test_old_tables_without_the_new_fields_still_parse():
    old = {"version": 1, "metric": "hutchinson", "statistic": "hessian_trace", "loss": "cross_entropy",
           "candidates": ["int4"], "calibration_samples": 4,
           "layers": [{"name": "fc", "kind": "linear", "weight_shape": [2, 2], "weights": 4, "mean": 1.0,
                       "ci_halfwidth": 0.1, "samples": 16, "converged": True,
                       "candidates": [{"candidate": "int4", "damage": 0.1, "raw_damage": 0.1, "bytes": 6,
                                       "bits_per_weight": 12.0, "perturbation": 0.01}]}]}
    table = SensitivityTable.from_dict(old)
    assert table.ties == [] and table.groups == {} and table.layers[0].candidates[0].bops is None
    problem = table.to_problem()
    assert problem.unit("fc").option("int4").costs == {"bytes": 6.0} and problem.ties == ()
