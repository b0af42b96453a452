"""The analyses list: what each came from, and status that changes without a reload."""

from __future__ import annotations

from playwright.sync_api import expect

from service.storage.db.models import AnalysisRecord
from service.storage.db.session import session_scope


def test_list_shows_model_dataset_and_live_status(page, server, digits_analysis, artifacts):
    with session_scope(server.settings.resolved_database_url) as s:
        # A job frozen mid-way, written straight into its row: the list must show its progress.
        running = AnalysisRecord(model_id=digits_analysis["model"]["id"], dataset_id=digits_analysis["dataset"]["id"],
                                 candidates=["int4", "int8"], metric="hutchinson", options={}, seed=1,
                                 status="running", progress=0.4, message="layer 2 of 3", attempts=1)
        s.add(running)
        s.flush()
        running_id = running.id
    page.goto("/")
    row = page.locator(f"tr[data-id='{digits_analysis['id']}']")
    expect(row).to_contain_text("digits-mlp")
    expect(row).to_contain_text("128 samples")
    expect(row.locator(".badge")).to_have_text("succeeded")
    live = page.locator(f"tr[data-id='{running_id}']")
    expect(live.locator("progress")).to_have_attribute("value", "40")
    expect(live).to_contain_text("layer 2 of 3")
    page.screenshot(path=artifacts / "list-1280.png", full_page=True)

    page.evaluate("window.__sameDocument = true")
    with session_scope(server.settings.resolved_database_url) as s:
        s.get(AnalysisRecord, running_id).status = "failed"
        s.get(AnalysisRecord, running_id).error = "stopped by the test"
    expect(live.locator(".badge")).to_have_text("failed", timeout=10_000)
    expect(live).to_contain_text("stopped by the test")
    assert page.evaluate("window.__sameDocument") is True

    # In-page navigation to the analysis, and back.
    row.locator("a").click()
    page.wait_for_selector("body[data-state=ready]")
    assert page.url.endswith(f"/analyses/{digits_analysis['id']}")
    assert page.evaluate("window.__sameDocument") is True
    page.go_back()
    expect(page.locator("h1")).to_have_text("Analyses")
