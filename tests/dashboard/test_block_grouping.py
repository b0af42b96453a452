"""A block-grouped analysis on the analysis page: its plans and front points choose per block, and the
per-layer table shows every layer of a block in its block's format."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.utils.dashboard_factories import insert_synthetic_analysis


@pytest.fixture(scope="module")
def blocks_analysis(server) -> str:
    """12 layers in 3 blocks of 4 (`blocks.N.{q,k,v,mlp}`), one decision unit per block, with the
    stored front the page asks for (200 points)."""
    return insert_synthetic_analysis(server.settings.resolved_database_url, layers=12, points=200, grouping="block")


def _shown(page) -> dict[str, str]:
    rows = page.locator("#layers tbody tr")
    expect(rows).to_have_count(12)
    return {rows.nth(i).locator("th").inner_text(): rows.nth(i).locator(".fmt").inner_text()
            for i in range(rows.count())}


def test_front_point_and_plan_formats_reach_every_layer_of_a_block(page, server, blocks_analysis):
    page.goto(f"/analyses/{blocks_analysis}")
    page.wait_for_selector("body[data-state=ready]")
    with server.client() as http:
        front = http.get(f"/v1/analyses/{blocks_analysis}/frontier", params={"cost": "bytes", "points": 200}).json()
    assert front["units"] == ["blocks.0", "blocks.1", "blocks.2"]
    index = len(front["points"]) // 2
    page.locator("#chart .pts.s-front .pt").nth(index).click()
    choices = front["points"][index]["choices"]
    assert _shown(page) == {layer: front["candidates"][c]
                            for layers, c in zip(front["unit_layers"], choices, strict=True) for layer in layers}

    page.select_option("#budget-kind", "avg_bits")
    page.fill("#budget-value", "4")
    page.click("#budget-submit")
    expect(page.locator("#plans li[data-plan]")).to_have_count(1)
    with server.client() as http:
        plan = http.get(f"/v1/analyses/{blocks_analysis}/plans").json()[0]
    assert [u["layers"] for u in plan["units"]] == front["unit_layers"]
    expect(page.locator("#summary")).to_contain_text(f"Plan {plan['id'][:6]}")
    assert _shown(page) == {layer: u["candidate"] for u in plan["units"] for layer in u["layers"]}
