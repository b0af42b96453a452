"""Keyboard, phone-width and token access to the dashboard."""

from __future__ import annotations

from playwright.sync_api import expect

from service.storage import tokens
from service.storage.db.session import session_scope
from tests.utils.dashboard_factories import start_live_server


def test_keyboard_reaches_and_picks_points(page, digits_analysis):
    page.goto(f"/analyses/{digits_analysis['id']}")
    page.wait_for_selector("body[data-state=ready]")
    reached = []
    for _ in range(40):
        page.keyboard.press("Tab")
        reached.append(page.evaluate("document.activeElement.id || document.activeElement.tagName"))
        if reached[-1] == "points":
            break
    assert "chart" in reached and "points" in reached, reached
    # Focus is visible wherever it lands.
    assert page.evaluate("getComputedStyle(document.activeElement).outlineStyle") != "none"

    page.keyboard.press("ArrowDown")
    page.keyboard.press("ArrowDown")
    page.keyboard.press("Enter")
    expect(page.locator("#summary thead")).to_contain_text("Front point 2")
    expect(page.locator("#chart .sel-A")).to_have_count(1)
    page.keyboard.press("End")
    page.keyboard.press("Shift+Enter")
    expect(page.locator("#chart .sel-B")).to_have_count(1)
    assert page.get_attribute("#points", "aria-activedescendant")

    # The chart itself: arrows move the highlighted point and show its totals.
    page.focus("#chart")
    page.keyboard.press("Home")
    expect(page.locator("#chart .active-ring")).to_have_count(1)
    expect(page.locator("#chart .tooltip")).to_be_visible()
    page.keyboard.press("Enter")
    expect(page.locator("#summary thead")).to_contain_text("Front point 1")


def test_phone_width(browser, server, digits_analysis, artifacts):
    context = browser.new_context(viewport={"width": 375, "height": 812}, base_url=server.url, is_mobile=True,
                                  has_touch=True)
    page = context.new_page()
    try:
        page.goto("/")
        expect(page.locator(f"tr[data-id='{digits_analysis['id']}']")).to_contain_text("digits-mlp")
        assert page.evaluate("document.documentElement.scrollWidth") <= 375
        page.screenshot(path=artifacts / "list-375.png", full_page=True)

        page.goto(f"/analyses/{digits_analysis['id']}")
        page.wait_for_selector("body[data-state=ready]")
        page.locator("#chart .pts.s-front .pt").last.tap()  # the crowded middle is for the list
        expect(page.locator("#layers tbody .fmt")).to_have_count(3)
        # Nothing wider than the screen: wide tables scroll inside their own box.
        assert page.evaluate("document.documentElement.scrollWidth") <= 375
        box = page.locator("#chart svg").bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= 375
        page.screenshot(path=artifacts / "analysis-digits-375.png", full_page=True)
    finally:
        context.close()


def test_token_is_asked_for_and_sent(browser, tmp_path, artifacts):
    live = start_live_server(tmp_path / "data", auth="on")
    try:
        with session_scope(live.settings.resolved_database_url) as s:
            secret = tokens.create_token(s, name="dashboard", scopes=["read"]).secret
        context = browser.new_context(base_url=live.url)
        page = context.new_page()
        page.goto("/")  # the page itself needs no token
        expect(page.locator("#token-form")).to_be_visible()
        expect(page.locator("#token-note")).to_contain_text("token")
        page.fill("#token-input", secret)
        page.press("#token-input", "Enter")
        expect(page.locator("#token-form")).to_be_hidden()
        expect(page.locator("tbody")).to_contain_text("No analyses yet")
        assert page.evaluate("sessionStorage.getItem('bitplan.token')") == secret
        context.close()
    finally:
        live.stop()
