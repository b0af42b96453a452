"""A 500-layer analysis with a 200-point front: everything drawn, a click fills 500 rows.

How fast it loads is measured by bench/dashboard.py, not asserted here.
"""

from __future__ import annotations

from playwright.sync_api import expect


def test_500_layers_200_points(page, server, synthetic_analysis, artifacts):
    page.goto(f"/analyses/{synthetic_analysis}")
    page.wait_for_selector("body[data-state=ready]", timeout=30_000)
    expect(page.locator("#chart .pts.s-front .pt")).to_have_count(200)
    expect(page.locator("#points [role=option]")).to_have_count(200 + 5 + 10)  # front, uniform, greedy
    expect(page.locator("#layers tbody tr")).to_have_count(500)  # sensitivities before any pick
    # 200 markers overlap at this width: force the click; whichever marker is on top is picked.
    page.locator("#chart .pts.s-front .pt").nth(120).click(force=True)
    expect(page.locator("#layers tbody .fmt")).to_have_count(500)
    expect(page.locator("#strips .strip").nth(1).locator("rect")).to_have_count(500)
    page.locator("#chart .pts.s-front .pt").nth(40).click(modifiers=["Shift"], force=True)
    expect(page.locator("#layers caption")).to_contain_text("with different formats")
    page.screenshot(path=artifacts / "analysis-500-layers.png")


def test_chart_data_is_plain_structures(page, server, synthetic_analysis):
    """data.js alone, in the browser: the structures draw.js renders."""
    page.goto(f"/analyses/{synthetic_analysis}")
    page.wait_for_selector("body[data-state=ready]", timeout=30_000)
    result = page.evaluate("""async (id) => {
        const d = await import('/dashboard/static/js/data.js');
        const f = await (await fetch(`/v1/analyses/${id}/frontier?cost=bytes&points=200`)).json();
        const chart = d.buildChart({frontier: f, axis: 'average_bits', plans: [],
            evaluations: [{plan_id: null, costs: f.points[0].costs, average_bits: f.points[0].average_bits, accuracy: 0.9}]});
        const sel = d.selectionFor('front:bytes:3', {frontiers: {bytes: f}, plans: []});
        return {series: chart.series.map(s => [s.key, s.points.length]), logY: chart.logY,
                sorted: chart.series[0].points.every((p, i, a) => i === 0 || a[i - 1].x <= p.x),
                measured: chart.measured && [chart.measured.key, chart.measured.points.length],
                formats: Object.keys(sel.formats).length, ticks: d.niceTicks(0, 1, 5)};
    }""", synthetic_analysis)
    assert dict(result["series"]) == {"front": 200, "hull": 334, "baseline": 5, "greedy": 10, "plan": 0}
    assert result["sorted"] and result["logY"]
    assert result["measured"] == ["accuracy", 1]
    assert result["formats"] == 500
    assert result["ticks"] == [0, 0.2, 0.4, 0.6, 0.8, 1]
