"""The analysis page of a real digits analysis: front, per-layer formats, plans, comparison."""

from __future__ import annotations

import json
import time

from playwright.sync_api import expect


def open_analysis(page, analysis_id: str, query: str = ""):
    page.goto(f"/analyses/{analysis_id}{query}")
    page.wait_for_selector("body[data-state=ready]")
    return page


def frontier_of(server, analysis_id: str) -> dict:
    with server.client() as http:
        return http.get(f"/v1/analyses/{analysis_id}/frontier", params={"cost": "bytes", "points": 200}).json()


def test_front_has_its_points_and_a_click_shows_layer_formats(page, server, digits_analysis, artifacts):
    aid = digits_analysis["id"]
    open_analysis(page, aid)
    front = frontier_of(server, aid)
    expect(page.locator("#chart .pts.s-front .pt")).to_have_count(len(front["points"]))
    expect(page.locator("#chart .pts.s-baseline .pt")).to_have_count(len(front["baselines"]))
    expect(page.locator("#chart .marker-label").first).to_contain_text("int")
    # No evaluations endpoint on this server: no measured overlay.
    expect(page.locator("#chart .s-measured")).to_have_count(0)

    index = len(front["points"]) // 2
    page.locator("#chart .pts.s-front .pt").nth(index).click()
    point = front["points"][index]
    expected = {u: front["candidates"][c] for u, c in zip(front["units"], point["choices"])}
    rows = page.locator("#layers tbody tr")
    expect(rows).to_have_count(len(front["units"]))
    shown = {rows.nth(i).locator("th").inner_text(): rows.nth(i).locator(".fmt").inner_text()
             for i in range(rows.count())}
    assert shown == expected
    expect(page.locator("#layers tbody .sens .ci").first).to_be_visible()  # CI bars of Tr(H)/n
    expect(page.locator("#strips .strip")).to_have_count(2)  # sensitivity + bits of A
    expect(page.locator("#chart .sel-A")).to_have_count(1)
    assert "a=front" in page.url  # the selection is in the address: a reload or a shared link keeps it

    page.locator("#chart .pts.s-front .pt").nth(index).hover()
    expect(page.locator("#chart .tooltip")).to_be_visible()
    expect(page.locator("#chart .tooltip")).to_contain_text("average bits")
    page.screenshot(path=artifacts / "analysis-digits-1280.png", full_page=True)


def test_new_budget_shows_the_plan_without_a_reload(page, server, digits_analysis, artifacts):
    aid = digits_analysis["id"]
    open_analysis(page, aid)
    page.evaluate("window.__sameDocument = true")
    page.select_option("#budget-kind", "avg_bits")
    page.fill("#budget-value", "4")
    page.click("#budget-submit")
    expect(page.locator("#plans li[data-plan]")).to_have_count(1)
    expect(page.locator("#chart .pts.s-plan .pt")).to_have_count(1)
    assert page.evaluate("window.__sameDocument") is True

    with server.client() as http:
        plans = http.get(f"/v1/analyses/{aid}/plans").json()
    assert len(plans) == 1 and plans[0]["average_bits"] <= 4 + 1e-9
    expect(page.locator("#summary")).to_contain_text(f"Plan {plans[0]['id'][:6]}")
    rows = page.locator("#layers tbody tr")
    for choice in plans[0]["layers"]:
        expect(rows.filter(has=page.locator("th", has_text=choice["layer"])).locator(".fmt")).to_have_text(
            choice["candidate"])

    with page.expect_download() as download:
        page.click("#plans li[data-plan] button[data-act=json]")
    saved = json.loads(download.value.path().read_text())
    assert saved["id"] == plans[0]["id"] and saved["layers"] == plans[0]["layers"]

    # An impossible budget: the API's reason is shown next to the form, nothing is added.
    page.fill("#budget-value", "0.5")
    page.click("#budget-submit")
    expect(page.locator("#budget-error")).to_be_visible()
    expect(page.locator("#budget-error")).not_to_be_empty()
    expect(page.locator("#plans li[data-plan]")).to_have_count(1)
    page.screenshot(path=artifacts / "analysis-digits-plan.png", full_page=True)


def test_two_points_side_by_side(page, server, digits_analysis, artifacts):
    aid = digits_analysis["id"]
    open_analysis(page, aid)
    points = page.locator("#chart .pts.s-front .pt")
    points.first.click()
    points.last.click(modifiers=["Shift"])
    expect(page.locator("#chart .sel-A")).to_have_count(1)
    expect(page.locator("#chart .sel-B")).to_have_count(1)
    expect(page.locator("#summary thead th")).to_have_count(4)  # label, A, B, B vs A
    expect(page.locator("#layers thead")).to_contain_text("Format B")
    expect(page.locator("#strips .strip")).to_have_count(3)
    # The cheapest and the dearest point differ somewhere: those rows are marked.
    assert page.locator("#layers tbody tr.differs").count() >= 1
    page.screenshot(path=artifacts / "analysis-digits-compare.png", full_page=True)

    # The compare toggle does what shift does, for touch screens.
    page.click("#actions button[data-act=clear-b]")
    expect(page.locator("#chart .sel-B")).to_have_count(0)
    page.check("#compare")
    page.locator("#points [role=option][data-id^=baseline]").first.click()  # markers may overlap; the list never
    expect(page.locator("#chart .sel-B")).to_have_count(1)
    expect(page.locator("#summary thead")).to_contain_text("uniform")


def test_x_axis_average_bits(page, digits_analysis):
    open_analysis(page, digits_analysis["id"])
    page.select_option("#axis", "average_bits")
    expect(page.locator("#chart .axis-label").first).to_have_text("Average bits per weight")
    ticks = [float(t) for t in page.locator("#chart .tick").all_text_contents()[:3]]
    assert all(0 < t <= 32 for t in ticks)


def test_measured_points_and_proxy_quality_from_a_real_evaluation(page, server, digits_analysis, artifacts):
    """A frontier evaluation measured by a real job: its points overlay the front on their own axis
    and the rank agreement of predicted damage with measured loss shows in its own panel."""
    aid = digits_analysis["id"]
    with server.client() as http:
        r = http.post(f"/v1/analyses/{aid}/frontier/evaluations",
                      json={"dataset_id": digits_analysis["dataset"]["id"], "k": 3, "points": 20})
        assert r.status_code == 202, r.text
        deadline = time.monotonic() + 180
        while (ev := http.get(f"/v1/evaluations/{r.json()['id']}").json())["status"] in ("queued", "running"):
            assert time.monotonic() < deadline
            time.sleep(0.3)
        assert ev["status"] == "succeeded", ev["error"]
    open_analysis(page, aid)
    expect(page.locator("#chart .pts.s-measured .pt")).to_have_count(3)
    expect(page.locator("#legend")).to_contain_text("Measured loss")
    expect(page.locator("#proxy")).to_be_visible()
    expect(page.locator("#proxy-table")).to_contain_text("plan damage vs measured loss")
    # the default metric's damages are KL per output row: each measured point says how far it is from its prediction
    assert all(p["measured_over_predicted"] > 0 for p in ev["points"])
    page.locator("#chart .pts.s-measured .pt").first.hover()
    expect(page.locator("#chart .tooltip")).to_contain_text("measured KL ÷ predicted")
    page.screenshot(path=str(artifacts / "analysis-digits-measured.png"), full_page=True)


def test_plan_export_downloads_when_the_server_has_exports(page, server, digits_analysis):
    aid = digits_analysis["id"]
    with server.client() as http:
        plan = http.post(f"/v1/analyses/{aid}/plans", json={"budget": {"average_bits": 6}}).json()
        has_exports = "/v1/plans/{plan_id}/export" in http.get("/openapi.json").json()["paths"]
    open_analysis(page, aid, f"?a=plan:{plan['id']}")  # a deep link straight to a plan
    expect(page.locator("#summary thead")).to_contain_text(f"Plan {plan['id'][:6]}")
    export = page.locator("#actions button[data-act=export]")
    if not has_exports:
        expect(export).to_have_count(0)
        return
    expect(export).to_have_count(1)
    page.select_option("#actions select", "json")
    with page.expect_download() as download:
        export.click()
    exported = json.loads(download.value.path().read_text())
    assert exported  # the export's own format is the exports tests' business; here: it arrives whole


def test_warnings_and_plan_confidence_are_shown(page, server):
    """An analysis whose table carries warnings shows them above the front; its plans show their
    confidence and the warnings they inherit."""
    from service.storage.db.models import AnalysisRecord
    from service.storage.db.session import session_scope
    from tests.utils.dashboard_factories import insert_synthetic_analysis

    aid = insert_synthetic_analysis(server.settings.resolved_database_url, layers=6, points=10)
    warning = {"code": "negative_trace", "layer": None, "message": "layer-0: Hessian trace -2 is negative", "values": {}}
    with session_scope(server.settings.resolved_database_url) as session:
        rec = session.get(AnalysisRecord, aid)
        name = rec.table["layers"][0]["name"]
        warning["layer"] = name
        rec.table = {**rec.table, "warnings": [warning]}
        rec.problem = {**rec.problem, "warnings": [warning]}
    page.goto(f"/analyses/{aid}")
    page.wait_for_selector("body[data-state=ready]", timeout=30_000)
    expect(page.locator("#warnings summary")).to_contain_text("1 warning: negative_trace")
    expect(page.locator("#warnings li[data-code=negative_trace]")).to_contain_text("is negative")
    page.fill("#budget-value", "4")
    page.click("#budget-submit")
    expect(page.locator("#plans li[data-plan]")).to_have_count(1)
    with server.client() as http:
        (plan,) = http.get(f"/v1/analyses/{aid}/plans").json()
    expect(page.locator("#plans li[data-plan] .confidence")).to_have_text(
        f"{round(plan['confidence']['confidence'] * 100)}%" + (" (exact)" if plan["confidence"]["exact"] else ""))
    expect(page.locator("#plans li[data-plan] .warn")).to_contain_text("negative_trace")
