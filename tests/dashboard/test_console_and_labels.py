"""Every page loads without a console error, and the chart's marker labels never overlap, on a
desktop (1280 px) and a phone (375 px), for a real analysis whose uniform baselines sit close
together (int4 and mxfp4 differ by a fraction of a bit)."""

from __future__ import annotations

import time

import pytest

from tests.utils.service_factories import upload_dataset, upload_model

WIDTHS = {"desktop": (1280, 800), "phone": (375, 740)}
CANDIDATES = ["int3", "int4", "mxfp4", "nvfp4", "int8"]


@pytest.fixture(scope="module")
def mixed_analysis(server, digits) -> str:
    """The digits MLP analysed with integer and 4-bit float candidates, through the API."""
    with server.client() as http:
        model = upload_model(http, digits, name="digits-mixed").json()
        dataset = upload_dataset(http, digits.calibration_path).json()
        r = http.post("/v1/analyses", json={"model_id": model["id"], "dataset_id": dataset["id"],
                                            "candidates": CANDIDATES})
        assert r.status_code == 202, r.text
        aid = r.json()["id"]
        deadline = time.monotonic() + 300
        while (state := http.get(f"/v1/analyses/{aid}").json())["status"] in ("queued", "running"):
            assert time.monotonic() < deadline, "the analysis did not finish in 300 s"
            time.sleep(0.3)
        assert state["status"] == "succeeded", state["error"]
        return aid


@pytest.fixture(params=list(WIDTHS))
def tab(request, browser, server):
    """A tab at the width asked; every console error and uncaught script error is collected."""
    width, height = WIDTHS[request.param]
    context = browser.new_context(viewport={"width": width, "height": height}, base_url=server.url)
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda msg: errors.append(f"console.{msg.type}: {msg.text} {msg.location}")
            if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
    page.errors = errors
    yield page
    context.close()


def _boxes(page) -> list[tuple[str, dict]]:
    labels = page.locator("#chart .marker-label")
    return [(labels.nth(i).text_content(), labels.nth(i).bounding_box()) for i in range(labels.count())]


def _overlap(a: dict, b: dict) -> bool:
    return a["x"] < b["x"] + b["width"] and b["x"] < a["x"] + a["width"] and \
        a["y"] < b["y"] + b["height"] and b["y"] < a["y"] + a["height"]


@pytest.mark.parametrize("axis", ["bytes", "average_bits"])
def test_baseline_labels_never_overlap(tab, server, mixed_analysis, axis, artifacts):
    tab.goto(f"/analyses/{mixed_analysis}")
    tab.wait_for_selector("body[data-state=ready]")
    tab.select_option("#axis", axis)
    tab.wait_for_selector("#chart .marker-label")
    boxes = _boxes(tab)
    names = [name for name, _ in boxes]
    with server.client() as http:
        baselines = http.get(f"/v1/analyses/{mixed_analysis}/frontier", params={"cost": "bytes", "points": 200}
                             ).json()["baselines"]
    assert {"int4", "mxfp4"} <= set(names), names
    assert len(names) == len(baselines)  # every uniform baseline named, none dropped
    for i, (a_name, a) in enumerate(boxes):
        for b_name, b in boxes[i + 1:]:
            assert not _overlap(a, b), (a_name, a, b_name, b)
    width = tab.viewport_size["width"]
    tab.screenshot(path=artifacts / f"labels-{axis}-{width}.png", full_page=True)
    assert tab.errors == []


def test_no_console_errors_on_any_page(tab, server, mixed_analysis, digits_analysis, synthetic_analysis):
    for path in ("/", "/analyses", f"/analyses/{mixed_analysis}", f"/analyses/{digits_analysis['id']}",
                 f"/analyses/{synthetic_analysis}"):
        tab.goto(path)
        tab.wait_for_load_state("networkidle")
        assert tab.errors == [], (path, tab.errors)
