"""Client-side commands of `bitplan`: submit, status, plan (over HTTP), and token (on the database).

submit/status/plan use only BitplanClient, so they work against any server; `token` is an operator's
tool like `migrate`: it writes the database directly, which is how the first admin token is made.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from pathlib import Path
from typing import Any

import httpx

from service.cli.client import ApiError, BitplanClient
from solver._budget import AVG_BITS, parse_budget_text

__all__ = ["add_client_args", "client_from", "submit", "status", "plan", "frontier", "export", "token", "progress_line"]


def add_client_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default=os.environ.get("BITPLAN_URL", "http://127.0.0.1:8000"),
                   help="server URL (env BITPLAN_URL; default http://127.0.0.1:8000)")
    p.add_argument("--token", default=os.environ.get("BITPLAN_TOKEN"), help="bearer token (env BITPLAN_TOKEN)")


def client_from(args: argparse.Namespace) -> BitplanClient:
    return BitplanClient(args.url, token=args.token)


def progress_line(state: dict[str, Any], *, label: str = "", width: int = 30) -> str:
    frac = float(state["progress"]["fraction"])
    filled = int(round(frac * width))
    msg = state.get("error") or state["progress"]["message"]
    return f"{label}[{'#' * filled}{'.' * (width - filled)}] {frac * 100:5.1f}%  {state['status']:<9} {msg[:50]}"


def _spec(raw: str | None) -> tuple[str | None, dict | None]:
    if raw is None:
        return None, None
    text = Path(raw).read_text() if not raw.lstrip().startswith("{") and Path(raw).is_file() else raw
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--spec: not JSON ({exc})") from exc
    if not isinstance(data, dict) or "architecture" not in data:
        raise ValueError('--spec: expected {"architecture": ..., "hyperparams": {...}}')
    return data["architecture"], data.get("hyperparams", {})


def _candidates(values: list[str] | None) -> list[str] | None:
    if not values:
        return None
    return [c for v in values for c in v.split(",") if c]


def _errors(fn):
    """One line on stderr, never a traceback: exit 2 when the server is unreachable, refuses the
    request (4xx, its text names the field) or the input is bad; exit 1 on a server error (5xx)."""

    @functools.wraps(fn)
    def wrapped(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except ApiError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2 if exc.status < 500 else 1
        except httpx.TransportError as exc:
            print(f"error: cannot reach the server at {args.url} ({exc.__class__.__name__}: {exc});"
                  " is `bitplan serve` running? (--url / BITPLAN_URL)", file=sys.stderr)
            return 2
        except (ValueError, OSError, TimeoutError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2

    return wrapped


def _json_object(raw: str, flag: str, example: str) -> dict[str, Any]:
    """A flag's JSON object, given as JSON text or as a JSON file's path."""
    text = Path(raw).read_text() if not raw.lstrip().startswith("{") and Path(raw).is_file() else raw
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{flag}: not JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{flag}: expected a JSON object, e.g. '{example}'")
    return data


def _options(raw: str | None) -> dict[str, Any]:
    """--options: JSON text or a JSON file (e.g. {"latency_table": {...}, "max_probes": 64})."""
    return {} if raw is None else _json_object(raw, "--options", '{"max_probes": 64}')


def _latency_table_file(path: str) -> dict[str, Any]:
    """--latency-table FILE: the JSON object {layer: {candidate: ms}}; the server checks the entries."""
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise ValueError(f"--latency-table: cannot read {path} ({exc.strerror})") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"--latency-table: not JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ValueError('--latency-table: expected a JSON object {layer: {candidate: ms}}')
    return data


def budget_from_args(args: argparse.Namespace) -> dict[str, float]:
    """--bits, --bytes and repeated --budget COST=LIMIT, combined into one API budget (all must hold)."""
    budget: dict[str, float] = {}
    for text in getattr(args, "budget", None) or []:
        word, limit = parse_budget_text(text)
        if word in budget:
            raise ValueError(f"--budget: {word} given twice")
        budget[word] = limit
    for word, value in ((AVG_BITS, args.bits), ("bytes", args.bytes)):
        if value is not None:
            if word in budget:
                raise ValueError(f"{word} given twice (--budget and --{'bits' if word == AVG_BITS else 'bytes'})")
            budget[word] = value
    if not budget:
        raise ValueError("give a budget: --bits B, --bytes N and/or --budget COST=LIMIT")
    return budget


def submit_options(args: argparse.Namespace) -> dict[str, Any]:
    """`submit`'s analysis options: --options, with --latency-table and --shards folded in."""
    options = _options(args.options)
    if getattr(args, "latency_table", None):
        options["latency_table"] = _latency_table_file(args.latency_table)
    if getattr(args, "shards", None) is not None:
        options["shards"] = args.shards
    return options


@_errors
def submit(args: argparse.Namespace) -> int:
    architecture, hyperparams = _spec(args.spec)
    with client_from(args) as client:
        options = submit_options(args)
        model = client.upload_model(Path(args.model), architecture=architecture, hyperparams=hyperparams,
                                    name=args.name)
        dataset = client.upload_dataset(Path(args.dataset)) if args.dataset else None
        analysis = client.start_analysis(model["id"], dataset_id=dataset["id"] if dataset else None,
                                         candidates=_candidates(args.candidates), metric=args.metric,
                                         seed=args.seed, options=options)
        print(analysis["id"])
        if not args.wait:
            return 0
        tty = sys.stderr.isatty()
        last = [""]

        def show(state: dict[str, Any]) -> None:
            line = progress_line(state)
            if line != last[0]:
                last[0] = line
                sys.stderr.write(("\r" + line) if tty else line + "\n")
                sys.stderr.flush()

        final = client.wait(analysis["id"], on_progress=show, poll=args.poll)
        if tty:
            sys.stderr.write("\n")
        print(f"{final['status']}" + (f": {final['error']}" if final.get("error") else ""))
        return 0 if final["status"] == "succeeded" else 1


@_errors
def status(args: argparse.Namespace) -> int:
    with client_from(args) as client:
        state = client.analysis(args.id)
    print(f"{state['id']}  {progress_line(state)}")
    if state.get("error"):
        print(f"error: {state['error']}")
    for line in format_warnings(state.get("warnings")):
        print(line)
    return 1 if state["status"] in ("failed", "cancelled") else 0


def confidence_text(plan: dict[str, Any]) -> str:
    """"97%", "100% (exact)", or "?" when the server could not compute it (or predates it)."""
    conf = plan.get("confidence")
    if not conf:
        return "none (a given plan: nothing was solved)" if (plan.get("solver") or {}).get("status") == "given" else "?"
    return f"{conf['confidence']:.0%}" + (" (exact)" if conf.get("exact") else "")


def solver_text(solver: dict[str, Any]) -> str:
    """"optimal, tolerance 1e-12", "feasible, gap 0.3%", "time_limit, gap 2%": how sure the solve is."""
    status = solver.get("status", "?")
    if status == "optimal" and solver.get("tolerance") is not None:
        return f"{status}, tolerance {solver['tolerance']:.2g}"
    if status != "optimal" and solver.get("gap") is not None:
        return f"{status}, gap {solver['gap']:.2%}"
    return status


def warning_summary(warnings: list[dict[str, Any]] | None) -> str:
    """Codes with counts, e.g. "negative_trace×9, stopped_early"; "" when there are none."""
    counts: dict[str, int] = {}
    for w in warnings or []:
        counts[w["code"]] = counts.get(w["code"], 0) + 1
    return ", ".join(code + (f"×{n}" if n > 1 else "") for code, n in counts.items())


def format_warnings(warnings: list[dict[str, Any]] | None) -> list[str]:
    return [f"warning [{w['code']}] {w['message']}" for w in warnings or []]


def format_plan(plan: dict[str, Any]) -> str:
    by_layer: dict[str, list[str]] = {}
    for w in plan.get("warnings") or []:
        if w.get("layer"):
            by_layer.setdefault(w["layer"], []).append(w["code"])
    # a block-grouped plan's rows are its units (PlanOut.layers holds one entry per unit)
    grouped = any(u["layers"] != [u["unit"]] for u in plan.get("units") or [])
    rows = [("unit" if grouped else "layer", "candidate", "bytes", "damage", "warnings")]
    rows += [(l["layer"], l["candidate"], f"{l['bytes']:.0f}", f"{l['damage']:.4g}", ", ".join(by_layer.get(l["layer"], [])))
             for l in plan["layers"]]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.append(f"total {plan['total_bytes']:.0f} bytes, {plan['average_bits']:.3f} bits/weight, predicted damage "
                 f"{plan['predicted_damage']:.4g} ({solver_text(plan['solver'])}), confidence {confidence_text(plan)};"
                 f" {plan['links']['self']}")
    conf = plan.get("confidence") or {}
    if conf.get("uncertain_units") and conf["confidence"] < 1:
        units = ", ".join(f"{u['unit']} ({u['share']:.0%})" for u in conf["uncertain_units"])
        lines.append(f"units whose uncertainty could flip it: {units}")
    lines += format_warnings(plan.get("warnings"))
    return "\n".join(lines)


@_errors
def plan(args: argparse.Namespace) -> int:
    if args.assignment is not None:
        if args.budget or args.bits is not None or args.bytes is not None:
            raise ValueError("--assignment: give it or a budget (--bits, --bytes, --budget), not both")
        assignment = _json_object(args.assignment, "--assignment", '{"fc1": "int4", "fc2": "int8"}')
        with client_from(args) as client:
            result = client.given_plan(args.id, assignment)
    else:
        budget = budget_from_args(args)
        with client_from(args) as client:
            result = client.plan(args.id, budget=budget, backend=args.backend)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(format_plan(result))
    return 0


@_errors
def frontier(args: argparse.Namespace) -> int:
    with client_from(args) as client:
        result = client.frontier(args.id, cost=args.cost, points=args.points)
    if args.json:
        print(json.dumps(result))
        return 0
    cost = args.cost
    print(f"{cost:>14} {'avg bits':>9} {'damage':>12}  status")
    for pt in result["points"]:
        bits = f"{pt['average_bits']:.3f}" if pt.get("average_bits") is not None else "-"
        print(f"{pt['costs'][cost]:>14.6g} {bits:>9} {pt['damage']:>12.6g}  {pt.get('status', '')}")
    print(f"{len(result['points'])} points over {cost} of analysis {result['analysis_id']}")
    return 0


@_errors
def export(args: argparse.Namespace) -> int:
    from service.core.exports import job_formats

    if args.format in job_formats():
        return _export_by_job(args)
    with client_from(args) as client:
        content, filename, warnings = client.export(args.id, export_format=args.format)
    target = Path(args.output or filename)
    if str(target) == "-":
        sys.stdout.buffer.write(content)
    else:
        tmp = target.with_name(target.name + ".part")
        tmp.write_bytes(content)
        tmp.replace(target)  # nothing half-written under the asked name
        print(f"wrote {target} ({len(content)} bytes, {args.format})", file=sys.stderr)
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    return 0


def _export_by_job(args: argparse.Namespace) -> int:
    """Formats that open the model are built by an export job: follow it, then download its file."""
    if args.output in (None, "-"):
        raise ValueError(f"--format {args.format} is built as a file by an export job: give it with -o PATH")
    target = Path(args.output)
    shown: list[str] = []

    def show(state: dict[str, Any]) -> None:
        line = progress_line(state, label="export ")
        if not shown or shown[-1] != line:
            shown.append(line)
            print(line, file=sys.stderr)

    with client_from(args) as client:
        final = client.export_job(args.id, target, export_format=args.format, on_progress=show)
    print(f"wrote {target} ({final['size_bytes']} bytes, {args.format}, sha256 {final['sha256']})", file=sys.stderr)
    for w in final.get("warnings") or []:
        print(f"warning: {w}", file=sys.stderr)
    return 0


def token(args: argparse.Namespace) -> int:
    from service.storage import tokens
    from service.config import get_settings
    from service.storage.db import migrate
    from service.storage.db.session import session_scope
    from service.errors import NotFound

    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    url = settings.resolved_database_url
    migrate.upgrade(url)
    with session_scope(url) as session:
        if args.token_command == "create":
            try:
                issued = tokens.create_token(session, name=args.name, scopes=args.scopes)
            except ValueError as exc:
                print(f"error: --scopes: {exc}", file=sys.stderr)
                return 2
            rec = issued.record
            print(f"created token {rec.id} ({rec.name}, scopes {','.join(rec.scopes)}); its secret, shown once:",
                  file=sys.stderr)
            print(issued.secret)
        elif args.token_command == "list":
            for rec in tokens.list_tokens(session, include_revoked=args.all):
                state = f"revoked {rec.revoked_at:%Y-%m-%d %H:%M}" if rec.revoked_at else "active"
                print(f"{rec.id}  bp_{rec.prefix}_…  {rec.name:<20} {','.join(rec.scopes):<18} {state}")
        else:
            try:
                rec = tokens.revoke_token(session, token_id=args.id)
            except NotFound as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 1
            print(f"revoked {rec.id} ({rec.name})")
    return 0
