"""Hostile uploads (issue 12): archives that run code when loaded, and what a sandboxed child can reach.

Each hostile archive is built here; its payload only writes a marker file. Every test first shows the
archive is a real attack (torch's own loader runs the payload, in a throwaway process), then that
bitplan never runs it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from service.jobs.process import child_env
from service.jobs.sandbox import Sandbox, why_unavailable
from tests.service.test_uploads import assert_nothing_stored, post_model
from tests.utils.hostile import guards_code_pt2, pickled_weight_pt2, tiny_pt2
from tests.utils.service_factories import make_client

needs_sandbox = pytest.mark.skipif(
    why_unavailable() is not None and os.environ.get("CI") != "true", reason=f"no sandbox: {why_unavailable()}"
)


def torch_export_load_runs(path: Path, marker: Path, *, forward: bool = False) -> bool:
    """Whether torch.export.load (plus .module() and a forward) on `path` runs the payload: proof that the
    archive is hostile, so the tests below cannot pass on a harmless file."""
    code = f"import torch; m = torch.export.load({str(path)!r}).module()"
    if forward:
        code += "; m(torch.randn(2, 8))"
    subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=300)
    ran = marker.exists()
    marker.unlink(missing_ok=True)
    return ran


@pytest.fixture
def client(tmp_path):
    with make_client(tmp_path) as c:
        c.data_dir = tmp_path / "data"
        yield c


def test_pt2_with_a_pickled_weight_is_refused_and_its_payload_never_runs(client, tmp_path):
    marker = tmp_path / "marker"
    archive = pickled_weight_pt2(tmp_path / "evil.pt2", marker)
    assert torch_export_load_runs(archive, marker)

    r = post_model(client, archive.read_bytes(), None, filename="evil.pt2")
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["field"] == "file"
    assert "use_pickle: true" in body["detail"] and "re-export" in body["detail"]
    assert str(tmp_path) not in body["detail"]
    assert not marker.exists()
    assert_nothing_stored(client)


def test_pt2_loader_never_runs_graph_code(tmp_path):
    """No pickle at all: the payload is the archive's guards_code, which ExportedProgram.module() execs
    on the first forward. bitplan's loader (workers.pt2) unlifts without guards."""
    import torch

    from workers.models import ModelSource, load_model

    marker = tmp_path / "marker"
    archive = guards_code_pt2(tmp_path / "guards.pt2", marker)
    assert torch_export_load_runs(archive, marker, forward=True)

    model = load_model(ModelSource("pt2", str(archive)))
    assert model(torch.randn(2, 8)).shape == (2, 3)
    assert not marker.exists()


def test_pt2_graph_targets_and_expressions_outside_torch_export_are_refused(tmp_path):
    from workers.pt2 import archive_problems

    archive = tiny_pt2(tmp_path / "m.pt2")
    assert archive_problems(archive) == []
    import zipfile

    with zipfile.ZipFile(archive) as zf:
        members = {i.filename: zf.read(i) for i in zf.infolist()}
    name = next(n for n in members if n.endswith("models/model.json"))
    program = json.loads(members[name])
    program["graph_module"]["graph"]["nodes"][0]["target"] = "torch.os.system"
    program["range_constraints"] = {"__import__('os').system('true')": {"min_val": 0, "max_val": 1}}
    members[name] = json.dumps(program).encode()
    with zipfile.ZipFile(archive, "w") as zf:
        for n, data in members.items():
            zf.writestr(n, data)
    problems = archive_problems(archive)
    assert any("torch.os.system" in p for p in problems), problems
    assert any("__import__" in p for p in problems), problems


def test_plain_pt2_still_uploads_and_analyses(client, tmp_path):
    """The re-exported (pickle-free) archive the refusal asks for works end to end."""
    archive = tiny_pt2(tmp_path / "ok.pt2")
    r = post_model(client, archive.read_bytes(), None, filename="ok.pt2")
    assert r.status_code == 201, r.text


def test_code_formats_follow_auth_by_default(tmp_path):
    archive = tiny_pt2(tmp_path / "ok.pt2")
    with make_client(tmp_path / "on", auth="on") as c:
        from tests.utils.service_factories import bearer, issue_token

        token = issue_token(c, "admin")
        r = c.post("/v1/models", files={"file": ("ok.pt2", archive.read_bytes())}, headers=bearer(token))
        assert r.status_code == 422, r.text
        assert "switched off" in r.json()["detail"] and "BITPLAN_ALLOW_CODE_FORMATS" in r.json()["detail"]
    with make_client(tmp_path / "on2", auth="on", allow_code_formats=True) as c:
        token = issue_token(c, "admin")
        r = c.post("/v1/models", files={"file": ("ok.pt2", archive.read_bytes())}, headers=bearer(token))
        assert r.status_code == 201, r.text


def test_pt2_refused_without_the_sandbox(tmp_path):
    archive = tiny_pt2(tmp_path / "ok.pt2")
    with make_client(tmp_path, sandbox="off") as c:
        r = c.post("/v1/models", files={"file": ("ok.pt2", archive.read_bytes())})
        assert r.status_code == 422 and "sandbox" in r.json()["detail"], r.text


PROBE = """
import json, os, socket, sys
seen = {"env": sorted(os.environ)}
for name, path in json.loads(sys.argv[1]).items():
    try:
        with open(path, "rb") as f:
            f.read(1)
        seen[name] = "read"
    except OSError as exc:
        seen[name] = type(exc).__name__
try:
    socket.create_connection(("127.0.0.1", int(sys.argv[2])), timeout=2).close()
    seen["api"] = "connected"
except OSError as exc:
    seen["api"] = type(exc).__name__
for name, path in (("write_input", sys.argv[3]), ("write_root", "/usr/pwned")):
    try:
        open(path, "a").close()
        seen[name] = "written"
    except OSError as exc:
        seen[name] = type(exc).__name__
seen["uid"] = os.getuid()
print(json.dumps(seen))
"""


@needs_sandbox
def test_sandboxed_child_sees_no_secret_and_reaches_no_database_blob_or_network(tmp_path, monkeypatch):
    data = tmp_path / "data"
    (data / "blobs" / "ab").mkdir(parents=True)
    db = data / "bitplan.db"
    db.write_bytes(b"SQLite format 3\0")
    other_blob = data / "blobs" / "ab" / "ab12"
    other_blob.write_bytes(b"someone else's model")
    mine = tmp_path / "upload.pt2"
    mine.write_bytes(b"this job's input")
    (tmp_path / ".env").write_text("BITPLAN_DATABASE_URL=postgresql://u:secret@db/bitplan\n")
    monkeypatch.setenv("BITPLAN_DATABASE_URL", "postgresql://u:secret@db/bitplan")
    monkeypatch.setenv("BITPLAN_REDIS_URL", "redis://:secret@redis:6379/0")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "unrelated-secret")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]

    paths = {"database": str(db), "blob": str(other_blob), "dotenv": str(tmp_path / ".env"), "input": str(mine),
             "home": os.path.expanduser("~/.bash_history")}
    argv = [sys.executable, "-c", PROBE, json.dumps(paths), str(port), str(mine)]
    env = child_env()
    done = subprocess.run(Sandbox(read_only=[mine]).command(argv, env), env={"PATH": env["PATH"]},
                          capture_output=True, text=True, timeout=60)
    listener.close()
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert not any(k.startswith("BITPLAN_") or k == "AWS_SECRET_ACCESS_KEY" for k in seen["env"]), seen["env"]
    assert seen["input"] == "read"
    assert seen["database"] == "FileNotFoundError" and seen["blob"] == "FileNotFoundError"
    assert seen["dotenv"] == "FileNotFoundError" and seen["home"] == "FileNotFoundError"
    assert seen["api"] != "connected"
    assert seen["write_input"] != "written" and seen["write_root"] != "written"
    assert seen["uid"] != 0
    assert not Path("/usr/pwned").exists()


def test_child_environment_is_an_allowlist(monkeypatch):
    monkeypatch.setenv("BITPLAN_DATABASE_URL", "postgresql://u:secret@db/bitplan")
    monkeypatch.setenv("SOME_TOKEN", "x")
    env = child_env()
    assert "BITPLAN_DATABASE_URL" not in env and "SOME_TOKEN" not in env
    assert env["HF_HUB_OFFLINE"] == "1"


def test_child_malloc_arenas_are_capped(monkeypatch):
    """Each glibc arena reserves 64 MiB of the child's RLIMIT_AS; an operator's own setting wins."""
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    assert child_env()["MALLOC_ARENA_MAX"] == "2"
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert child_env()["MALLOC_ARENA_MAX"] == "4"


def _job_commands(job_id: str) -> list[list[str]]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            except OSError:
                continue
            if "service.jobs.child" in cmd and job_id in cmd:
                found.append(cmd)
    return found


@needs_sandbox
def test_analysis_of_a_pt2_model_runs_in_the_sandbox(client, tmp_path):
    import time

    import torch
    from safetensors.torch import save as save_tensors

    archive = tiny_pt2(tmp_path / "ok.pt2")
    model = post_model(client, archive.read_bytes(), None, filename="ok.pt2")
    assert model.status_code == 201, model.text
    data = save_tensors({"inputs": torch.randn(32, 8), "targets": torch.randint(0, 3, (32,))})
    dataset = client.post("/v1/datasets", files={"file": ("d.safetensors", data)})
    assert dataset.status_code == 201, dataset.text
    r = client.post("/v1/analyses", json={"model_id": model.json()["id"], "dataset_id": dataset.json()["id"],
                                          "metric": "hutchinson", "options": {"min_probes": 64, "max_probes": 64, "probe_batch": 8}})
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    commands: list[list[str]] = []
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        commands += _job_commands(job_id)
        body = client.get(f"/v1/analyses/{job_id}").json()
        if body["status"] in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(0.05)
    assert body["status"] == "succeeded", body["error"]
    assert commands, "never saw the job's process"
    assert any(os.path.basename(cmd[0]) == "bwrap" and "--unshare-all" in cmd for cmd in commands), commands
