"""docs/problem-format.md's examples, run as written: every `$ bitplan ...` line against the CLI and
every `POST` block against a live server, so the page cannot drift from what they answer.

A console block is `$ command  # exits N` (0 when not said) followed by lines its output must hold
(whitespace-normalised); an http block is `POST path  # answers N` (200 when not said) and a JSON
body, where `{...}` stands for the page's example problem."""

from __future__ import annotations

import json
import re
import shlex
import textwrap
from pathlib import Path

import httpx
import pytest

from service.cli import main as cli_main
from service.config import Settings
from tests.utils.live_server import live_server

DOC = Path(__file__).resolve().parents[2] / "docs" / "problem-format.md"
BLOCK = re.compile(r"^( *)```(json|console|http)\n(.*?)^\1```", re.S | re.M)


def _blocks(kind: str) -> list[str]:
    return [textwrap.dedent(m.group(3)) for m in BLOCK.finditer(DOC.read_text()) if m.group(2) == kind]


def _expect(line: str, word: str, default: int) -> tuple[str, int]:
    head, _, comment = line.partition("  #")
    m = re.search(rf"{word} (\d+)", comment)
    return head.strip(), int(m.group(1)) if m else default


def _norm(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture(scope="module")
def problem_file(tmp_path_factory) -> Path:
    (example,) = _blocks("json")
    path = tmp_path_factory.mktemp("doc") / "problem.json"
    path.write_text(example)
    return path


def _commands() -> list[tuple[str, int, list[str]]]:
    out = []
    for block in _blocks("console"):
        lines = block.strip().splitlines()
        cmd, code = _expect(lines[0].removeprefix("$ "), "exits", 0)
        out.append((cmd, code, [l for l in lines[1:] if l.strip()]))
    return out


def test_the_page_has_examples_of_each_kind():
    assert len(_blocks("json")) == 1
    assert len(_commands()) >= 3
    assert len(_blocks("http")) >= 2


@pytest.mark.parametrize("cmd,code,expected", _commands(), ids=[c[0] for c in _commands()])
def test_console_example_runs_as_documented(cmd, code, expected, problem_file, capsys):
    argv = shlex.split(cmd)
    assert argv[0] == "bitplan"
    argv = [str(problem_file) if a == "problem.json" else a for a in argv[1:]]
    assert cli_main(argv) == code
    out, err = capsys.readouterr()
    said = _norm(out + "\n" + err)
    for line in expected:
        assert _norm(line) in said, (line, out, err)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    settings = Settings(data_dir=tmp_path_factory.mktemp("server"), _env_file=None)
    with live_server(settings, run_jobs=False) as url:
        yield url


def test_http_examples_answer_as_documented(server, problem_file):
    problem = problem_file.read_text()
    for block in _blocks("http"):
        first, _, body = block.strip().partition("\n")
        request, status = _expect(first, "answers", 200)
        method, path = request.split()
        payload = json.loads(body.replace("{...}", problem))
        r = httpx.request(method, server + path, json=payload, timeout=60)
        assert r.status_code == status, (block, r.text)
        if status == 200:
            assert r.json()["plan"]["solver"]["status"] == "optimal"
            assert payload["budget"]["avg_bits"] * 524288 / 8 >= r.json()["plan"]["costs"]["bytes"]
        else:
            assert r.json()["field"] == "budget" and "avg_bits" in r.json()["minimums"], r.text
            assert "avg_bits ≤ 4.5 (bytes ≤ 294912)" in r.json()["detail"]
