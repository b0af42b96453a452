"""A real API server on loopback and Debian's Chromium driven by Playwright.

Without Playwright or Chromium the browser tests skip on a developer's machine and fail in CI
(CI=true), where a skipped browser suite would hide a broken dashboard.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from tests.utils.dashboard_factories import CHROMIUM_ARGS, insert_synthetic_analysis, start_live_server
from tests.utils.service_factories import upload_dataset, upload_model

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "dashboard"


def _unavailable(reason: str):
    if os.environ.get("CI"):
        pytest.fail(f"the browser tests need {reason} in CI")
    pytest.skip(f"{reason} not available")


@pytest.fixture(scope="session")
def chromium_path() -> str:
    path = os.environ.get("BITPLAN_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        _unavailable("Chromium (Debian package 'chromium', see scripts/system-packages.sh)")
    return path


@pytest.fixture(scope="session")
def browser(chromium_path):
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("Playwright (pip extra 'test')")
    pw = sync_playwright().start()
    browser = pw.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS)
    yield browser
    browser.close()
    pw.stop()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    live = start_live_server(tmp_path_factory.mktemp("dashboard") / "data")
    yield live
    live.stop()


@pytest.fixture
def page(browser, server):
    """A fresh tab at 1280×800; uncaught script errors fail the test that caused them."""
    context = browser.new_context(viewport={"width": 1280, "height": 800}, base_url=server.url)
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    yield tab
    context.close()
    assert not errors, f"script errors on the page: {errors}"


@pytest.fixture(scope="session")
def digits(tmp_path_factory):
    from workers.digits import train_digits

    return train_digits(tmp_path_factory.mktemp("digits"), epochs=15, calibration_samples=128)


@pytest.fixture(scope="session")
def digits_analysis(server, digits) -> dict:
    """A finished analysis of the digits MLP, made through the API like a user would."""
    with server.client() as http:
        model = upload_model(http, digits, name="digits-mlp").json()
        dataset = upload_dataset(http, digits.calibration_path).json()
        analysis = http.post("/v1/analyses", json={"model_id": model["id"], "dataset_id": dataset["id"]}).json()
        deadline = time.monotonic() + 300
        while (state := http.get(f"/v1/analyses/{analysis['id']}").json())["status"] in ("queued", "running"):
            assert time.monotonic() < deadline, "the digits analysis did not finish in 300 s"
            time.sleep(0.3)
        assert state["status"] == "succeeded", state["error"]
        return {"id": analysis["id"], "model": model, "dataset": dataset}


@pytest.fixture(scope="session")
def synthetic_analysis(server) -> str:
    """A 500-layer analysis with a 200-point front, written straight into the database."""
    return insert_synthetic_analysis(server.settings.resolved_database_url, layers=500, points=200)
