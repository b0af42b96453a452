"""`bitplan demo`: the whole product on embedded defaults, as a user would drive it over HTTP."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from service.cli.client import ApiError, BitplanClient


def _free_port(preferred: int = 8000) -> int:
    """The usual port when it is free, so `bitplan serve` later brings the printed URLs back."""
    for port in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise RuntimeError("no free port")


class _Step:
    """Prints one timed step of the demo."""

    def __init__(self, title: str):
        self.title = title

    def __enter__(self) -> "_Step":
        self.t0 = time.perf_counter()
        print(f"• {self.title} ...", flush=True)
        return self

    def __exit__(self, exc_type, *_):
        if exc_type is None:
            print(f"  done in {time.perf_counter() - self.t0:.2f} s", flush=True)


_last_bar: list[str] = [""]


def _bar(state: dict) -> None:
    """A redrawn bar on a terminal; one line per change otherwise (logs stay readable)."""
    frac = state["progress"]["fraction"]
    key = f"{frac:.3f}{state['status']}{state['progress']['message']}"
    if key == _last_bar[0]:
        return
    _last_bar[0] = key
    width = 30
    filled = int(round(frac * width))
    line = f"\r  [{'#' * filled}{'.' * (width - filled)}] {frac * 100:5.1f}%  {state['status']}: {state['progress']['message'][:60]:<60}"
    tty = sys.stderr.isatty()
    sys.stderr.write(line if tty else line.strip("\r").rstrip() + "\n")
    sys.stderr.flush()
    if tty and state["status"] in ("succeeded", "failed", "cancelled"):
        sys.stderr.write("\n")


def _start_server(port: int) -> subprocess.Popen:
    env = dict(os.environ, BITPLAN_PORT=str(port), BITPLAN_HOST="127.0.0.1")
    log = open(Path(os.environ.get("BITPLAN_DATA_DIR", "var")) / "demo-server.log", "ab")
    return subprocess.Popen([sys.executable, "-m", "service.cli", "serve"], env=env, stdout=log, stderr=log)


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def run_demo(*, url: str | None, bits: float, keep_serving: bool, architecture: str = "mlp",
             port: int | None = None) -> int:
    server = None
    Path(os.environ.get("BITPLAN_DATA_DIR", "var")).mkdir(parents=True, exist_ok=True)
    if url is not None and port is not None:
        print("bitplan demo: give --url (a running server) or --port (the one it starts), not both", file=sys.stderr)
        return 2
    if port is not None and not _port_free(port):
        print(f"bitplan demo: port {port} is in use; pick another with --port", file=sys.stderr)
        return 2
    if url is None:
        port = port if port is not None else _free_port()
        url = f"http://127.0.0.1:{port}"
        with _Step(f"starting `bitplan serve` on {url} (SQLite, in-process job runner)"):
            server = _start_server(port)
            client = BitplanClient(url)
            deadline = time.monotonic() + 60
            while not client.health():
                if server.poll() is not None or time.monotonic() > deadline:
                    print("  the server did not start; see var/demo-server.log", file=sys.stderr)
                    return 1
                time.sleep(0.2)
    client = BitplanClient(url)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            with _Step(f"training a small {architecture.upper()} on scikit-learn's digits"):
                from workers.digits import train_digits

                trained = train_digits(Path(tmp), architecture=architecture)
                print(f"  float accuracy on held-out digits: {trained.accuracy:.3f}")
            with _Step("uploading the model (safetensors + architecture spec)"):
                model = client.upload_model(trained.weights_path, architecture=trained.architecture,
                                            hyperparams=trained.hyperparams, name=f"digits-{architecture}")
                print(f"  model {model['id']}: {len(model['layers'])} layers, {model['parameters']} weights")
            with _Step("uploading calibration data"):
                dataset = client.upload_dataset(trained.calibration_path, name="digits-calibration")
                print(f"  dataset {dataset['id']}: {dataset['samples']} samples of shape {dataset['input_shape']}")
        with _Step("sensitivity analysis (default metric, INT2/3/4/6/8 candidates)"):
            analysis = client.start_analysis(model["id"], dataset_id=dataset["id"])
            final = client.wait(analysis["id"], poll=0.3, on_progress=_bar)
            if final["status"] != "succeeded":
                print(f"  analysis {final['status']}: {final['error']}", file=sys.stderr)
                return 1
            print(f"  metric {final['metric']}")
        with _Step(f"solving for an average of {bits:g} bits per weight (exact solver)"):
            plan = client.plan(analysis["id"], avg_bits=bits)
        print()
        # each unit's predicted damage (loss increase) at the format the plan gives it
        print(f"{'unit':<12} {'weights':>8} {'damage':>12} {'format':>8} {'bytes':>10}")
        weights = {row["layer"]: row["weights"] for row in client.table(analysis["id"])["layers"]}
        for unit in plan["units"]:
            n = sum(weights[layer] for layer in unit["layers"])
            print(f"{unit['unit']:<12} {n:>8} {unit['damage']:>12.4g} {unit['candidate']:>8} {unit['bytes']:>10.0f}")
        print()
        budget_bytes = bits * model["parameters"] / 8
        print(f"total {plan['total_bytes']:.0f} bytes ≤ budget {budget_bytes:.0f} bytes; "
              f"average {plan['average_bits']:.3f} bits per weight; predicted damage {plan['predicted_damage']:.4g}")
        print(f"solver: {plan['solver']['backend']} {plan['solver']['status']} in "
              f"{plan['solver']['solve_seconds'] * 1000:.1f} ms")
        print(f"plan: {url}/v1/plans/{plan['id']}")
        print(f"analysis: {url}/v1/analyses/{analysis['id']}   API docs: {url}/docs")
        if server is not None and keep_serving:
            print("server keeps running; press Ctrl-C to stop")
            try:
                server.wait()
            except KeyboardInterrupt:
                pass
        elif server is not None:
            print("(the server stops now; `bitplan serve` brings these URLs back, data is kept in var/)")
        return 0
    except ApiError as exc:
        print(f"error from the server: {exc}", file=sys.stderr)
        return 1
    finally:
        client.close()
        if server is not None and server.poll() is None:
            server.terminate()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
