"""Load time of the dashboard for a large analysis: 500 layers, a 200-point front, in headless Chromium.

Starts the real API on loopback (SQLite in a temporary directory), writes a synthetic 500-layer
analysis straight into the database with its frontier stored (tests/utils/dashboard_factories.py),
then opens /analyses/{id} several times and reads, from the page's own clock, how long it took from
navigation start until the front, the plans and the per-layer table were drawn. Also times a click on
a front point until its 500 per-layer formats are shown.

    .venv/bin/python bench/dashboard.py [--layers 500] [--points 200] [--loads 5]

Target: the page is ready in under 1 s (median of the warm loads).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.utils.dashboard_factories import (  # noqa: E402
    CHROMIUM_ARGS, insert_synthetic_analysis, start_live_server,
)

TARGET_MS = 1000.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=500)
    parser.add_argument("--points", type=int, default=200)
    parser.add_argument("--loads", type=int, default=5)
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="bitplan-bench-dashboard-") as tmp:
        server = start_live_server(Path(tmp) / "data")
        try:
            started = time.perf_counter()
            aid = insert_synthetic_analysis(server.settings.resolved_database_url, layers=args.layers,
                                            points=args.points)
            print(f"synthetic analysis: {args.layers} layers, {args.points}-point front "
                  f"(written in {time.perf_counter() - started:.1f} s)")
            with server.client() as http:
                front = http.get(f"/v1/analyses/{aid}/frontier", params={"cost": "bytes", "points": args.points})
                table = http.get(f"/v1/analyses/{aid}/table")
            print(f"payloads: frontier {len(front.content) / 1e6:.2f} MB, table {len(table.content) / 1e6:.2f} MB")

            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
                context = browser.new_context(viewport={"width": 1280, "height": 800}, base_url=server.url)
                page = context.new_page()
                ready, clicks = [], []
                for i in range(args.loads):
                    page.goto(f"/analyses/{aid}")
                    page.wait_for_function("window.__bitplanReady !== undefined", timeout=60_000)
                    ms = page.evaluate("window.__bitplanReady")  # performance.now(): ms since navigation start
                    ready.append(ms)
                    t0 = page.evaluate("performance.now()")
                    page.locator("#chart .pts.s-front .pt").nth(args.points // 2).click(force=True)
                    page.wait_for_function(f"document.querySelectorAll('#layers tbody .fmt').length === {args.layers}")
                    clicks.append(page.evaluate("performance.now()") - t0)
                    print(f"load {i + 1}: ready in {ms:7.1f} ms{' (cold: first load of the page and its scripts)' if i == 0 else ''}; "
                          f"click → {args.layers} formats in {clicks[-1]:6.1f} ms")
                browser.close()
        finally:
            server.stop()

    warm = ready[1:] or ready
    median = statistics.median(warm)
    print(f"ready, median of warm loads: {median:.1f} ms (target < {TARGET_MS:.0f} ms): "
          f"{'OK' if median < TARGET_MS else 'SLOWER THAN TARGET'}")
    print(f"click to per-layer formats, median: {statistics.median(clicks):.1f} ms")


if __name__ == "__main__":
    main()
