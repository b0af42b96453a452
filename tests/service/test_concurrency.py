"""Many concurrent requests against a real uvicorn server: every one answers, /healthz included.

The fault this guards against: `async def` routes calling the synchronous session on the event loop
wait there for a pool connection held by requests that need that same loop to finish, so ~20 re-solves
at once hung the whole server. A hung request fails here through the client's timeout.
"""

from __future__ import annotations

import socket
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from service.config import Settings
from tests.utils.live_server import live_server
from tests.utils.synthetic import problem_dict, stored_analysis

BURST = 24
HANG_S = 60  # a request still unanswered after this is a hang, not a slow answer


@pytest.fixture(params=["sqlite", "postgres"])
def server(request, tmp_path):
    url = None if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    settings = Settings(data_dir=tmp_path / "data", database_url=url, _env_file=None)
    with live_server(settings) as base:
        yield base, settings


def test_a_burst_of_re_solves_all_answer_and_healthz_answers_during_it(server):
    base, settings = server
    analysis_id = stored_analysis(settings.resolved_database_url, problem_dict(40, seed=3))
    start = threading.Barrier(BURST + 1)
    health: list[int] = []

    def plan(i: int) -> httpx.Response:
        with httpx.Client(base_url=base, timeout=HANG_S) as http:
            start.wait()
            return http.post(f"/v1/analyses/{analysis_id}/plans", json={"budget": {"average_bits": 3 + i / BURST}})

    with ThreadPoolExecutor(BURST) as pool:
        futures = [pool.submit(plan, i) for i in range(BURST)]
        start.wait()
        with httpx.Client(base_url=base, timeout=HANG_S) as http:
            while not all(f.done() for f in futures):
                health.append(http.get("/healthz").status_code)
        responses = [f.result() for f in futures]
    assert [r.status_code for r in responses] == [201] * BURST, [r.text for r in responses if r.status_code != 201]
    assert health and set(health) == {200}
    with httpx.Client(base_url=base, timeout=HANG_S) as http:
        assert len(http.get(f"/v1/analyses/{analysis_id}/plans").json()) == BURST


def test_over_the_in_flight_limit_is_503_with_retry_after_at_once(tmp_path):
    settings = Settings(data_dir=tmp_path / "data", max_in_flight_requests=1, _env_file=None)
    body = b'--b\r\nContent-Disposition: form-data; name="file"; filename="d.jsonl"\r\n\r\n{"text": "hi"}\r\n--b--\r\n'
    with live_server(settings) as base:
        host, port = base.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=HANG_S) as held:
            # An upload whose body is still to come: "100 Continue" says the app is handling it.
            held.sendall(b"POST /v1/datasets HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                         b"Content-Type: multipart/form-data; boundary=b\r\n"
                         b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n")
            assert held.recv(1024).startswith(b"HTTP/1.1 100")
            with httpx.Client(base_url=base, timeout=HANG_S) as http:
                r = http.get("/v1/analyses")
                assert r.status_code == 503 and r.headers["retry-after"] == "1" and r.json()["field"] == "server"
                assert http.get("/healthz").status_code == 200  # probes never wait behind the limit
                held.sendall(body)
                assert held.recv(1024).startswith(b"HTTP/1.1 201")  # the held upload completes
                assert http.get("/v1/analyses").status_code == 200


def test_the_database_pool_follows_the_api_threads(tmp_path):
    from service.storage.db.session import RESERVED_CONNECTIONS, get_engine
    from tests.utils.service_factories import make_client

    with make_client(tmp_path, run_jobs=False, api_threads=6, db_pool_timeout_s=2) as c:
        pool = get_engine(c.app.state.settings.resolved_database_url).pool
        assert (pool.size(), pool._max_overflow, pool._timeout) == (6, RESERVED_CONNECTIONS, 2)
        assert c.get("/healthz").status_code == 200


def test_no_free_connection_is_a_quick_503_with_retry_after(tmp_path):
    from service.storage.db.session import RESERVED_CONNECTIONS, get_engine

    settings = Settings(data_dir=tmp_path / "data", api_threads=2, db_pool_timeout_s=0.5, _env_file=None)
    with live_server(settings, run_jobs=False) as base:
        engine = get_engine(settings.resolved_database_url)  # the server's own pool (same process)
        held = [engine.connect() for _ in range(2 + RESERVED_CONNECTIONS)]
        try:
            r = httpx.get(f"{base}/v1/analyses", timeout=HANG_S)
            assert r.status_code == 503 and "retry-after" in r.headers
            assert httpx.get(f"{base}/healthz", timeout=HANG_S).status_code == 200
        finally:
            for conn in held:
                conn.close()
        assert httpx.get(f"{base}/v1/analyses", timeout=HANG_S).status_code == 200
